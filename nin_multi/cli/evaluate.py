"""``nin-multi evaluate``: test loss and accuracy of canonical weights, in any backend."""
from __future__ import annotations

import argparse

from .common import BACKEND_HELP, DEFAULTS, add_data_args, config_from_args, load_weights_into, size_for_weights


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="test loss and accuracy of canonical weights (from any backend)")
    p.add_argument("--backend", "-b", default=DEFAULTS.backend, help=f"{BACKEND_HELP} (default: {DEFAULTS.backend})")
    p.add_argument("--weights", required=True,
                   help="a weights.safetensors (or .npz) written by train (any backend) or convert")
    p.add_argument("--resize", type=int, default=None,
                   help=f"input image size (default: the size the weights were trained at, as the file records "
                        f"it; for a file that does not, its run's --resize, else {DEFAULTS.resize}, the chapter's)")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    add_data_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from nin_multi.data import load_fashion_mnist
    from nin_multi.train import check_fits_fashion_mnist, evaluate

    cfg = config_from_args(a, resize=size_for_weights(a.weights, a.resize, "evaluating"))

    def check(spec):  # before any framework allocates: the size, and the memory it needs at this batch
        check_fits_fashion_mnist(spec, cfg.resize, cfg.batch_size, cfg.precision)

    backend, spec, model = load_weights_into(a.backend, a.weights, cfg.precision, check=check)
    ds = load_fashion_mnist(cfg.data_dir).subset(None, cfg.test_subset)
    trainer = backend.Trainer(model, cfg.lr, cfg.precision)
    loss, acc = evaluate(trainer, ds.test_images, ds.test_labels, cfg, backend.LAYOUT, "evaluate")
    print(f"test loss {loss:.4f}, test acc {acc:.4f} on {len(ds.test_images)} images "
          f"({backend.NAME}, {backend.device()}, {cfg.resize}x{cfg.resize}, {cfg.precision})")
    return 0
