"""``nin-multi compare``: several variants trained on the same data and seed; a table and a figure."""
from __future__ import annotations

import argparse
from dataclasses import asdict

from .common import (add_data_args, add_network_args, add_output_args, add_recipe_args, add_recipe_preset_arg,
                     config_from_args)

DEFAULT_VARIANTS = "chapter,one-1x1,fc-head"


def register(sub) -> None:
    from nin_multi.spec import VARIANTS

    p = sub.add_parser("compare", help="train several variants on the same data and seed; table and figure")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated variants (default: {DEFAULT_VARIANTS}; any of {', '.join(VARIANTS)})")
    add_network_args(p, variant=False)
    add_recipe_args(p)
    add_data_args(p)
    add_recipe_preset_arg(p)
    add_output_args(p, "runs/<time>-compare; it gets compare.csv, compare.png and a run directory per variant")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from pathlib import Path

    from nin_multi.exercises import COMPARE_CSV, COMPARE_PNG, compare, format_compare, parse_variants
    from nin_multi.run import default_run_dir

    variants = parse_variants(a.variants)
    cfg_kwargs = {k: v for k, v in asdict(config_from_args(a)).items() if k not in ("variant", "out")}
    out = Path(a.out or default_run_dir("compare"))
    rows = compare(variants, cfg_kwargs, out, overwrite=a.overwrite)
    print(format_compare(rows))
    print(f"wrote {out / COMPARE_CSV} and {out / COMPARE_PNG}")
    return 0
