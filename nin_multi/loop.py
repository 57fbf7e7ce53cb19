"""The one epoch loop. Every command that trains (``train``, ``reproduce``, ``sweep``, bench's time to
accuracy) runs its epochs through ``fit``; what each keeps differs, so it says so through hooks.

nanoGPT's ``train.py`` keeps the step counter and ``get_lr(it)`` in the loop that takes the step; here
``train_epoch`` does the same for every framework's ``Trainer``. Around it, ``fit`` evaluates after each
epoch and stamps the row with ``wall_seconds``, the wall time since the first step (continued on resume),
so the time to an accuracy (``reached``) is measured the same way whichever command asks. What a command
keeps is its hooks': ``on_step(step, mean loss, lr)`` after every update (a run's TensorBoard events) and
``on_epoch(row, step)`` after every epoch (a checkpoint, the metrics files, a console line).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional

import numpy as np

from . import data as data_mod
from . import optim
from .config import TrainConfig, param_dtype
from .errors import TrainingDivergedError
from .run import progress

StepHook = Callable[[int, float, float], None]
EpochHook = Callable[[dict, int], None]


def fit(trainer, ds: data_mod.FashionMNIST, cfg: TrainConfig, layout: str, *, start: int = 0,
        step: Optional[int] = None, elapsed: float = 0.0, on_step: Optional[StepHook] = None,
        on_epoch: Iterable[EpochHook] = (), order_of: Optional[Callable[[int], np.ndarray]] = None,
        step_losses: Optional[list] = None, eval_desc: str = "test") -> list[dict]:
    """Epochs ``start`` to ``cfg.epochs``: train, evaluate on ``ds``'s test split (a validation split for
    ``sweep``), then every ``on_epoch`` hook in turn with the row and the updates taken so far. ``step`` is
    the updates taken before epoch ``start`` (a checkpoint's; by default whole epochs); ``elapsed`` the wall
    seconds a resumed run had already trained; ``order_of(epoch)`` an explicit example order (``reproduce``
    hands every framework the same one). Returns the rows of the epochs run."""
    steps = data_mod.num_batches(len(ds.train_images), cfg.batch_size)
    step = start * steps if step is None else step
    hooks = list(on_epoch)
    t0 = time.perf_counter() - elapsed
    rows = []
    for epoch in range(start, cfg.epochs):
        row = {"epoch": epoch + 1, **train_epoch(trainer, ds, cfg, layout, epoch, step=step, log_step=on_step,
                                                 order=order_of(epoch) if order_of else None,
                                                 step_losses=step_losses)}
        step += steps
        row["test_loss"], row["test_acc"] = evaluate(trainer, ds.test_images, ds.test_labels, cfg, layout,
                                                     eval_desc)
        row["wall_seconds"] = time.perf_counter() - t0
        rows.append(row)
        for hook in hooks:
            hook(row, step)
    return rows


def train_epoch(trainer, ds, cfg: TrainConfig, layout: str, epoch: int, order=None, step_losses=None,
                log_step: Optional[StepHook] = None, prefetch: int = 2, step: Optional[int] = None) -> dict:
    """One pass over the training set. The driver owns the step and the rate: update ``step`` (0-based over
    the whole run; by default every earlier epoch's batches) is taken at ``lr_at(step)`` of the run's
    optimizer settings, handed to the Trainer, and that rate is what ``log_step(step + 1, mean loss, lr)``
    (a ``Run``'s, counting from 1) records. ``step_losses``, a list, receives every batch's mean loss (what
    ``reproduce`` compares step by step between frameworks). ``prefetch=0`` prepares each batch only when
    the step asks for it (bench measures what prefetching hides)."""
    n = len(ds.train_images)
    steps = data_mod.num_batches(n, cfg.batch_size)
    settings = optim.from_config(cfg, steps)
    first_step = epoch * steps if step is None else step
    loss_sum, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    batches = data_mod.batches(ds.train_images, ds.train_labels, cfg.batch_size, cfg.resize, layout,
                               shuffle=True, seed=cfg.seed, epoch=epoch, order=order,
                               dtype=param_dtype(cfg.precision), channels=cfg.in_channels, prefetch=prefetch)
    with progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress) as bar:
        for i, (x, y) in enumerate(batches):
            lr = settings.lr_at(first_step + i)
            l, c = trainer.train_step(x, y, lr)
            if not math.isfinite(l):
                raise TrainingDivergedError(
                    f"the training loss became {l} at epoch {epoch + 1}, batch {i + 1}: training diverged. "
                    f"Try a lower learning rate (--lr {cfg.lr / 2:g}) or --init kaiming; metrics and the "
                    f"last good checkpoint are kept in the run directory")
            loss_sum, correct, seen = loss_sum + l, correct + c, seen + len(y)
            if step_losses is not None:
                step_losses.append(l / len(y))
            if log_step is not None:
                log_step(first_step + i + 1, l / len(y), lr)
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    seconds = time.perf_counter() - t0
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen,
            "examples_per_sec": seen / seconds, "seconds": seconds}


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


def reached(rows: list[dict], target: float) -> Optional[dict]:
    """The first epoch whose test (or validation) accuracy reached ``target``: its row's ``wall_seconds``
    is the time to that accuracy. None if no epoch did."""
    return next((r for r in rows if "wall_seconds" in r and r["test_acc"] >= target), None)


def best(rows: list[dict]) -> Optional[dict]:
    """The first epoch that reached the best accuracy of the run."""
    timed = [r for r in rows if "wall_seconds" in r]
    return max(timed, key=lambda r: r["test_acc"]) if timed else None
