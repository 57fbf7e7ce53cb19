"""The training driver: one epoch loop for every backend, around each backend's own ``train_step``.

The framework-specific part (forward, loss, gradients, SGD update: ``torch.autograd``,
``tf.GradientTape``, ``mxnet.autograd``) lives in each backend's ``Trainer``; the bookkeeping
(data order, progress, metrics, plot, checkpoints, weights) is here once.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

from . import data as data_mod
from .config import TrainConfig, param_dtype
from .errors import ConfigError, NinMultiError, RunDirError, TrainingDivergedError
from .run import CONFIG, WEIGHTS, Run, default_run_dir, final_line, progress
from .spec import NiNSpec, make_spec
from .weights import read_weights_file, save_weights

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 3


def spec_for(cfg: TrainConfig) -> NiNSpec:
    spec = make_spec(cfg.variant, cfg.in_channels, cfg.num_classes, cfg.dropout, cfg.resize)
    check_fits_fashion_mnist(spec, cfg.resize)
    return spec


def check_fits_fashion_mnist(spec: NiNSpec, resize: int) -> None:
    """Refuse, before loading anything, a network that cannot take Fashion-MNIST at this size: too
    small an image, another channel count (the images are grayscale), fewer outputs than its 10 classes.
    ``--in-channels`` and ``--num-classes`` exist for ``summary`` and ``resources``."""
    spec.walk(resize)
    if spec.in_channels not in (data_mod.CHANNELS, 3):
        raise ConfigError(f"the network takes {spec.in_channels} input channels but Fashion-MNIST images have "
                          f"{data_mod.CHANNELS} (repeated to 3 for an RGB network): train and evaluate need "
                          f"--in-channels {data_mod.CHANNELS} or 3")
    if spec.num_classes < len(data_mod.CLASSES):
        raise ConfigError(f"the network has {spec.num_classes} outputs but Fashion-MNIST has "
                          f"{len(data_mod.CLASSES)} classes: train and evaluate need --num-classes "
                          f"{len(data_mod.CLASSES)} or more")


def grayscale_note(spec: NiNSpec) -> dict:
    """What a run's config and log say when the network wants RGB and Fashion-MNIST is gray."""
    if spec.in_channels == data_mod.CHANNELS:
        return {}
    return {"input_channels": f"Fashion-MNIST's gray channel repeated {spec.in_channels} times for this "
                              f"{spec.in_channels}-channel network (as torchvision's "
                              f"Grayscale(num_output_channels={spec.in_channels}) does)"}


def load_data(cfg: TrainConfig) -> data_mod.FashionMNIST:
    ds = data_mod.load_fashion_mnist(cfg.data_dir)
    return ds.subset(cfg.subset, cfg.test_subset)


def evaluate(trainer, images, labels, cfg: TrainConfig, layout: str, desc: str = "eval") -> tuple[float, float]:
    """Mean loss and accuracy over a split, in eval mode (dropout off)."""
    loss_sum, correct = 0.0, 0
    n = len(images)
    with progress(data_mod.num_batches(n, cfg.batch_size), desc, cfg.progress) as bar:
        for x, y in data_mod.batches(images, labels, cfg.batch_size, cfg.resize, layout,
                                     dtype=param_dtype(cfg.precision), channels=cfg.in_channels):
            l, c = trainer.eval_step(x, y)
            loss_sum, correct = loss_sum + l, correct + c
            bar.update()
    return loss_sum / n, correct / n


def train_epoch(trainer, ds, cfg: TrainConfig, layout: str, epoch: int, order=None, step_losses=None) -> dict:
    """One pass over the training set; ``step_losses``, a list, receives every batch's mean loss (what
    ``reproduce`` compares step by step between frameworks)."""
    n = len(ds.train_images)
    loss_sum, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    batches = data_mod.batches(ds.train_images, ds.train_labels, cfg.batch_size, cfg.resize, layout,
                               shuffle=True, seed=cfg.seed, epoch=epoch, order=order,
                               dtype=param_dtype(cfg.precision), channels=cfg.in_channels)
    with progress(data_mod.num_batches(n, cfg.batch_size), f"epoch {epoch + 1}/{cfg.epochs}",
                  cfg.progress) as bar:
        for i, (x, y) in enumerate(batches):
            l, c = trainer.train_step(x, y)
            if not math.isfinite(l):
                raise TrainingDivergedError(
                    f"the training loss became {l} at epoch {epoch + 1}, batch {i + 1}: training diverged. "
                    f"Try a lower learning rate (--lr {cfg.lr / 2:g}) or --init kaiming; metrics and the "
                    f"last good checkpoint are kept in the run directory")
            loss_sum, correct, seen = loss_sum + l, correct + c, seen + len(y)
            if step_losses is not None:
                step_losses.append(l / len(y))
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    seconds = time.perf_counter() - t0
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen,
            "examples_per_sec": seen / seconds, "seconds": seconds}


def save_checkpoint(run_dir: Path, backend, model, spec, trainer, epoch: int, cfg: TrainConfig) -> Path:
    """After each epoch: weights, RNG state, epoch, config and spec, written atomically; last N kept."""
    path = run_dir / CHECKPOINTS / f"epoch-{epoch + 1:04d}.npz"
    path.parent.mkdir(exist_ok=True)
    save_weights(path, spec, backend.get_weights(model, spec), state=trainer.extra_state(),
                 meta={"epochs_done": epoch + 1, "backend": backend.NAME, "config": cfg.to_dict()})
    for old in sorted(path.parent.glob("epoch-*.npz"))[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


def load_checkpoint(run_dir: Path, backend, model, spec, trainer) -> int:
    """Restore the newest checkpoint; returns the number of epochs it completed (0 if none)."""
    ckpts = sorted((run_dir / CHECKPOINTS).glob("epoch-*.npz"))
    if not ckpts:
        return 0
    _, weights, meta, state = read_weights_file(ckpts[-1], spec)
    backend.set_weights(model, spec, weights)
    trainer.load_extra_state(state)
    return int(meta["epochs_done"])


def resume(run_dir, epochs: Optional[int] = None, progress_bar: bool = True, log=print):
    """Continue a run from its newest checkpoint, with its own saved config (``epochs`` may extend it)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise RunDirError(f"{run_dir} is not a run directory (it has no {CONFIG}); nothing to resume")
    saved = json.loads((run_dir / CONFIG).read_text())
    cfg = TrainConfig.from_dict({**saved, "epochs": epochs or saved["epochs"], "progress": progress_bar,
                                 "out": str(run_dir)})
    return train(cfg, resume=True, log=log)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
          log=print) -> tuple[Path, list[dict]]:
    from nin_multi.backends import can_train, get_backend

    if not can_train(cfg.backend):  # before anything is imported or written
        raise ConfigError(f"{cfg.backend} is inference-only (it computes no gradients): train with torch, "
                          f"tensorflow, mxnet or jax, then evaluate or convert its weights.npz with --backend "
                          f"{cfg.backend}")
    backend = get_backend(cfg.backend)
    cfg.backend = backend.NAME
    spec = spec_for(cfg)
    ds = load_data(cfg)
    title = (f"NiN ({spec.variant}) on {backend.NAME}: lr {cfg.lr:g}, batch {cfg.batch_size}, "
             f"{cfg.resize}x{cfg.resize}, {cfg.precision}, {len(ds.train_images)} train images")
    run = Run(cfg.out or default_run_dir(backend.NAME), title, overwrite=overwrite, resume=resume)
    cfg.out = str(run.path)
    backend.configure(cfg.threads, cfg.seed)
    model = backend.build_model(spec, cfg.init, cfg.seed, dtype=param_dtype(cfg.precision))
    trainer = backend.Trainer(model, cfg.lr, cfg.precision)
    start = load_checkpoint(run.path, backend, model, spec, trainer) if resume else 0
    run.truncate(start)
    run.write_config({**cfg.to_dict(), **grayscale_note(spec)})
    if spec.in_channels != data_mod.CHANNELS:
        log(grayscale_note(spec)["input_channels"])
    log(f"training {spec.variant} NiN ({spec.num_params:,} parameters) on {backend.NAME} "
        f"({backend.device()}), {len(ds.train_images)} training images at {cfg.resize}x{cfg.resize}; "
        f"run directory {run.path}" + (f"; resuming after epoch {start}" if start else ""))
    epoch = start
    try:
        for epoch in range(start, cfg.epochs):
            row = {"epoch": epoch + 1, **train_epoch(trainer, ds, cfg, backend.LAYOUT, epoch)}
            row["test_loss"], row["test_acc"] = evaluate(trainer, ds.test_images, ds.test_labels, cfg,
                                                         backend.LAYOUT, "test")
            run.log_epoch(row)
            save_checkpoint(run.path, backend, model, spec, trainer, epoch, cfg)
            log(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, train acc {row['train_acc']:.3f}, "
                f"test acc {row['test_acc']:.3f}, {row['examples_per_sec']:.1f} examples/sec")
    except KeyboardInterrupt:
        raise NinMultiError(f"interrupted during epoch {epoch + 1}; metrics and the checkpoint of the last "
                            f"completed epoch are in {run.path}: continue with --resume {run.path}") from None
    save_weights(run.path / WEIGHTS, spec, backend.get_weights(model, spec),
                 meta={"backend": backend.NAME, "epochs": cfg.epochs, "config": cfg.to_dict()})
    if run.history:
        log(final_line(run.history[-1], backend.device()))
    return run.path, run.history
