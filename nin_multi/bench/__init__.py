"""``nin-multi bench``: training and inference throughput of each backend, against what a user of each
framework would run without this project, and against this machine's own limit.

For every backend three kinds of code path run on the same random batch, in the same run:

* ``chapter``: what a reader of the book runs (Dive into Deep Learning 2, section 8.3), fp32;
* ``fast``: the framework's standard one-switch fast path on that same code, fp32 (none where the
  backend's own Trainer is that path);
* ``default``: the backend's ``Trainer`` as ``nin-multi train`` uses it, at each ``--precision``.

The chapter and fast paths of each framework, its GEMM probe and how to wait for its pending work live
beside its rendering, in ``backends/<module>_bench.py``; this package names no framework. Its options
and their checks are ``nin_multi.cli.bench``'s.

    runner.py    one worker process per backend, the JSON lines they send, the run's report
    protocol.py  what a worker and the runner share: the tagged lines, a row, the planned paths
    worker.py    the worker: GEMM, the paths' interleaved steps, memory over chunks of steps
    epochs.py    end to end: ``train_epoch`` with a fresh Trainer, its time split into parts
    pipeline.py  the data pipeline's speed and its share of a training step
    load.py      other processes' CPU use meanwhile; a worker's RSS
    figures.py   speed-ups, per-round spreads, GFLOP/s and their fraction of the GEMM rate
    targets.py   the targets and their verdicts
    report.py    the table
    scaling.py   ``--workers N`` alone: ``train --workers 1`` and ``--workers N`` run as commands, the speed-up
"""
from .report import format_report
from .runner import run_bench
from .targets import evaluate_targets

__all__ = ["evaluate_targets", "format_report", "run_bench"]
