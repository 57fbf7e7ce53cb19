"""``nin-multi resources``: parameters, multiply-adds and memory of a variant, per layer (the spec alone)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import DEFAULTS, add_network_args


def register(sub) -> None:
    from nin_multi import exercises

    p = sub.add_parser("resources", help="parameters, multiply-adds and memory of a variant, per layer",
                       description=exercises.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_args(p, backend=False)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                   help=f"batch size (default: {DEFAULTS.batch_size}, the chapter's)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers to this JSON file")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from nin_multi.errors import ConfigError
    from nin_multi.exercises import format_resources, resources
    from nin_multi.fileio import write_json
    from nin_multi.spec import make_spec

    spec = make_spec(a.variant, a.in_channels, a.num_classes, image_size=a.resize)
    res = resources(spec, a.resize, a.batch_size)
    print(format_resources(res))
    if a.json:
        path = Path(a.json)
        if not path.parent.is_dir():
            raise ConfigError(f"--json {a.json}: directory {path.parent} does not exist")
        write_json(path, res)  # a failure is one WriteError line naming the file and the cause
        print(f"wrote {path}")
    return 0
