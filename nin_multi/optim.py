"""The optimizer's settings, once for every framework: SGD with momentum, weight decay, a learning-rate
schedule and label smoothing, and the one meaning each framework's own optimizer is made to compute.

The frameworks write "SGD with momentum and weight decay" differently, and with a learning rate that
changes every step the differences are different trainings:

* PyTorch and Optax keep the momentum buffer in gradient units and apply the learning rate last:
  ``buf = m * buf + g; w -= lr_t * buf``.
* Keras and Gluon fold the learning rate into the velocity: ``v = m * v - lr_t * g; w += v``. With a
  constant rate this is the same update (``v = -lr * buf``); when the rate changes, the old velocity
  carries the old rate.
* Keras 3's ``weight_decay`` is decoupled (``w -= lr * wd * w`` beside the gradient step); PyTorch's,
  Gluon's ``wd`` and Optax's ``add_decayed_weights`` before ``sgd`` are coupled L2 (``g += wd * w``).

The meaning here is PyTorch's: coupled L2 weight decay on every parameter, ``buf = m * buf + (g + wd * w)``,
``w -= lr_t * buf`` (Nesterov: ``w -= lr_t * (g + wd * w + m * buf)``), the cross-entropy against labels
smoothed to ``(1 - eps) * onehot + eps / K``. Keras and Gluon reach it with their own optimizers plus one
correction: before step ``t`` their velocity is scaled by ``lr_t / lr_{t-1}`` (``velocity_scale``), which
turns ``-lr_{t-1} * buf`` into ``-lr_t * buf``; Keras gets the coupled decay as ``wd * w`` added to each
gradient instead of its decoupled ``weight_decay``. ``lr_at`` is plain Python, evaluated by the training
driver on its one step counter and handed to the Trainer of whichever framework, so the schedule is the
same numbers everywhere (a double; fp64 runs keep it so) and the rate logged is the rate applied. A
Trainer keeps no schedule position: Keras and Gluon take the previous rate for ``velocity_scale`` from
their optimizer, which holds the rate it applied last.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class SGDSettings:
    """One SGD training's optimizer: ``lr`` is the peak rate; ``warmup_steps`` rise linearly to it, then
    ``cosine`` or ``linear`` (one-cycle's triangle) decay towards 0 over the rest of ``total_steps``.
    The defaults are the chapter's plain SGD at a constant rate."""

    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1

    def __post_init__(self):
        check(self.lr, self.momentum, self.nesterov, self.weight_decay, self.label_smoothing, self.schedule)
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ConfigError(f"a schedule needs at least one step, got total_steps {self.total_steps!r}")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps < max(self.total_steps, 2):
            raise ConfigError(f"--warmup-epochs must leave steps for the schedule: {self.warmup_steps} warm-up steps "
                              f"of {self.total_steps}")

    @property
    def plain(self) -> bool:
        """The chapter's optimizer: no momentum, no decay, no smoothing, one rate throughout."""
        return (self.momentum, self.weight_decay, self.label_smoothing, self.schedule) == (0, 0, 0, "constant")

    def lr_at(self, step: int) -> float:
        """The learning rate of update ``step`` (0-based); never 0, so ``velocity_scale`` is defined.
        Steps past the end keep the last rate (a run extended with ``--epochs`` on resume)."""
        if self.schedule == "constant":
            return self.lr
        step = min(step, self.total_steps - 1)
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        done = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)  # in [0, 1)
        if self.schedule == "linear":
            return self.lr * (1 - done)
        return self.lr * 0.5 * (1 + math.cos(math.pi * done))

    def velocity_scale(self, step: int) -> float:
        """What a velocity that holds ``-lr * buf`` (Keras, Gluon) is multiplied by before update ``step``
        so that the update is ``-lr_at(step) * buf``: ``lr_at(step) / lr_at(step - 1)``, 1 for a constant rate."""
        if step == 0 or self.schedule == "constant":
            return 1.0
        return self.lr_at(step) / self.lr_at(step - 1)


def check(lr, momentum=0.0, nesterov=False, weight_decay=0.0, label_smoothing=0.0, schedule="constant",
          warmup_epochs=0.0) -> None:
    """Refuse settings no framework can train with, in the words of the command line's options."""
    for name, v in (("lr", lr), ("momentum", momentum), ("weight-decay", weight_decay),
                    ("label-smoothing", label_smoothing), ("warmup-epochs", warmup_epochs)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"--{name} must be a non-negative number, got {v!r}")
    if lr <= 0:
        raise ConfigError(f"--lr must be a positive number, got {lr!r} (the chapter uses 0.05)")
    if momentum >= 1:
        raise ConfigError(f"--momentum must be below 1 (0.9 is usual), got {momentum!r}")
    if nesterov and not momentum:
        raise ConfigError("--nesterov needs --momentum above 0")
    if label_smoothing >= 1:
        raise ConfigError(f"--label-smoothing must be below 1 (0.1 is usual), got {label_smoothing!r}")
    if weight_decay >= 1:
        raise ConfigError(f"--weight-decay must be below 1 (5e-4 is usual), got {weight_decay!r}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if warmup_epochs and schedule == "constant":
        raise ConfigError("--warmup-epochs needs a --schedule (cosine or linear); a constant rate has no warm-up")


def from_config(cfg, steps_per_epoch: int) -> SGDSettings:
    """A run's settings (``TrainConfig``): ``warmup_epochs`` become steps, the schedule spans ``cfg.epochs``."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    return SGDSettings(cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.label_smoothing, cfg.schedule,
                       warmup, total)


def resolve(lr: float, optim: SGDSettings | None) -> SGDSettings:
    """A Trainer's settings: ``optim`` when given (its ``lr`` is the peak), else plain SGD at ``lr``."""
    return optim if optim is not None else SGDSettings(lr)
