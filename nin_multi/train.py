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
from .checkpoints import checkpoint_paths, load_checkpoint, save_checkpoint
from .config import TrainConfig, param_dtype
from .errors import (ConfigError, Interrupted, NinMultiError, RunDirError, TrainingDivergedError, WeightsError,
                     WriteError)
from .run import CONFIG, WEIGHTS, Run, default_run_dir, final_line, progress, read_metrics
from .spec import Dropout, NiNSpec, make_spec
from .untrusted import check_memory
from .weights import read_weights_file, save_weights


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


def train_epoch(trainer, ds, cfg: TrainConfig, layout: str, epoch: int, order=None, step_losses=None,
                log_step=None) -> dict:
    """One pass over the training set; ``step_losses``, a list, receives every batch's mean loss (what
    ``reproduce`` compares step by step between frameworks); ``log_step(step, mean loss, lr)`` (a
    ``Run``'s) is called after every step, ``step`` counted from 1 over the whole run."""
    n = len(ds.train_images)
    first_step = epoch * data_mod.num_batches(n, cfg.batch_size) + 1
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
            if log_step is not None:
                log_step(first_step + i, l / len(y), cfg.lr)
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    seconds = time.perf_counter() - t0
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen,
            "examples_per_sec": seen / seconds, "seconds": seconds}


def read_run_config(run_dir: Path) -> dict:
    """The run's saved settings: ``config.json``, or, when it is gone, the newest intact checkpoint's
    copy. A damaged ``config.json`` is refused, not guessed around: the user decides."""
    path = run_dir / CONFIG
    ckpts = checkpoint_paths(run_dir)
    if not path.is_file():
        if not ckpts:
            raise RunDirError(f"{run_dir} is not a run directory (it has no {CONFIG}); nothing to resume")
        for ckpt in reversed(ckpts):
            try:
                return read_weights_file(ckpt)[2]["config"]
            except (WeightsError, KeyError):
                continue
        raise RunDirError(f"{run_dir} has no {CONFIG} and no intact checkpoint that holds the run's settings; "
                          f"nothing to resume")
    fix = ("delete it to resume with the settings stored in the newest intact checkpoint" if ckpts else
           "repair it, or start the run again with --overwrite")
    try:
        saved = json.loads(path.read_text(errors="replace"))
    except ValueError as e:
        raise RunDirError(f"{path} is damaged ({e}): {fix}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("epochs"), int):
        raise RunDirError(f"{path} is damaged (not the settings of a run): {fix}")
    return saved


def resume(run_dir, epochs: Optional[int] = None, progress_bar: bool = True, log=print,
           backend: Optional[str] = None):
    """Continue a run from its newest intact checkpoint, with its own saved config (``epochs`` may
    extend it; ``backend`` continues it in another framework)."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    overrides = {"epochs": epochs or saved["epochs"], "progress": progress_bar, "out": str(run_dir)}
    if backend:
        overrides["backend"] = backend
    try:
        cfg = TrainConfig.from_dict({**saved, **overrides})
    except (TypeError, ConfigError) as e:
        raise RunDirError(f"{run_dir / CONFIG} is damaged ({e})") from None
    return train(cfg, resume=True, log=log)


def restore(run: Run, backend, model, spec, trainer, log=print) -> int:
    """Load the newest intact checkpoint into ``model`` and ``trainer`` and the metrics up to it into
    ``run``; returns the epochs it completed (0 without a checkpoint). Says what it skipped and, for a
    run continued in another framework, what does not carry over."""
    r = load_checkpoint(run.path, spec)
    notes = [f"skipped damaged checkpoint {p.name} ({why})" for p, why in r.skipped]
    if r.path is None:  # stopped before its first checkpoint: start again
        run.set_history([])
        return 0
    backend.set_weights(model, spec, r.weights)
    if r.backend in (None, backend.NAME):
        trainer.load_extra_state(r.state)
    else:
        rng = (f"but {r.backend}'s random state does not, so the dropout masks differ from an uninterrupted "
               f"{r.backend} run" if any(isinstance(layer, Dropout) and layer.rate > 0 for layer in spec.layers)
               else "and this network has no dropout, so no random state is lost")
        notes.append(f"continuing a {r.backend} run on {backend.NAME} from {r.path.name}: the weights carry "
                     f"over exactly and plain SGD keeps no optimizer state, {rng}")
    history = r.history
    try:
        on_disk = read_metrics(run.path)
    except RunDirError as e:
        if history is None:  # a checkpoint from before checkpoints held the metrics: nothing to rebuild from
            raise RunDirError(f"{e}; repair it, or delete it to resume without the earlier epochs' metrics") from None
        notes.append(f"{e}; rewriting it from {r.path.name}")
        on_disk = None
    if history is None:
        history = on_disk
    run.set_history(history[:r.epochs_done])
    for note in notes:
        log(note)
    return r.epochs_done


def build(backend, spec, cfg: TrainConfig, dist):
    """The model and its trainer; in a distributed run the backend's engine builds them where it needs
    them (TensorFlow: inside the strategy's scope) and ``ShardedTrainer`` drives its share of each batch."""
    def make_model():
        return backend.build_model(spec, cfg.init, cfg.seed, dtype=param_dtype(cfg.precision))

    def make_trainer(model):
        return backend.Trainer(model, cfg.lr, cfg.precision)

    if not dist.active:
        model = make_model()
        return model, make_trainer(model)
    from .distributed import ShardedTrainer

    if not hasattr(backend, "distribute"):
        raise ConfigError(f"the {backend.NAME} backend has no data-parallel engine yet: train it in one process "
                          f"(several workers: torch, tensorflow, mxnet)")
    model, engine = backend.distribute(dist, cfg, make_model, make_trainer)
    return model, ShardedTrainer(engine, dist)


def _restore_worker(run_dir: Path, backend, model, spec, trainer) -> int:
    """A worker other than rank 0 (it has no ``Run``): the same checkpoint's weights and state."""
    r = load_checkpoint(run_dir, spec)
    if r.path is None:
        return 0
    backend.set_weights(model, spec, r.weights)
    if r.backend in (None, backend.NAME):
        trainer.load_extra_state(r.state)
    return r.epochs_done


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
          log=print) -> tuple[Path, list[dict]]:
    from nin_multi.backends import can_train, get_backend

    from . import distributed

    if not can_train(cfg.backend):  # before anything is imported or written
        raise ConfigError(f"{cfg.backend} is inference-only (it computes no gradients): train with torch, "
                          f"tensorflow, mxnet or jax, then evaluate or convert its {WEIGHTS} with --backend "
                          f"{cfg.backend}")
    dist = distributed.from_env()
    if dist.active:
        distributed.die_with_launcher()
    if dist.role != "worker":  # an MXNet scheduler or server: it serves the workers until they finish
        distributed.serve(dist, cfg.backend)
        return Path(cfg.out or "."), []
    backend = get_backend(cfg.backend)
    cfg.backend = backend.NAME
    spec = spec_for(cfg)
    ds = load_data(cfg)
    if dist.active:
        distributed.check_config(dist, cfg, len(ds.train_images), len(ds.test_images))
        backend.configure(cfg.threads, cfg.seed)
        model, trainer = build(backend, spec, cfg, dist)
    title = (f"NiN ({spec.variant}) on {backend.NAME}: lr {cfg.lr:g}, batch {cfg.batch_size}, "
             f"{cfg.resize}x{cfg.resize}, {cfg.precision}, {len(ds.train_images)} train images")
    run, error = None, None
    if dist.is_main:  # only rank 0 writes the run directory and the console
        try:
            run = Run(cfg.out or default_run_dir(backend.NAME), title, overwrite=overwrite, resume=resume, lock=True)
            cfg.out = str(run.path)
        except NinMultiError as e:
            error = e
    else:
        log, cfg.progress = (lambda *a, **k: None), False
    if dist.active:
        trainer.agree(error, "the start (worker 0 preparing the run directory)")
    elif error:
        raise error
    done = 0  # epochs with a checkpoint on disk
    try:
        if not dist.active:
            backend.configure(cfg.threads, cfg.seed)
            model, trainer = build(backend, spec, cfg, dist)
        if run:
            start = done = restore(run, backend, model, spec, trainer, log) if resume else 0
        else:
            start = done = _restore_worker(Path(cfg.out), backend, model, spec, trainer) if resume else 0
        if dist.active:
            trainer.check_same_weights(backend.get_weights(model, spec))
        if run:
            ran_on = [r["backend"] for r in run.history if "backend" in r] + [backend.NAME]
            ran_on = " \u2192 ".join(b for i, b in enumerate(ran_on) if i == 0 or b != ran_on[i - 1])
            run.title = title.replace(f" on {backend.NAME}:", f" on {ran_on}:", 1)  # e.g. "on torch → tensorflow"
            run.write_config({**cfg.to_dict(), **grayscale_note(spec)})
        if spec.in_channels != data_mod.CHANNELS:
            log(grayscale_note(spec)["input_channels"])
        workers = (f" x {dist.world_size} workers ({dist.launcher}); --batch-size {cfg.batch_size} is the global "
                   f"batch, {cfg.batch_size // dist.world_size} per worker" if dist.active else "")
        log(f"training {spec.variant} NiN ({spec.num_params:,} parameters) on {backend.NAME} "
            f"({backend.device()}){workers}, {len(ds.train_images)} training images at {cfg.resize}x{cfg.resize}; "
            f"run directory {cfg.out}" + (f"; resuming after epoch {start}" if start else ""))
        if dist.active and any(getattr(layer, "rate", 0) for layer in spec.layers):
            log(f"note: {distributed.DROPOUT_NOTE}")
        for epoch in range(start, cfg.epochs):
            row = {"epoch": epoch + 1, **train_epoch(trainer, ds, cfg, backend.LAYOUT, epoch,
                                                     log_step=run.log_step if run else None)}
            row["test_loss"], row["test_acc"] = evaluate(trainer, ds.test_images, ds.test_labels, cfg,
                                                         backend.LAYOUT, "test")
            row["backend"] = backend.NAME
            if run:
                # The checkpoint first, holding this epoch's metrics too: metrics files never run ahead of it.
                save_checkpoint(run.path, spec, backend.get_weights(model, spec), trainer.extra_state(), epoch,
                                backend.NAME, cfg.to_dict(), run.history + [row])
                done = epoch + 1
                run.log_epoch(row)
            log(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, train acc {row['train_acc']:.3f}, "
                f"test acc {row['test_acc']:.3f}, {row['examples_per_sec']:.1f} examples/sec")
        if run:
            save_weights(run.path / WEIGHTS, spec, backend.get_weights(model, spec),
                         meta={"backend": backend.NAME, "epochs": cfg.epochs, "config": cfg.to_dict()})
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", 130)
        how = getattr(e, "how", "interrupted")
        where = f"during epoch {done + 1}" if done < cfg.epochs else f"while writing {WEIGHTS}"
        kept = _kept(run, done, dist.world_size) if run else "rank 0 keeps the run"
        raise Interrupted(f"{how} {where}; {kept}", code) from None
    except WriteError as e:
        raise WriteError(f"{e}; {_kept(run, done, dist.world_size) if run else ''}", e.path, e.errno) from None
    finally:
        if run:
            run.close()
        if dist.active:
            trainer.close()
    if run and run.history:
        log(final_line(run.history[-1], backend.device()))
    return Path(cfg.out), run.history if run else []


def _kept(run: Run, done: int, workers: int = 1) -> str:
    """What a stopped run leaves behind and how to continue it (with as many workers as it had)."""
    if not done and not (run.path / CONFIG).is_file():
        return f"nothing was kept in {run.path}"
    kept = f"the checkpoint of epoch {done} and the metrics up to it are" if done else "its settings are"
    again = f" --workers {workers}" if workers > 1 else ""
    return f"{kept} in {run.path}: continue with nin-multi train --resume {run.path}{again}"
