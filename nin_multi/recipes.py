"""Named training recipes: the settings each text that teaches this chapter uses, by the text's name.

People arrive at NiN from different texts, and each sets it up differently; a recipe is only a set of
``TrainConfig`` values, so ``--recipe`` fills in what the user did not type and every explicit flag still
wins. The default recipe is the chapter as d2l.ai teaches it today (the 2nd edition: lr 0.05, which d2l.ai
chose over the 1st edition's 0.1 because NiN could sit at chance with it), and it is ``TrainConfig``'s own
defaults; the 1st edition and the Chinese edition stay available by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import TrainConfig
from .errors import ConfigError

_BOOK_KEYS = ("variant", "in_channels", "lr", "epochs", "batch_size", "resize", "init", "precision")
#: The options a recipe sets; a typed flag always wins over the recipe. The books' recipes leave the
#: optimizer's (the last six) at the chapter's plain SGD.
RECIPE_KEYS = _BOOK_KEYS + ("momentum", "nesterov", "weight_decay", "label_smoothing", "schedule", "warmup_epochs")
#: d2l.ai's current settings (the 2nd edition's) are ``TrainConfig``'s own defaults, read from there.
_CURRENT = {k: getattr(TrainConfig(), k) for k in _BOOK_KEYS}
#: The 1st English edition differs in the learning rate alone.
_FIRST = {**_CURRENT, "lr": 0.1}


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    settings: dict = field(default_factory=dict)
    note: str = ""
    target: float | None = None  # the test accuracy it is made to reach: train and bench time it

    def describe(self) -> str:
        shown = ", ".join(f"{k.replace('_', ' ')} {self.settings[k]}" for k in RECIPE_KEYS if k in self.settings)
        aim = f"; made to reach test accuracy {self.target:g}" if self.target else ""
        return f"{self.name}: {self.source}; {shown}" + (f"; {self.note}" if self.note else "") + aim


_CHAPTER = {k: _CURRENT[k] for k in ("variant", "in_channels", "resize", "init", "precision")}

#: The ``fast`` recipe's settings, from ``python -m nin_multi.sweep`` on the sample's validation split.
#: Its precision is measured per machine and framework (``auto``): bf16 is twice as fast as fp32 on an AMX CPU
#: in PyTorch and TensorFlow, 5-10x slower on an AVX2 one, and slower in MXNet and JAX on both.
FAST = {"init": "kaiming-identity", "resize": 67, "batch_size": 32, "lr": 0.01, "epochs": 20, "precision": "auto",
        "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "label_smoothing": 0.1, "schedule": "linear",
        "warmup_epochs": 1.0}
FAST_TARGET = 0.80

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("d2l-1st-edition",
           "Dive into Deep Learning, 1st English edition (train_ch6, Xavier init)",
           _FIRST),
    Recipe("d2l-2nd-edition",
           "Dive into Deep Learning as d2l.ai publishes it, 2nd edition (Classifier/Trainer API, lazy layers, "
           "init_cnn = Xavier)",
           _CURRENT),
    Recipe("d2l-zh-notebook",
           "the Chinese edition's notebook (动手学深度学习), run on a CPU",
           {**_CHAPTER, "lr": 0.05, "epochs": 5, "batch_size": 256}),
    Recipe("standalone-ninnet",
           "a standalone PyTorch NinNet: 3 input channels, Dropout2d, AvgPool2d(5), .double()",
           {"variant": "ninnet", "in_channels": 3, "resize": 224, "init": "xavier", "precision": "fp64",
            "lr": 0.1, "epochs": 10, "batch_size": 128},
           "it states no training settings, so lr, epochs and batch are the 1st edition's; Fashion-MNIST's "
           "gray channel is repeated 3 times"),
    Recipe("fast",
           "this project's time-to-accuracy recipe for the chapter's network (same layers; He init with centred "
           "filters and identity 1x1 convs), chosen by "
           "a measured sweep (docs/fast.md)",
           {**_CHAPTER, **FAST}, target=FAST_TARGET),
)}
DEFAULT = "d2l-2nd-edition"


def changes(recipe: Recipe, settings: dict) -> dict:
    """The options of ``settings`` (a run's) whose values differ from what ``recipe`` sets (or, for an
    option it leaves alone, from ``TrainConfig``'s default): what a run changed of the recipe it names,
    so its config says what it really trained with rather than only the recipe's name."""
    base = TrainConfig()
    return {k: settings[k] for k in RECIPE_KEYS
            if k in settings and settings[k] != recipe.settings.get(k, getattr(base, k))}


def get_recipe(name: str | None) -> Recipe:
    if name is None:
        return RECIPES[DEFAULT]
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]
