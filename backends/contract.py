"""The backend contract as code: what a backend module, its Trainer and its data-parallel engine offer.

The shared driver (``nin_multi.train``), the commands and the parity tests use a backend only through
these names, so a framework is added by writing one module that satisfies ``Backend`` (and, for data
parallelism, a ``<module>_dist`` companion that satisfies ``DataParallel``), one registry line and its
tests. ``tests/test_contract.py`` checks every backend against this file: the protocols at run time, the
signatures with ``inspect``, the capability fields' values.

Capabilities are fields, not ``hasattr`` probes: ``TRAINS`` (False: the Trainer evaluates only and its
``train_step`` refuses), ``PRECISIONS`` (the ``--precision`` values its Trainer takes on a suitable
device), ``DATA_PARALLEL`` (the launcher whose environment its ``<module>_dist`` engine reads, a
``nin_multi.cluster.Context.launcher`` value, or None without one), ``PRECISION_NEEDS`` (a precision
that runs only somewhere: the places it runs, "gpu" or CPU classes of ``nin_multi.machine.CPU_CLASSES``;
``--precision`` refuses it elsewhere before training and ``auto`` never picks it). They are literals, so the registry
reads them without importing the framework.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, runtime_checkable

import numpy as np

from nin_multi.config import PRECISIONS  # noqa: F401 - every precision any backend may offer, defined once

#: Every backend's Trainer is constructed the same way: ``Trainer(model, lr, precision, optim=None)``.
#: ``optim``: the optimizer settings beyond the learning rate (a ``nin_multi.optim.SGDSettings``: momentum,
#: weight decay, schedule, label smoothing; one object, the same for every backend, one meaning in every
#: framework); None is the chapter's plain SGD. ``lr`` is only the rate a Trainer starts with: the driver
#: hands it every step's rate.
TRAINER_PARAMETERS = ("model", "lr", "precision", "optim")
#: ``Trainer.train_step(x, y, lr, total=None)``: the driver's rate for this update (``SGDSettings.lr_at``
#: of its step counter), and the global batch this batch is a share of (None: this batch alone).
TRAIN_STEP_PARAMETERS = ("x", "y", "lr", "total")
#: ``Engine.train_step(x, y, lr, total)``: this worker's share, the step's rate, the global batch size.
ENGINE_STEP_PARAMETERS = ("x", "y", "lr", "total")
#: Every backend's ``distribute`` is called the same way; ``cfg`` is the run's ``TrainConfig``.
DISTRIBUTE_PARAMETERS = ("ctx", "cfg", "make_model", "make_trainer")
#: ``start_workers(launch, workers, command, env)``: start ``workers`` workers of ``command`` (the train
#: command line, a list) with ``launch.start(name, cmd, env)``; returns the names of the processes that
#: must all end for the run to be over (helpers such as MXNet's scheduler and server are left out).
#: ``launch.at_stop(fn)`` registers ``fn(failure) -> failure``, called once every process has ended, to
#: clean up and to name the worker that failed first.
START_WORKERS_PARAMETERS = ("launch", "workers", "command", "env")
LAYOUTS = ("NCHW", "NHWC")


@runtime_checkable
class Trainer(Protocol):
    """One process's training step around the framework's own autodiff and optimizer.

    ``train_step`` and ``eval_step`` take a batch (``LAYOUT``, in the model's parameter dtype, labels
    int64) and return (summed loss, correct count). ``train_step``'s loss is the one it minimizes (label
    smoothing included); ``eval_step``'s is the plain cross-entropy, so a test loss means the same under
    every recipe and equals ``evaluate``'s. ``precision`` "fp64" takes a float64 model and batches and
    rounds no scalar (the learning rate included) to float32. ``extra_state`` is what a checkpoint keeps
    beyond the weights (RNG state, optimizer variables), as a dict of numpy values.

    The driver owns the step counter and the schedule: ``train_step`` updates at exactly ``lr`` and keeps
    no schedule position of its own (an optimizer whose velocity holds the rate, Keras's and Gluon's,
    rescales it from the rate this Trainer applied last). ``total`` makes the step a data-parallel share:
    the loss minimized is this batch's summed loss over ``total`` (None: ``len(y)``, the batch mean), so an
    engine that sums the workers' gradients takes the single-process update of the global batch."""

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, total: Optional[int] = None) -> tuple[float, int]: ...

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]: ...

    def extra_state(self) -> dict: ...

    def load_extra_state(self, state: dict) -> None: ...


@runtime_checkable
class Engine(Protocol):
    """One worker's part of a data-parallel step: ``train_step`` gets this worker's share of a global
    batch of ``total`` examples and the step's rate, steps the backend's own Trainer on it (its
    ``train_step(x, y, lr, total)``: the same optimizer, schedule, smoothing and precision as one process)
    with the gradients summed over the workers, and returns this worker's sums; ``all_sum`` adds float64
    values over the workers. ``nin_multi.distributed.ShardedTrainer`` turns an Engine back into a ``Trainer``."""

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, total: int) -> tuple[float, int]: ...

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]: ...

    def all_sum(self, values: np.ndarray) -> np.ndarray: ...

    def extra_state(self) -> dict: ...

    def load_extra_state(self, state: dict) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """A backend module: the network rendered from the spec alone, in the framework's own idiom.

    ``build_model(spec, init, seed, dtype)`` makes every layer in ``dtype`` ("float32"; "float64" for
    fp64); ``layer_shapes(model, spec, image_size, batch)`` reads the framework's own forward pass
    (``image_size``: an int or (height, width), see ``nin_multi.spec.image_hw``); ``get_weights`` and
    ``set_weights`` speak the canonical (OIHW) numpy dicts in the model's dtype; ``forward`` returns
    numpy logits; ``save_native`` writes the framework's own format."""

    NAME: str
    LAYOUT: str
    TRAINS: bool
    PRECISIONS: tuple
    DATA_PARALLEL: Optional[str]
    NATIVE_SUFFIXES: tuple
    PRECISION_NEEDS: dict
    Trainer: type

    def configure(self, threads: Optional[int] = None, seed: int = 0) -> None: ...

    def device(self) -> str: ...

    def build_model(self, spec, init: str = "xavier", seed: int = 0, dtype: str = "float32") -> Any: ...

    def layer_shapes(self, model, spec, image_size=224, batch: int = 1) -> list: ...

    def count_params(self, model) -> int: ...

    def get_weights(self, model, spec) -> dict: ...

    def set_weights(self, model, spec, weights: dict) -> None: ...

    def forward(self, model, x: np.ndarray, training: bool = False) -> np.ndarray: ...

    def save_native(self, model, path) -> None: ...


@runtime_checkable
class DataParallel(Protocol):
    """A backend's ``<module>_dist`` companion: its engine and its local launcher.

    ``distribute(ctx, cfg, make_model, make_trainer)`` joins the framework's engine (the launcher's
    environment is read into ``ctx``), builds the model (``make_model()``) and, where the engine uses one,
    the Trainer (``make_trainer(model)``), and returns ``(model, Engine)``."""

    def distribute(self, ctx, cfg, make_model: Callable[[], Any],
                   make_trainer: Callable[[Any], Trainer]) -> tuple[Any, Engine]: ...

    def start_workers(self, launch, workers: int, command: list, env: dict) -> list: ...
