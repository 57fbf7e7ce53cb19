"""Options several commands share, and how parsed options become a ``TrainConfig``.

Every default shown or used here is read from ``TrainConfig`` (the chapter's recipe as the dataclass's
defaults) or from ``recipes.py``; no number of the chapter is written in the command layer.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Optional

from nin_multi.backends import ALIASES, ORDER, or_list, trainable
from nin_multi.config import AUTO, INITS, PRECISIONS, TrainConfig
from nin_multi.optim import SCHEDULES
from nin_multi.recipes import DEFAULT, RECIPE_KEYS, RECIPES, get_recipe
from nin_multi.recipes import changes as recipe_changes
from nin_multi.spec import VARIANTS

#: The chapter's settings, as ``TrainConfig`` holds them.
DEFAULTS = TrainConfig()
BACKEND_HELP = f"{or_list(ORDER)} (aliases: {', '.join(ALIASES)})"


def add_network_args(p: argparse.ArgumentParser, backend: bool = True, variant: bool = True) -> None:
    """The network: which framework renders it, the input size, the variant and its ends."""
    if backend:
        p.add_argument("--backend", "-b", default=DEFAULTS.backend,
                       help=f"{BACKEND_HELP} (default: {DEFAULTS.backend})")
    p.add_argument("--resize", type=int, default=DEFAULTS.resize,
                   help=f"input image size (default: {DEFAULTS.resize}, the chapter's)")
    if variant:
        p.add_argument("--variant", default=DEFAULTS.variant, choices=list(VARIANTS),
                       help=f"network variant (default: {DEFAULTS.variant})")
    p.add_argument("--in-channels", type=int, default=DEFAULTS.in_channels,
                   help=f"input channels (default: {DEFAULTS.in_channels})")
    p.add_argument("--num-classes", type=int, default=DEFAULTS.num_classes,
                   help=f"number of classes (default: {DEFAULTS.num_classes})")


def add_backends_arg(p: argparse.ArgumentParser) -> None:
    """Several backends at once (``bench``, ``reproduce``), read by ``backends.select``."""
    p.add_argument("--backends", default=None,
                   help=f"comma-separated: {', '.join(trainable())} (default: every installed one)")


def add_recipe_args(p: argparse.ArgumentParser, dropout: bool = True) -> None:
    """The training recipe, the chapter's by default; ``train``, ``compare`` and ``reproduce`` share it."""
    p.add_argument("--epochs", type=int, default=None, help=f"epochs (default: {DEFAULTS.epochs}, the chapter's)")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr,
                   help=f"SGD learning rate (default: {DEFAULTS.lr:g}, the chapter's)")
    p.add_argument("--init", default=DEFAULTS.init, choices=INITS,
                   help=f"weight init (default: {DEFAULTS.init}, the chapter's; kaiming leaves the 2.30 plateau "
                        f"sooner; kaiming-identity, the fast recipe's, starts the class scores' block as the identity)")
    if dropout:
        p.add_argument("--dropout", type=float, default=None, help="dropout rate (default: 0.5, the chapter's)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed,
                   help=f"seed for init, data order and dropout (default: {DEFAULTS.seed})")
    p.add_argument("--subset", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    add_optimizer_args(p)


def add_optimizer_args(p: argparse.ArgumentParser) -> None:
    """The optimizer beyond plain SGD (``nin_multi.optim``: one meaning in every framework); a recipe
    (``fast``) fills them, so their parser default is None."""
    p.add_argument("--momentum", type=float, help="SGD momentum, PyTorch's meaning in every framework (default: 0)")
    p.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay added to the gradient (default: 0)")
    p.add_argument("--label-smoothing", type=float, help="cross-entropy against smoothed labels (default: 0)")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="learning-rate schedule with --lr as its peak; linear is one-cycle (default: constant)")
    p.add_argument("--warmup-epochs", type=float,
                   help="epochs of linear warm-up before the schedule decays (default: 0)")


def add_data_args(p: argparse.ArgumentParser, auto: bool = False) -> None:
    """Where the data is and how a step runs on it: shared by every command that touches Fashion-MNIST.
    ``auto``: the command measures ``--precision auto`` (train); the others compare or evaluate in one
    precision, and a recipe's ``auto`` is fp32 there (``config_from_args``)."""
    p.add_argument("--data-dir", default=None,
                   help="directory with the four Fashion-MNIST IDX files (default: $NIN_MULTI_DATA_DIR, "
                        "else download to the cache)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                   help=f"batch size (default: {DEFAULTS.batch_size}, the chapter's)")
    p.add_argument("--precision", default=DEFAULTS.precision, choices=PRECISIONS + ((AUTO,) if auto else ()),
                   help="fp32 is the chapter's; bf16 is ~2x faster on CPUs with AMX and 5-10x slower on CPUs "
                        "without AVX-512 BF16 or AMX; fp16 for GPUs; fp64 (float64 throughout) makes the "
                        "frameworks' trajectories coincide" + ("; auto (the fast recipe's) times a few steps and "
                                                               "picks the fastest that runs here" if auto else ""))
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def add_recipe_preset_arg(p: argparse.ArgumentParser) -> None:
    """``--recipe NAME``. The options it covers get None as their parser default, so that a value the
    user typed can be told from one the recipe fills in (``apply_recipe``)."""
    lines = "; ".join(f"{r.name} ({r.source}: " + ", ".join(
        f"{k.replace('_', ' ')} {r.settings[k]}" for k in ("lr", "epochs", "batch_size", "resize", "precision")
        if k in r.settings) + ")" for r in RECIPES.values())
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help=f"a source's settings for every option not typed (default: {DEFAULT}, the chapter's): "
                        + lines.replace("%", "%%"))
    p.set_defaults(**{key: None for key in RECIPE_KEYS})


def apply_recipe(a: argparse.Namespace, fallback: dict | None = None) -> argparse.Namespace:
    """Fill every recipe option the user did not type: from ``--recipe``, else from ``fallback`` (a
    command's own defaults, e.g. bench's batch 64), else from the default recipe."""
    if not hasattr(a, "recipe"):
        return a
    typed = {key: getattr(a, key) for key in RECIPE_KEYS if getattr(a, key, None) is not None}
    source = get_recipe(a.recipe).settings if a.recipe or fallback is None else fallback
    for key in RECIPE_KEYS:
        if getattr(a, key, None) is None and key in source:
            setattr(a, key, source[key])
    a.recipe = get_recipe(a.recipe).name if a.recipe or fallback is None else None
    a.recipe_changes = (recipe_changes(get_recipe(a.recipe), typed) or None) if a.recipe else None
    return a


def add_output_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=None, help=f"output directory (default: {default})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def config_from_args(a: argparse.Namespace, keep_auto: bool = False, **overrides) -> TrainConfig:
    """A ``TrainConfig`` from the parsed options a command has; the rest keep the chapter's defaults.
    A recipe's ``--precision auto`` stays for ``train`` to measure (``keep_auto``); a command that compares
    frameworks or evaluates runs every framework in one precision, fp32."""
    apply_recipe(a)
    kwargs = {f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(a, f.name)}
    for key in RECIPE_KEYS:  # neither typed nor set by the recipe: TrainConfig's (the chapter's) default
        if kwargs.get(key) is None:
            kwargs.pop(key, None)
    if kwargs.get("precision") == AUTO and not keep_auto:
        kwargs["precision"] = "fp32"
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def size_for_weights(path: str, resize: Optional[int], doing: str, log=print) -> int:
    """The size to run a weights file's network at: ``--resize`` if typed (``resize``), else the size it
    was trained at. Weights scored at another size than their training's score like an untrained network,
    so a size that differs from the training's, or a file that does not say, is said in one line."""
    from nin_multi.weights import trained_at

    trained = trained_at(path)
    note = size_note(Path(path).name, trained, resize, doing)
    if note:
        log(note)
    return trained.image_size if resize is None else resize


def size_note(name: str, trained, resize: Optional[int], doing: str) -> Optional[str]:
    """The line ``size_for_weights`` says, if any: ``trained`` is ``weights.trained_at``'s answer,
    ``doing`` the command's verb ("evaluating")."""
    from nin_multi.weights import RUN_SETTINGS

    t = trained.image_size
    if trained.recorded or (trained.source == RUN_SETTINGS and resize is not None):
        if resize is None or resize == t:
            return None
        by = "" if trained.recorded else " (the --resize of the run that wrote it)"
        return f"note: {name} was trained at {t}x{t}{by}; {doing} at {resize}x{resize} as --resize asks"
    unknown = f"note: {name} does not record the size it was trained at"
    if resize is not None:
        return f"{unknown}; {doing} at {resize}x{resize} as --resize asks"
    if trained.source == RUN_SETTINGS:
        return f"{unknown}; {doing} at {t}x{t}, the --resize of the run that wrote it"
    return f"{unknown}; {doing} at {t}x{t}, the chapter's default (pass --resize to choose another)"


def load_weights_into(backend_name: str, path: str, precision=None, check=None):
    """A model of the weights file's network holding its weights: in the file's own dtype, or in
    ``precision``'s (float32 weights widen into fp64; float64 ones are not rounded silently). ``check``
    sees the file's spec before any framework is imported."""
    from nin_multi.backends import get_backend
    from nin_multi.config import param_dtype
    from nin_multi.weights import check_dtype_fits, load_weights, weights_dtype

    backend = get_backend(backend_name)
    spec, weights = load_weights(path)
    if check is not None:
        check(spec)
    dtype = param_dtype(precision) if precision else weights_dtype(weights)
    check_dtype_fits(weights, dtype, path)
    backend.configure(None, 0)
    model = backend.build_model(spec, dtype=dtype)
    backend.set_weights(model, spec, weights)
    return backend, spec, model
