"""``nin-multi reproduce``: several frameworks trained from one start, their curves compared."""
from __future__ import annotations

import argparse

from .common import (add_backends_arg, add_data_args, add_network_args, add_output_args, add_recipe_args,
                     add_recipe_preset_arg, config_from_args)


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="train several frameworks from one start and compare their curves",
                       description="Train every named backend from one set of initial weights (drawn in "
                                   "NumPy) and one example order per epoch, then overlay their curves, "
                                   "compare their losses step by step and tabulate how far they drift apart; "
                                   "with --seeds, repeat from several starts and test whether the backends' "
                                   "final results differ by more than seed-to-seed noise.")
    add_backends_arg(p)
    add_network_args(p, backend=False)
    add_recipe_args(p, dropout=False)
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds, e.g. 0,1,2,3,4: one start per seed (in seed-N/), then each "
                        "backend's mean ± std of final test accuracy and loss and Welch's t-test between "
                        "backends (overrides --seed)")
    p.add_argument("--no-dropout", action="store_true",
                   help="dropout rate 0, so that no framework draws its own masks: the runs then differ "
                        "by floating-point rounding alone")
    p.add_argument("--in-process", action="store_true",
                   help="every framework in this process instead of a worker process each (no interpreter "
                        "of its own for any; what a framework sets for its whole process can then reach the "
                        "others)")
    add_data_args(p)
    add_recipe_preset_arg(p)
    add_output_args(p, "runs/<time>-reproduce")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from nin_multi.reproduce import reproduce

    cfg = config_from_args(a, dropout=0.0 if a.no_dropout else None)
    reproduce(cfg, a.backends, overwrite=a.overwrite, seeds=a.seeds, workers=not a.in_process)
    return 0
