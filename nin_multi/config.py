"""The training configuration: one dataclass, the chapter's recipe as d2l.ai teaches it today as its defaults."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from . import optim
from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
#: ``--precision auto``: the fastest precision this framework trains correctly on this machine, measured
#: (``nin_multi.precision``); a run's config records the request and the precision it became.
AUTO = "auto"
#: "kaiming-identity" is the fast recipe's: no framework has it, so it is drawn once in NumPy
#: (``nin_multi.weights.initial_weights``, which says what it is and why) and every backend loads that draw.
INITS = ("xavier", "kaiming", "kaiming-identity")
SHARED_DRAW_INITS = ("kaiming-identity",)


def param_dtype(precision: str) -> str:
    """The parameters' dtype: float64 for fp64; every other precision keeps float32 master weights
    (bf16 and fp16 only compute in low precision)."""
    return "float64" if precision == "fp64" else "float32"


def check_model_dtype(precision: str, dtype: str) -> None:
    """A Trainer's precision and its model's parameter dtype (a name: "float32", "float64") must agree:
    the driver builds the model with ``param_dtype(precision)``; anything else is a caller's mistake."""
    if dtype != param_dtype(precision):
        raise ConfigError(f"--precision {precision} needs a {param_dtype(precision)} model, got {dtype}")


@dataclass
class TrainConfig:
    backend: str = "torch"
    epochs: int = 10          # the chapter: 10 epochs
    batch_size: int = 128     # the chapter: batch 128
    lr: float = 0.05          # the chapter on d2l.ai: SGD at 0.05 (the 1st edition's 0.1 could sit at chance)
    resize: int = 224         # the chapter: Fashion-MNIST resized to 224x224
    init: str = "xavier"      # the chapter: Xavier-uniform; "kaiming" leaves the 2.30 plateau sooner
    seed: int = 0
    data_dir: Optional[str] = None
    out: Optional[str] = None
    subset: Optional[int] = None       # train on the first N training examples only
    test_subset: Optional[int] = None  # evaluate on the first N test examples only
    precision: str = "fp32"            # or "auto", which train turns into one of PRECISIONS by measuring
    threads: Optional[int] = None      # None: every core
    in_channels: int = 1
    num_classes: int = 10
    variant: str = "chapter"
    recipe: Optional[str] = None       # the named source whose settings filled the untyped options
    recipe_changes: Optional[dict] = None  # the typed options whose values differ from that recipe's
    dropout: Optional[float] = None    # None: the variant's own (0.5 in the chapter)
    progress: bool = True
    # The optimizer beyond the chapter's plain SGD (nin_multi/optim.py says what each means everywhere).
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "constant"        # or "cosine", "linear" (one-cycle), from --lr as the peak
    warmup_epochs: float = 0.0        # epochs of linear warm-up before the schedule's decay
    # Set by ``--precision auto`` (nin_multi/precision.py): the request, the line saying what it chose and
    # why, and the seconds per step it measured.
    precision_request: Optional[str] = None
    precision_choice: Optional[str] = None
    precision_step_seconds: Optional[dict] = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "resize"):
            _positive_int(name, getattr(self, name))
        for name in ("subset", "test_subset", "threads"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not math.isfinite(self.lr) \
                or self.lr <= 0:
            raise ConfigError(f"--lr must be a positive number, got {self.lr!r} (the chapter uses 0.05)")
        if self.lr > 10:
            raise ConfigError(f"--lr {self.lr} is far too large for SGD on this network (the chapter uses 0.05)")
        if self.precision not in PRECISIONS + (AUTO,):
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS + (AUTO,))}, got {self.precision!r}")
        if self.init not in INITS:
            raise ConfigError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout!r}")
        optim.check(self.lr, self.momentum, self.nesterov, self.weight_decay, self.label_smoothing, self.schedule,
                    self.warmup_epochs)
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"--warmup-epochs {self.warmup_epochs:g} leaves nothing of --epochs {self.epochs} "
                              f"to decay over")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _positive_int(name: str, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
