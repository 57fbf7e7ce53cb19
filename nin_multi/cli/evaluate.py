"""``nin-multi evaluate``: test loss and accuracy of canonical weights, in any backend."""
from __future__ import annotations

import argparse

from nin_multi.pictures import GALLERY_SIZE

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
    p.add_argument("--confusion", default=None, metavar="PATH",
                   help="also draw the confusion matrix (test images of each true class, by predicted class) "
                        "into PATH (.png, .svg or .pdf)")
    p.add_argument("--gallery", default=None, metavar="PATH",
                   help=f"also draw the first {GALLERY_SIZE} test images with their predicted and true classes, "
                        f"mistakes in red, into PATH (.png, .svg or .pdf)")
    add_data_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from nin_multi.data import load_fashion_mnist
    from nin_multi.pictures import check_picture_path
    from nin_multi.train import check_fits_fashion_mnist, evaluate

    pictures = {option: check_picture_path(path, f"--{option}")
                for option, path in (("confusion", a.confusion), ("gallery", a.gallery)) if path}
    cfg = config_from_args(a, resize=size_for_weights(a.weights, a.resize, "evaluating"))

    def check(spec):  # before any framework allocates: the size, and the memory it needs at this batch
        check_fits_fashion_mnist(spec, cfg.resize, cfg.batch_size, cfg.precision)

    backend, spec, model = load_weights_into(a.backend, a.weights, cfg.precision, check=check)
    ds = load_fashion_mnist(cfg.data_dir).subset(None, cfg.test_subset)
    trainer = backend.Trainer(model, cfg.lr, cfg.precision)
    loss, acc = evaluate(trainer, ds.test_images, ds.test_labels, cfg, backend.LAYOUT, "evaluate")
    print(f"test loss {loss:.4f}, test acc {acc:.4f} on {len(ds.test_images)} images "
          f"({backend.NAME}, {backend.device()}, {cfg.resize}x{cfg.resize}, {cfg.precision})")
    if pictures:
        draw(pictures, backend, model, ds, cfg, f"{spec.variant} NiN, {backend.NAME}, {cfg.resize}x{cfg.resize}")
    return 0


def draw(pictures: dict, backend, model, ds, cfg, what: str) -> None:
    """The pictures need each image's predicted class, which the Trainer's evaluation step does not
    return: one more pass in eval mode (dropout off) through the backend's ``forward``."""
    import numpy as np

    from nin_multi import data as data_mod
    from nin_multi.config import param_dtype
    from nin_multi.pictures import confusion_counts, draw_confusion, draw_gallery

    predicted = np.concatenate([
        np.argmax(backend.forward(model, x, training=False), axis=1)
        for x, _ in data_mod.batches(ds.test_images, ds.test_labels, cfg.batch_size, cfg.resize, backend.LAYOUT,
                                     dtype=param_dtype(cfg.precision), channels=cfg.in_channels)])
    labels = ds.test_labels.astype(np.int64)
    classes = list(data_mod.CLASSES)
    if "confusion" in pictures:
        counts = confusion_counts(labels, predicted, len(classes))
        right = int(np.trace(counts))
        draw_confusion(counts, classes, pictures["confusion"],
                       f"{what}: {right} of {len(labels)} test images right ({right / len(labels):.3f})")
        print(f"confusion matrix written to {pictures['confusion']} ({right} of {len(labels)} right)")
    if "gallery" in pictures:
        n = min(GALLERY_SIZE, len(labels))
        draw_gallery(ds.test_images[:n], labels[:n], predicted[:n], classes, pictures["gallery"])
        wrong = int(np.sum(labels[:n] != predicted[:n]))
        print(f"gallery of {n} test images written to {pictures['gallery']} ({wrong} wrong)")
