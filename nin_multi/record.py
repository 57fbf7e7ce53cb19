"""The run directory as the training loop sees it: what is written after each epoch, what a resumed run
reads back, what a stopped run leaves behind.

Rank 0 (a single process is rank 0 of a world of one) writes the directory through a ``Run``; every other
worker of a data-parallel run writes nothing and reads only the checkpoint it resumes from. Both restore
through ``load_latest``, so they load the same weights and state the same way.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from .checkpoints import checkpoint_paths, load_checkpoint, save_checkpoint
from .errors import ConfigError, RunDirError, WeightsError
from .run import CONFIG, WEIGHTS, Run, read_metrics
from .spec import Dropout
from .weights import read_weights_file, save_weights


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


#: The checkpoint's key for the driver's step counter: the updates taken over the whole run, whatever framework.
STEP = "step"
#: Where checkpoints written before the driver kept the count held it: each backend's own counter.
_OLD_STEP_KEYS = ("torch_updates", "mx_step", "jax_step")


def steps_done(state: dict, epochs_done: int, steps_per_epoch: int) -> int:
    """The updates a checkpoint's run had taken: its ``step``, else an older checkpoint's backend counter,
    else (TensorFlow's, which kept the count inside its optimizer's variables) every epoch's batches."""
    for key in (STEP, *_OLD_STEP_KEYS):
        if key in state:
            return int(np.asarray(state[key]))
    return epochs_done * steps_per_epoch


def load_latest(run_dir: Path, backend, model, spec, trainer):
    """The newest intact checkpoint's weights into ``model`` and its state into ``trainer`` (a run continued
    in another framework keeps the weights only); returns what was read and the notes for the user."""
    r = load_checkpoint(run_dir, spec)
    notes = [f"skipped damaged checkpoint {p.name} ({why})" for p, why in r.skipped]
    if r.path is None:
        return r, notes
    sgd = getattr(trainer, "optim", None)
    if r.backend not in (None, backend.NAME) and sgd is not None and not sgd.plain:
        raise ConfigError(f"{run_dir} is a {r.backend} run with momentum, weight decay, label smoothing or a "
                          f"schedule, whose optimizer state does not carry over to another framework: continue it "
                          f"with --backend {r.backend}")
    backend.set_weights(model, spec, r.weights)
    if r.backend in (None, backend.NAME):
        trainer.load_extra_state(r.state)
    else:
        rng = (f"but {r.backend}'s random state does not, so the dropout masks differ from an uninterrupted "
               f"{r.backend} run" if any(isinstance(layer, Dropout) and layer.rate > 0 for layer in spec.layers)
               else "and this network has no dropout, so no random state is lost")
        notes.append(f"continuing a {r.backend} run on {backend.NAME} from {r.path.name}: the weights carry "
                     f"over exactly and plain SGD keeps no optimizer state, {rng}")
    return r, notes


def restore(run: Run, backend, model, spec, trainer, log=print):
    """Load the newest intact checkpoint into ``model`` and ``trainer`` and the metrics up to it into
    ``run``; returns what was read (``epochs_done`` 0 without a checkpoint). Says what it skipped and,
    for a run continued in another framework, what does not carry over."""
    r, notes = load_latest(run.path, backend, model, spec, trainer)
    if r.path is None:  # stopped before its first checkpoint: start again
        run.set_history([])
        return r
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
    return r


class Record:
    """What the loop keeps of a run: ``run`` is rank 0's ``Run`` (None on another worker, which only
    reads the directory at ``path``); ``done`` counts the epochs with a checkpoint on disk, ``step`` the
    updates taken up to it (the driver's step counter, kept in the checkpoint once, for every framework)."""

    def __init__(self, run: Optional[Run], path):
        self.run, self.path, self.done, self.step = run, Path(path), 0, 0
        self.log_step = run.log_step if run else None  # every step's loss to the run's event file

    @property
    def history(self) -> list[dict]:
        return self.run.history if self.run else []

    def restore(self, backend, model, spec, trainer, steps_per_epoch: int, log=print) -> int:
        r = restore(self.run, backend, model, spec, trainer, log) if self.run else \
            load_latest(self.path, backend, model, spec, trainer)[0]
        self.done, self.step = r.epochs_done, steps_done(r.state, r.epochs_done, steps_per_epoch)
        return self.done

    def start(self, title: str, backend_name: str, config: dict) -> None:
        """The run's title names every framework it ran on (e.g. "on torch → tensorflow") and its settings."""
        if not self.run:
            return
        ran_on = [r["backend"] for r in self.run.history if "backend" in r] + [backend_name]
        ran_on = " \u2192 ".join(b for i, b in enumerate(ran_on) if i == 0 or b != ran_on[i - 1])
        self.run.title = title.replace(f" on {backend_name}:", f" on {ran_on}:", 1)
        self.run.write_config(config)

    def epoch(self, row: dict, spec, weights: dict, state: dict, config: dict, trained: Optional[dict] = None,
              step: int = 0) -> None:
        """The checkpoint first, holding this epoch's metrics too: metrics files never run ahead of it.
        ``trained`` (``weights.trained_entry``) goes into the checkpoint and the final weights alike;
        ``step``, the updates taken so far, beside the Trainer's ``state``."""
        if self.run:
            save_checkpoint(self.path, spec, weights, {**state, STEP: np.int64(step)}, row["epoch"] - 1,
                            row["backend"], config, self.run.history + [row], trained)
        # before the metrics, plot and events: a stop there still names this checkpoint
        self.done, self.step = row["epoch"], step
        if self.run:
            self.run.log_epoch(row)

    def finish(self, spec, weights: dict, meta: dict, trained: Optional[dict] = None) -> None:
        if self.run:
            save_weights(self.path / WEIGHTS, spec, weights, meta=meta, trained=trained)

    def close(self) -> None:
        if self.run:
            self.run.close()

    def kept(self, workers: int = 1) -> str:
        """What a stopped run leaves behind and how to continue it (with as many workers as it had)."""
        if not self.run:
            return "rank 0 keeps the run"
        if not self.done and not (self.path / CONFIG).is_file():
            return f"nothing was kept in {self.path}"
        kept = f"the checkpoint of epoch {self.done} and the metrics up to it are" if self.done else \
            "its settings are"
        again = f" --workers {workers}" if workers > 1 else ""
        return f"{kept} in {self.path}: continue with nin-multi train --resume {self.path}{again}"
