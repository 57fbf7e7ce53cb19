"""``nin-multi sweep``: the command line of the time-to-accuracy sweep (the measuring is ``nin_multi.sweep``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nin_multi.config import INITS
from nin_multi.errors import ConfigError, WriteError
from nin_multi.fileio import cause, write_text


def _list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    return parse


def _yes_no(text: str) -> bool:
    if text.strip().lower() in ("yes", "true", "1"):
        return True
    if text.strip().lower() in ("no", "false", "0"):
        return False
    raise ValueError(text)


_yes_no.__name__ = "yes/no"


def register(sub) -> None:
    p = sub.add_parser("sweep", help="time to a validation accuracy for settings around a recipe (tunes on a "
                                     "validation split of the training images, never the test images)")
    p.add_argument("--backend", "-b", default="torch", help="the framework that trains (default: torch)")
    p.add_argument("--recipe", default="fast", help="the settings varied around (default: fast)")
    p.add_argument("--target", type=float, default=None,
                   help="validation accuracy to time (default: the recipe's target, 0.80 for fast)")
    p.add_argument("--init", type=_list(str), default=[], metavar="I,I",
                   help=f"weight inits to try ({', '.join(INITS)})")
    p.add_argument("--resize", type=_list(int), default=[], metavar="N,N", help="image sizes to try")
    p.add_argument("--batch-size", type=_list(int), default=[], metavar="N,N", help="batch sizes to try")
    p.add_argument("--lr", type=_list(float), default=[], metavar="X,X", help="peak learning rates to try")
    p.add_argument("--epochs", type=_list(int), default=[], metavar="N,N", help="epoch counts (the schedule's length)")
    p.add_argument("--precision", type=_list(str), default=[], metavar="P,P",
                   help="fp32, bf16, auto (the fast recipe's: measured once per image size and batch)")
    p.add_argument("--nesterov", type=_list(_yes_no), default=[], metavar="yes,no",
                   help="Nesterov momentum or plain momentum")
    p.add_argument("--seed", type=_list(int), default=[], metavar="N,N",
                   help="seeds to try (initial weights, example order, dropout)")
    p.add_argument("--grid", action="store_true", help="every combination (default: one factor at a time)")
    p.add_argument("--data-dir", default=None,
                   help="the Fashion-MNIST files (default: $NIN_MULTI_DATA_DIR or the cache)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    p.add_argument("--out", default=None, help="also write the rows as JSON lines and the table as Markdown here "
                                               "(a directory)")
    p.set_defaults(func=cmd_sweep)


def decide_precisions(backend, recipe, settings: list[dict], threads) -> list[dict]:
    """Every setting's precision checked against this machine, and ``auto`` measured (once per image size
    and batch; the cache answers the rest) before anything trains, so the table shows what really ran."""
    from nin_multi.config import AUTO, TrainConfig
    from nin_multi.precision import check_runs_here
    from nin_multi.train import choose_precision, spec_for

    decided, out = {}, []
    for s in settings:
        check_runs_here(backend.NAME, s["precision"], backend.device())
        if s["precision"] == AUTO:
            cfg = TrainConfig(**{**recipe.settings, **s}, backend=backend.NAME, threads=threads, progress=False)
            shape = (cfg.resize, cfg.batch_size)
            if shape not in decided:
                resolved, choice = choose_precision(backend, spec_for(cfg), cfg)
                print(f"{cfg.resize}x{cfg.resize}, batch {cfg.batch_size}: {choice.line()}")
                decided[shape] = resolved.precision
            s = {**s, "precision": decided[shape]}
        out.append(s)
    return out


def cmd_sweep(a) -> int:
    from nin_multi.backends import can_train, companion, get_backend, or_list, trainable

    from nin_multi import sweep
    from nin_multi.config import TrainConfig
    from nin_multi.data import load_fashion_mnist
    from nin_multi.recipes import get_recipe
    from nin_multi.train import spec_for

    recipe = get_recipe(a.recipe)
    target = a.target if a.target is not None else recipe.target
    if target is None or not 0 < target <= 1:
        raise ConfigError(f"--target must be an accuracy in (0, 1]; the {recipe.name} recipe states none")
    if not can_train(a.backend):
        raise ConfigError(f"{a.backend} is inference-only: sweep with {or_list(trainable())}")
    base = TrainConfig(**recipe.settings, backend=a.backend, threads=a.threads, recipe=recipe.name, progress=False)
    values = {k: v for k, v in (("init", a.init), ("resize", a.resize), ("batch_size", a.batch_size), ("lr", a.lr),
                                ("epochs", a.epochs), ("precision", a.precision),
                                ("nesterov", a.nesterov), ("seed", a.seed)) if v}
    settings = sweep.settings_around({k: getattr(base, k) for k in sweep.FACTORS}, values, a.grid)
    for s in settings:  # every setting checked (the image size against the network too) before one trains
        spec_for(TrainConfig(**{**recipe.settings, **s}))
    backend = get_backend(a.backend)
    settings = decide_precisions(backend, recipe, settings, a.threads)
    precisions = sorted({s["precision"] for s in settings})
    if len(precisions) > 1 and companion(a.backend, "bench").LOWER_PRECISIONS_ALONE:
        raise ConfigError(f"{backend.NAME} computes every run after a low-precision one in low precision (its "
                          f"mixed precision stays on for the whole process), so one sweep cannot compare "
                          f"{' and '.join(precisions)}: sweep each precision in a command of its own "
                          f"(--grid --precision {precisions[0]}, then {precisions[-1]})")
    ds = sweep.validation_split(load_fashion_mnist(a.data_dir))
    print(f"{len(settings)} settings on {backend.NAME}, {len(ds.train_images)} training and {len(ds.test_images)} "
          f"validation images (the test images are not used)")
    out = Path(a.out) if a.out else None
    if out:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"could not create {out}: {cause(e)}", out, e.errno) from None
    rows = []

    def keep(row: dict) -> None:  # every row on disk as soon as it is measured
        rows.append(row)
        if out:
            write_text(out / "sweep.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    sweep.run_sweep(backend, base, settings, ds, target, on_row=keep)
    text = sweep.table(rows, target)
    print(text)
    if out:
        write_text(out / "sweep.md", text + "\n")
    return 0
