"""``reproduce``: the same training in several frameworks, from one set of initial weights and one
example order, laid side by side, step by step.

What differs between two ``train`` runs on different backends is (a) the initial weights (each
framework draws from its own generator), (b) the dropout masks, and (c) floating-point rounding. This
command removes (a) by drawing the spec's initialisation once in NumPy and handing it to every backend
with ``set_weights``, and hands every backend the same example order per epoch (``data.epoch_order``,
passed as ``train_epoch``'s ``order``); ``--no-dropout`` removes (b). What is left is (c): every SGD
step's loss is recorded per backend (``steps.csv``), and the relative difference of each pair against the
step (``drift.png``) shows where fp32 trajectories leave rounding level and that ``--precision fp64``
ones do not.

With dropout on, the runs are different samples of one training; ``--seeds`` repeats the comparison from
several starts and asks, with Welch's t-test (``nin_multi.stats``), whether any backend's final results
differ from another's by more than seed-to-seed noise.

Everything else is the shared driver: each backend's own ``Trainer``, ``train_epoch`` and ``evaluate``
from ``nin_multi.train``, one ``Run`` (metrics, plot) per backend in a subdirectory of one run
directory, and one overlaid plot and comparison table at its top.

By job: ``runner`` (the training, one start and several), ``comparison`` (epoch and step tables, weight
differences), ``statistics`` (across seeds), ``plots`` (``drift.png``, ``seeds.png``), ``report`` (the
printed text, its prose as templates); the subcommand's arguments are ``nin_multi.cli.reproduce``'s.
"""
from ..data import epoch_order
from ..weights import initial_weights
from .comparison import drift_rows, step_drift, step_table, weight_differences
from .report import format_report, format_seeds_report, format_step_drift
from .runner import one_start, reproduce, several_starts
from .statistics import parse_seeds, seed_statistics

__all__ = ["drift_rows", "epoch_order", "format_report", "format_seeds_report",
           "format_step_drift", "initial_weights", "one_start", "parse_seeds", "reproduce",
           "seed_statistics", "several_starts", "step_drift", "step_table", "weight_differences"]
