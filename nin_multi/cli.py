"""``python -m nin_multi`` / ``nin-multi``: train, summary, evaluate, convert.

User errors (``NinMultiError``) become one line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from . import __version__, isolation
from .config import INITS, PRECISIONS, TrainConfig
from .errors import ConfigError, NinMultiError, Terminated, WriteError
from .spec import VARIANTS

BACKEND_HELP = "torch, tensorflow, mxnet, jax or onnx (aliases: pytorch, tf, keras, gluon, flax, ort)"


def add_network_args(p: argparse.ArgumentParser, backend: bool = True, variant: bool = True) -> None:
    """The network: which framework renders it, the input size, the variant and its ends."""
    if backend:
        p.add_argument("--backend", "-b", default="torch", help=BACKEND_HELP + " (default: torch)")
    p.add_argument("--resize", type=int, default=224, help="input image size (default: 224, the chapter's)")
    if variant:
        p.add_argument("--variant", default="chapter", choices=list(VARIANTS),
                       help="network variant (default: chapter)")
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default: 1)")
    p.add_argument("--num-classes", type=int, default=10, help="number of classes (default: 10)")


def add_backends_arg(p: argparse.ArgumentParser) -> None:
    """Several backends at once (``bench``, ``reproduce``), read by ``backends.select``."""
    p.add_argument("--backends", default=None,
                   help="comma-separated: torch, tensorflow, mxnet, jax (default: every installed one)")


def add_recipe_args(p: argparse.ArgumentParser, dropout: bool = True) -> None:
    """The training recipe, the chapter's by default; ``train``, ``compare`` and ``reproduce`` share it."""
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 10, the chapter's)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default: 0.1, the chapter's)")
    p.add_argument("--init", default="xavier", choices=INITS,
                   help="weight init (default: xavier, the chapter's; kaiming leaves the 2.30 plateau sooner)")
    if dropout:
        p.add_argument("--dropout", type=float, default=None, help="dropout rate (default: 0.5, the chapter's)")
    p.add_argument("--seed", type=int, default=0, help="seed for init, data order and dropout (default: 0)")
    p.add_argument("--subset", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Where the data is and how a step runs on it: shared by every command that touches Fashion-MNIST."""
    p.add_argument("--data-dir", default=None,
                   help="directory with the four Fashion-MNIST IDX files (default: $NIN_MULTI_DATA_DIR, "
                        "else download to the cache)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128, the chapter's)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 is the chapter's; bf16 is ~3x faster on CPUs with AMX; fp16 for GPUs; fp64 "
                        "(float64 throughout) makes the frameworks' trajectories coincide")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


#: The options a recipe sets (``nin_multi/recipes.py``); a typed flag always wins over the recipe.
RECIPE_KEYS = ("variant", "in_channels", "lr", "epochs", "batch_size", "resize", "init", "precision")


def add_recipe_preset_arg(p: argparse.ArgumentParser) -> None:
    """``--recipe NAME``. The options it covers get None as their parser default, so that a value the
    user typed can be told from one the recipe fills in (``apply_recipe``)."""
    from .recipes import DEFAULT, RECIPES

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
    from .recipes import get_recipe

    if not hasattr(a, "recipe"):
        return a
    source = get_recipe(a.recipe).settings if a.recipe or fallback is None else fallback
    for key in RECIPE_KEYS:
        if getattr(a, key, None) is None and key in source:
            setattr(a, key, source[key])
    a.recipe = get_recipe(a.recipe).name if a.recipe or fallback is None else None
    return a


def add_output_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=None, help=f"output directory (default: {default})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def config_from_args(a: argparse.Namespace, **overrides) -> TrainConfig:
    """A ``TrainConfig`` from the parsed options a command has; the rest keep the chapter's defaults."""
    apply_recipe(a)
    kwargs = {f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(a, f.name)}
    if kwargs.get("epochs") is None:
        kwargs.pop("epochs", None)
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nin-multi", description=(
        "Network in Network (Dive into Deep Learning, 8.3) in PyTorch, TensorFlow and MXNet from one spec."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train on Fashion-MNIST with the chapter's recipe")
    add_network_args(p)
    add_recipe_args(p)
    add_data_args(p)
    add_recipe_preset_arg(p)
    p.add_argument("--out", default=None, help="run directory (default: runs/<time>-<backend>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue a stopped run from its newest intact checkpoint, with its saved settings "
                        "(--epochs may extend it; --backend continues it in another framework)")
    p.add_argument("--workers", type=int, default=1,
                   help="data-parallel workers on this machine, started with the framework's own launcher "
                        "(torchrun, TF_CONFIG, MXNet's parameter server); --batch-size stays the global batch "
                        "(default: 1)")
    p.add_argument("--allow-network", action="store_true",
                   help=f"let a data-parallel engine that cannot be bound to one address (TensorFlow's gRPC "
                        f"server) listen on every interface of a machine on a network; its workers accept "
                        f"work from anyone who can reach them, so only on a trusted network (also "
                        f"${isolation.ALLOW_ENV}=1)")
    p.set_defaults(func=cmd_train, backend=None)  # None: torch, or on --resume the run's own backend

    p = sub.add_parser("summary", help="print the layer-by-layer shape walk of the framework's model")
    add_network_args(p)
    add_recipe_preset_arg(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("evaluate", help="test loss and accuracy of canonical weights (from any backend)")
    p.add_argument("--backend", "-b", default="torch", help=BACKEND_HELP + " (default: torch)")
    p.add_argument("--weights", required=True,
                   help="a weights.safetensors (or .npz) written by train (any backend) or convert")
    p.add_argument("--resize", type=int, default=224, help="input image size (default: 224)")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    add_data_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("convert", help="write canonical weights in a framework's native format, or as "
                                       ".safetensors / .npz")
    p.add_argument("--backend", "-b", default=None, help=BACKEND_HELP + " (for a native format)")
    p.add_argument("--weights", required=True, help="canonical weights: .safetensors or .npz")
    p.add_argument("--out", required=True, help="destination: .pt (PyTorch state_dict), .weights.h5 (Keras), "
                                                ".params (Gluon), .msgpack (Flax), .onnx (ONNX) with --backend; "
                                                ".safetensors or .npz (portable, no framework needed)")
    p.set_defaults(func=cmd_convert)

    for name in COMMAND_MODULES:  # each registers its own subcommand(s) and sets ``func``
        importlib.import_module(f"nin_multi.{name}").register(sub)
    return parser


def cmd_train(a) -> int:
    from .train import resume, train

    if a.workers != 1:
        from nin_multi.backends import canonical_name

        from .distributed import launch
        from .run import default_run_dir
        from .train import read_run_config

        backend = canonical_name(a.backend or "torch")
        if a.resume and not a.backend:  # the run's own framework, read as resume() reads it
            backend = read_run_config(Path(a.resume))["backend"]
        given = a.resume or a.out  # every worker must be given the same run directory
        out = given or str(default_run_dir(backend))
        launch(backend, a.workers, a.argv if given else [*a.argv, "--out", out], out)
        return 0
    if a.resume:
        resume(a.resume, epochs=a.epochs, progress_bar=a.progress, backend=a.backend)
        return 0
    cfg = config_from_args(a, backend=a.backend or "torch")
    train(cfg, overwrite=a.overwrite)
    return 0


def cmd_summary(a) -> int:
    from nin_multi.backends import get_backend
    from .config import param_dtype
    from .spec import make_spec

    apply_recipe(a)
    backend = get_backend(a.backend)
    spec = make_spec(a.variant, a.in_channels, a.num_classes, image_size=a.resize)
    infos = spec.walk(a.resize)
    backend.configure(None, 0)
    model = backend.build_model(spec, dtype=param_dtype(a.precision))
    shapes = backend.layer_shapes(model, spec, a.resize)
    print(f"NiN ({spec.variant}) rendered by {backend.NAME}, input {spec.in_channels}x{a.resize}x{a.resize}, "
          f"layout {backend.LAYOUT}, {param_dtype(a.precision)}" + (f", recipe {a.recipe}" if a.recipe else ""))
    print(f"{'layer':<10} {'type':<14} {'output shape':<22} {'params':>10} {'multiply-adds':>15}")
    for (name, shape), info in zip(shapes, infos):
        print(f"{name:<10} {info.kind:<14} {str(shape):<22} {info.params:>10,} {info.macs:>15,}"
              + (f"  ({info.note})" if info.note else ""))
    n = backend.count_params(model)
    print(f"total parameters: {n:,} (spec: {spec.num_params:,}); "
          f"multiply-adds per image: {sum(i.macs for i in infos):,}")
    return 0


def _load_weights_into(backend_name: str, path: str, precision=None, check=None):
    """A model of the weights file's network holding its weights: in the file's own dtype, or in
    ``precision``'s (float32 weights widen into fp64; float64 ones are not rounded silently). ``check``
    sees the file's spec before any framework is imported."""
    from nin_multi.backends import get_backend
    from .config import param_dtype
    from .weights import check_dtype_fits, load_weights, weights_dtype

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


def cmd_evaluate(a) -> int:
    from .data import load_fashion_mnist
    from .train import check_fits_fashion_mnist, evaluate

    cfg = config_from_args(a)

    def check(spec):
        check_fits_fashion_mnist(spec, cfg.resize, cfg.batch_size, cfg.precision)

    backend, spec, model = _load_weights_into(a.backend, a.weights, cfg.precision, check=check)
    ds = load_fashion_mnist(cfg.data_dir).subset(None, cfg.test_subset)
    trainer = backend.Trainer(model, cfg.lr, cfg.precision)
    loss, acc = evaluate(trainer, ds.test_images, ds.test_labels, cfg, backend.LAYOUT, "evaluate")
    print(f"test loss {loss:.4f}, test acc {acc:.4f} on {len(ds.test_images)} images "
          f"({backend.NAME}, {backend.device()}, {cfg.resize}x{cfg.resize}, {cfg.precision})")
    return 0


NATIVE_SUFFIXES = {"torch": (".pt", ".pth"), "tensorflow": (".weights.h5",), "mxnet": (".params",),
                   "jax": (".msgpack",), "onnx": (".onnx",)}


#: The portable containers (``nin_multi.weights``): written from the file's own arrays, no framework.
PORTABLE_SUFFIXES = (".safetensors", ".npz")


def cmd_convert(a) -> int:
    from nin_multi.backends import canonical_name
    from .fileio import atomic_path

    if a.out.endswith(PORTABLE_SUFFIXES):
        return _convert_portable(a.weights, a.out)
    if a.backend is None:
        raise ConfigError(f"--out {a.out}: name a framework with --backend to write its native format, or give "
                          f"--out a {' or '.join(PORTABLE_SUFFIXES)} name for the portable formats")
    suffixes = NATIVE_SUFFIXES[canonical_name(a.backend)]
    if not a.out.endswith(suffixes):
        raise ConfigError(f"--out for {canonical_name(a.backend)} must end in {' or '.join(suffixes)}, got {a.out}")
    parent = Path(a.out).parent
    if not parent.is_dir():
        raise ConfigError(f"--out {a.out}: directory {parent} does not exist")
    backend, spec, model = _load_weights_into(a.backend, a.weights)
    with atomic_path(a.out) as tmp:  # the framework writes a temporary file; renamed once complete
        try:
            backend.save_native(model, str(tmp))
        except (OSError, NinMultiError):
            raise
        except Exception as e:  # PyTorch and MXNet report a failed write as their own RuntimeError/MXNetError
            what = str(e).strip().splitlines()[-1][:200] if str(e).strip() else ""
            raise WriteError(f"could not write {a.out}: {backend.NAME} failed to save it ({type(e).__name__}: "
                             f"{what}); the file was left as it was. Check the free space, the file-size limit "
                             f"(ulimit -f) and the permissions there") from None
    print(f"wrote {a.out} ({backend.NAME} native format, {spec.num_params:,} parameters, "
          f"{next(iter(backend.get_weights(model, spec).values())).dtype})")
    return 0


def _convert_portable(source: str, out: str) -> int:
    """The same arrays, header and metadata in the other container (a checkpoint's training state is
    left behind: the result is a weights file)."""
    from .weights import read_weights_file, save_weights, weights_dtype

    if not Path(out).parent.is_dir():
        raise ConfigError(f"--out {out}: directory {Path(out).parent} does not exist")
    spec, weights, meta, _ = read_weights_file(source)
    save_weights(out, spec, weights, meta=meta)
    print(f"wrote {out} ({Path(out).suffix.lstrip('.')}, {spec.num_params:,} parameters, {weights_dtype(weights)})")
    return 0


#: Modules of ``nin_multi`` that add subcommands: each has ``register(subparsers)``. They import their
#: frameworks lazily, so ``--help`` stays fast.
COMMAND_MODULES: list[str] = ["reproduce", "exercises", "bench"]


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (what schedulers send before preempting a job) and SIGHUP (a closed terminal) raise
    ``Terminated``, a ``KeyboardInterrupt``: a run stops as on Ctrl-C, keeping its last checkpoint, and a
    launcher stops its workers. Only in the main thread (where Python delivers signals); the previous
    handlers are restored afterwards."""
    def handler(signum, frame):
        raise Terminated(signum, signal.Signals(signum).name)

    signals = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    try:
        previous = {s: signal.signal(s, handler) for s in signals}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv=None) -> int:
    """Exit status: 0 done, 2 an error (one line on stderr), 3 training diverged, 4 a data-parallel run
    cannot start or go on, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP."""
    from . import environment

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # ``train --workers`` starts it again per worker
    try:
        environment.check()  # every variable a run reads, before anything starts
        if getattr(args, "allow_network", False):  # for this process and every worker it starts
            os.environ[isolation.ALLOW_ENV] = "1"
        with sigterm_as_interrupt():
            return args.func(args)
    except NinMultiError as e:
        print(f"nin-multi: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", 130)
        print(f"nin-multi: {getattr(e, 'how', 'interrupted')}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
