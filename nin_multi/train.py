"""The training driver: a run directory around the one epoch loop (``loop.fit``) and each backend's own
``train_step``.

The framework-specific part (forward, loss, gradients, SGD update: ``torch.autograd``,
``tf.GradientTape``, ``mxnet.autograd``, ``jax.value_and_grad``) lives in each backend's ``Trainer``;
the bookkeeping (metrics, checkpoints, events, weights) is here once, as the loop's hooks. A single
process is a world of one (``distributed.World``), so ``train`` reads: open the run, restore, fit, finish.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from . import data as data_mod
from . import loop, machine, optim
from .config import AUTO, TrainConfig, param_dtype
from .distributed import World, die_with_launcher, serve
from .errors import ConfigError, Interrupted, NinMultiError, RunDirError, WriteError
from .loop import evaluate, train_epoch  # noqa: F401  (the driver's API: notebooks and tests train with them)
from .precision import check_runs_here
from .precision import resolve as resolve_precision
from .record import Record, read_run_config, restore  # noqa: F401  (restore: part of the driver's API)
from .recipes import get_recipe
from .run import CONFIG, WEIGHTS, Run, default_run_dir, final_line
from .spec import NiNSpec, make_spec
from .untrusted import check_memory
from .weights import trained_entry


def spec_for(cfg: TrainConfig) -> NiNSpec:
    spec = make_spec(cfg.variant, cfg.in_channels, cfg.num_classes, cfg.dropout, cfg.resize)
    check_fits_fashion_mnist(spec, cfg.resize, cfg.batch_size, cfg.precision)
    return spec


def check_fits_fashion_mnist(spec: NiNSpec, resize: int, batch: int = 1, precision: str = "fp32") -> None:
    """Refuse, before loading anything, a network that cannot take Fashion-MNIST at this size: too
    small an image, another channel count (the images are grayscale), fewer outputs than its 10 classes,
    more memory than the machine has. ``--in-channels`` and ``--num-classes`` exist for ``summary`` and
    ``resources``."""
    spec.walk(resize)
    check_memory(spec, resize, batch, 8 if precision == "fp64" else 4)
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


def resume(run_dir, epochs: Optional[int] = None, progress_bar: bool = True, log=print,
           backend: Optional[str] = None, allow_network: bool = False):
    """Continue a run from its newest intact checkpoint, with its own saved config (``epochs`` may
    extend it; ``backend`` continues it in another framework; ``allow_network`` as ``train``'s)."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    overrides = {"epochs": epochs or saved["epochs"], "progress": progress_bar, "out": str(run_dir)}
    if backend:
        overrides["backend"] = backend
    try:
        cfg = TrainConfig.from_dict({**saved, **overrides})
    except (TypeError, ConfigError) as e:
        raise RunDirError(f"{run_dir / CONFIG} is damaged ({e})") from None
    return train(cfg, resume=True, log=log, allow_network=allow_network)


def build(backend, spec, cfg: TrainConfig, n_train: int):
    """The one place a model and its Trainer are made: ``(make_model, make_trainer)``, called by
    ``World.prepare`` (a data-parallel engine builds them where it needs them, TensorFlow's inside its
    strategy's scope). The optimizer's settings enter the Trainer here, once for every backend; the rate
    of each step is the driver's (``train_epoch``)."""
    settings = optim.from_config(cfg, data_mod.num_batches(n_train, cfg.batch_size))

    def make_model():
        return backend.build_model(spec, cfg.init, cfg.seed, dtype=param_dtype(cfg.precision))

    def make_trainer(model):
        return backend.Trainer(model, cfg.lr, cfg.precision, optim=settings)

    return make_model, make_trainer


def choose_precision(backend, spec: NiNSpec, cfg: TrainConfig):
    """``--precision auto`` made a precision by measuring (with this run's threads; the backend is seeded
    again before the run's model is built, so a run is the same whether it measured or used the cache),
    and the ``Choice`` that says what it chose and why. Any other precision is returned as it is, with None."""
    from nin_multi.backends import versions

    if cfg.precision != AUTO:
        return cfg, None
    backend.configure(cfg.threads, cfg.seed)
    return resolve_precision(backend, spec, cfg, versions(backend.NAME))


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
          log=print, allow_network: bool = False) -> tuple[Path, list[dict]]:
    """Train ``cfg`` (left as it is) in a new run directory, or continue the one at ``cfg.out``.
    ``allow_network``: ``--allow-network``, for a data-parallel engine that listens on every interface."""
    from nin_multi.backends import can_train, get_backend, or_list, trainable

    if not can_train(cfg.backend):  # before anything is imported or written
        raise ConfigError(f"{cfg.backend} is inference-only (it computes no gradients): train with "
                          f"{or_list(trainable())}, then evaluate or convert its {WEIGHTS} with --backend "
                          f"{cfg.backend}")
    world = World(allow_network=allow_network)
    if world.ctx.active:
        die_with_launcher()
    if world.serves:  # a parameter server's scheduler or server: it serves the workers until they finish
        serve(world.ctx, cfg.backend)
        return Path(cfg.out or "."), []
    backend = get_backend(cfg.backend)
    cfg = dataclasses.replace(cfg, backend=backend.NAME)
    check_runs_here(backend.NAME, cfg.precision, backend.device())
    spec, ds = spec_for(cfg), load_data(cfg)
    cfg, choice = choose_precision(backend, spec, cfg)
    model, trainer = world.prepare(backend, cfg, *build(backend, spec, cfg, len(ds.train_images)),
                                   len(ds.train_images), len(ds.test_images))
    record = open_record(world, cfg, spec, len(ds.train_images), overwrite, resume)
    cfg = dataclasses.replace(cfg, out=str(record.path), progress=cfg.progress and world.is_main)
    log = log if world.is_main else _silent  # only rank 0 writes the run directory and the console
    try:
        steps = data_mod.num_batches(len(ds.train_images), cfg.batch_size)
        start = record.restore(backend, model, spec, trainer, steps, log) if resume else 0
        world.check_same_weights(backend.get_weights(model, spec))
        record.start(_title(cfg, spec, len(ds.train_images)), backend.NAME, {**cfg.to_dict(), **grayscale_note(spec)})
        announce(world, cfg, backend, spec, len(ds.train_images), start, log)
        if choice is not None:
            log(choice.line())
        fit(trainer, ds, cfg, backend, model, spec, record, start, log)
        record.finish(spec, backend.get_weights(model, spec),
                      meta={"backend": backend.NAME, "epochs": cfg.epochs, "config": cfg.to_dict()},
                      trained=trained_entry(cfg.resize, backend.LAYOUT, cfg.precision))
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", 130)
        how = getattr(e, "how", "interrupted")
        where = f"during epoch {record.done + 1}" if record.done < cfg.epochs else f"while writing {WEIGHTS}"
        raise Interrupted(f"{how} {where}; {record.kept(world.size)}", code) from None
    except WriteError as e:
        raise WriteError(f"{e}; {record.kept(world.size)}", e.path, e.errno) from None
    finally:
        record.close()
        world.close()
    if record.history:
        log(final_line(record.history[-1], backend.device()))
        for line in time_to_accuracy_lines(record.history, get_recipe(cfg.recipe) if cfg.recipe else None):
            log(line)
    return Path(cfg.out), record.history


def time_to_accuracy_lines(history: list[dict], recipe=None) -> list[str]:
    """What the user waited for: the wall time to the best test accuracy so far and, for a recipe made
    to reach an accuracy (``fast``), the time to that accuracy."""
    top = loop.best(history)
    if top is None:
        return []
    lines = [f"best test acc {top['test_acc']:.3f} at epoch {top['epoch']}, after {top['wall_seconds']:.1f} s "
             f"of training (train and test passes)"]
    if recipe is not None and recipe.target:
        hit = loop.reached(history, recipe.target)
        lines.append(f"test acc {recipe.target:g} (the {recipe.name} recipe's target) reached at epoch "
                     f"{hit['epoch']}, after {hit['wall_seconds']:.1f} s" if hit else
                     f"test acc {recipe.target:g} (the {recipe.name} recipe's target) not reached in "
                     f"{history[-1]['wall_seconds']:.1f} s")
    return lines


def _silent(*args, **kwargs) -> None:
    pass


def _title(cfg: TrainConfig, spec: NiNSpec, n_train: int) -> str:
    return (f"NiN ({spec.variant}) on {cfg.backend}: lr {cfg.lr:g}, batch {cfg.batch_size}, "
            f"{cfg.resize}x{cfg.resize}, {cfg.precision}, {n_train} train images")


def open_record(world: World, cfg: TrainConfig, spec: NiNSpec, n_train: int, overwrite: bool,
                resume: bool) -> Record:
    """Rank 0 opens the run directory (locked until the run ends) and every worker learns whether it could."""
    run, error = None, None
    if world.is_main:
        try:
            run = Run(cfg.out or default_run_dir(cfg.backend), _title(cfg, spec, n_train), overwrite=overwrite,
                      resume=resume, lock=True)
        except NinMultiError as e:
            error = e
    world.agree(error, "the start (worker 0 preparing the run directory)")
    return Record(run, run.path if run else cfg.out)


def announce(world: World, cfg: TrainConfig, backend, spec: NiNSpec, n_train: int, start: int, log) -> None:
    if spec.in_channels != data_mod.CHANNELS:
        log(grayscale_note(spec)["input_channels"])
    log(f"training {spec.variant} NiN ({spec.num_params:,} parameters) on {backend.NAME} "
        f"({backend.device()}){world.describe(cfg.batch_size)}, {n_train} training images at "
        f"{cfg.resize}x{cfg.resize}, {cfg.precision}; {machine.describe(backend.device())}; run directory {cfg.out}"
        + (f"; resuming after epoch {start}" if start else ""))
    for note in world.notes(spec):
        log(note)


def fit(trainer, ds, cfg: TrainConfig, backend, model, spec: NiNSpec, record: Record, start: int, log) -> None:
    """Epochs ``start`` to ``cfg.epochs`` through the one loop (``loop.fit``), whose hooks here are the
    run's: every step's loss and rate to its events, every epoch to a checkpoint, the metrics files and
    the console. ``wall_seconds`` continues the resumed run's."""
    elapsed = record.history[-1].get("wall_seconds", 0.0) if record.history else 0.0

    def keep(row: dict, step: int) -> None:
        record.epoch({**row, "backend": backend.NAME}, spec, backend.get_weights(model, spec),
                     trainer.extra_state(), cfg.to_dict(), trained_entry(cfg.resize, backend.LAYOUT, cfg.precision),
                     step)
        log(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, train acc {row['train_acc']:.3f}, "
            f"test acc {row['test_acc']:.3f}, {row['examples_per_sec']:.1f} examples/sec")

    loop.fit(trainer, ds, cfg, backend.LAYOUT, start=start, step=record.step, elapsed=elapsed,
             on_step=record.log_step, on_epoch=[keep])
