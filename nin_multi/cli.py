"""``python -m nin_multi`` / ``nin-multi``: train, summary, evaluate, convert.

User errors (``NinMultiError``) become one line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .config import INITS, PRECISIONS, TrainConfig
from .errors import NinMultiError
from .spec import VARIANTS

BACKEND_HELP = "torch, tensorflow or mxnet (aliases: pytorch, tf, keras, gluon)"


def _add_model_args(p: argparse.ArgumentParser, resize_default: int = 224) -> None:
    p.add_argument("--backend", "-b", default="torch", help=BACKEND_HELP + " (default: torch)")
    p.add_argument("--resize", type=int, default=resize_default,
                   help=f"input image size (default: {resize_default}, the chapter's)")
    p.add_argument("--variant", default="chapter", choices=list(VARIANTS),
                   help="network variant (default: chapter)")
    p.add_argument("--in-channels", type=int, default=1, help="input channels (default: 1)")
    p.add_argument("--num-classes", type=int, default=10, help="number of classes (default: 10)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="directory with the four Fashion-MNIST IDX files (default: $NIN_MULTI_DATA_DIR, "
                        "else download to the cache)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128, the chapter's)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 is the chapter's; bf16 is ~3x faster on CPUs with AMX; fp16 for GPUs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nin-multi", description=(
        "Network in Network (Dive into Deep Learning, 8.3) in PyTorch, TensorFlow and MXNet from one spec."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train on Fashion-MNIST with the chapter's recipe")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 10, the chapter's)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default: 0.1, the chapter's)")
    p.add_argument("--init", default="xavier", choices=INITS,
                   help="weight init (default: xavier, the chapter's; kaiming leaves the 2.30 plateau sooner)")
    p.add_argument("--dropout", type=float, default=None, help="dropout rate (default: 0.5, the chapter's)")
    p.add_argument("--seed", type=int, default=0, help="seed for init, data order and dropout (default: 0)")
    p.add_argument("--subset", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--out", default=None, help="run directory (default: runs/<time>-<backend>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue a stopped run from its last checkpoint, with its saved settings")

    p.set_defaults(func=cmd_train)

    p = sub.add_parser("summary", help="print the layer-by-layer shape walk of the framework's model")
    _add_model_args(p)
    p.set_defaults(func=cmd_summary)

    for name in COMMAND_MODULES:  # each registers its own subcommand(s) and sets ``func``
        importlib.import_module(f"nin_multi.{name}").register(sub)
    return parser


def cmd_train(a) -> int:
    from .train import resume, train

    if a.resume:
        resume(a.resume, epochs=a.epochs, progress_bar=a.progress)
        return 0
    cfg = TrainConfig(
        backend=a.backend, epochs=a.epochs if a.epochs is not None else 10, batch_size=a.batch_size,
        lr=a.lr, resize=a.resize, init=a.init, seed=a.seed, data_dir=a.data_dir, out=a.out,
        subset=a.subset, test_subset=a.test_subset, precision=a.precision, threads=a.threads,
        in_channels=a.in_channels, num_classes=a.num_classes, variant=a.variant, dropout=a.dropout,
        progress=a.progress)
    train(cfg, overwrite=a.overwrite)
    return 0


def cmd_summary(a) -> int:
    from backends import get_backend
    from .spec import make_spec

    backend = get_backend(a.backend)
    spec = make_spec(a.variant, a.in_channels, a.num_classes, image_size=a.resize)
    infos = spec.walk(a.resize)
    backend.configure(None, 0)
    model = backend.build_model(spec)
    shapes = backend.layer_shapes(model, spec, a.resize)
    print(f"NiN ({spec.variant}) rendered by {backend.NAME}, input {a.resize}x{a.resize}, "
          f"layout {backend.LAYOUT}")
    print(f"{'layer':<10} {'type':<14} {'output shape':<22} {'params':>10} {'multiply-adds':>15}")
    for (name, shape), info in zip(shapes, infos):
        print(f"{name:<10} {info.kind:<14} {str(shape):<22} {info.params:>10,} {info.macs:>15,}")
    n = backend.count_params(model)
    print(f"total parameters: {n:,} (spec: {spec.num_params:,}); "
          f"multiply-adds per image: {sum(i.macs for i in infos):,}")
    return 0


#: Modules of ``nin_multi`` that add subcommands: each has ``register(subparsers)``. They import their
#: frameworks lazily, so ``--help`` stays fast.
COMMAND_MODULES: list[str] = []


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NinMultiError as e:
        print(f"nin-multi: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("nin-multi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
