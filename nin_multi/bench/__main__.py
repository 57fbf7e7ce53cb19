"""The worker's entry point: ``python -m nin_multi.bench --worker SETTINGS`` (started by ``nin-multi bench``)."""
import sys

from .worker import main

sys.exit(main(sys.argv[1:]))
