"""``nin-multi bench``: training and inference throughput of each backend against the chapter's code.

Its options are still defined beside the measurements (``nin_multi.bench.register``), which take the
shared option helpers from this package; they move here when bench is split by job.
"""
from __future__ import annotations


def register(sub) -> None:
    from nin_multi.bench import register as bench_register

    bench_register(sub)
