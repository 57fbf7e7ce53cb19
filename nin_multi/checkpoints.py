"""Per-epoch checkpoints: written durably, verified on load, and the newest *intact* one resumed.

A checkpoint is a weights file (``weights.py``: canonical arrays, the spec, a SHA-256 of the arrays)
plus the backend's training state under ``state.`` and, in its header, the epochs done, the backend,
the config and the metrics history up to that epoch. Holding the history makes the checkpoint the
run's source of truth: a damaged or stale ``metrics.jsonl`` is rebuilt from it. Like Orbax, a resume
does not trust the newest file blindly: it verifies it and falls back to the next older one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import DamagedFileError, RunDirError
from .weights import read_weights_file, save_weights

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 3


@dataclass
class Restored:
    """What ``load_checkpoint`` found: ``epochs_done`` is 0 when the run has no checkpoint yet."""
    epochs_done: int = 0
    path: Optional[Path] = None
    weights: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # [(path, why)] of damaged newer checkpoints

    @property
    def backend(self) -> Optional[str]:
        return self.meta.get("backend")

    @property
    def history(self) -> Optional[list]:
        """The metrics rows up to this checkpoint, or None for checkpoints written before they held them."""
        return self.meta.get("history")


def checkpoint_paths(run_dir) -> list[Path]:
    """Oldest first."""
    return sorted((Path(run_dir) / CHECKPOINTS).glob("epoch-*.npz"))


def save_checkpoint(run_dir, spec, weights: dict, state: dict, epoch: int, backend: str, config: dict,
                    history: list) -> Path:
    """After each epoch; the last ``KEEP_CHECKPOINTS`` are kept (older ones removed only after the new
    one is safely on disk)."""
    path = Path(run_dir) / CHECKPOINTS / f"epoch-{epoch + 1:04d}.npz"
    path.parent.mkdir(exist_ok=True)
    save_weights(path, spec, weights, state=state,
                 meta={"epochs_done": epoch + 1, "backend": backend, "config": config, "history": history})
    for old in checkpoint_paths(run_dir)[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


def load_checkpoint(run_dir, spec) -> Restored:
    """The newest checkpoint that reads back intact; damaged newer ones are listed in ``skipped``. A
    run whose checkpoints are all damaged is refused (``RunDirError``) rather than restarted silently."""
    skipped = []
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            _, weights, meta, state = read_weights_file(path, spec)
        except DamagedFileError as e:
            skipped.append((path, e.reason))
            continue
        return Restored(int(meta["epochs_done"]), path, weights, state, meta, skipped)
    if skipped:
        names = ", ".join(f"{p.name} ({why})" for p, why in skipped)
        raise RunDirError(f"no intact checkpoint in {Path(run_dir) / CHECKPOINTS} to resume from: {names}. "
                          f"Start the run again with --overwrite --out {run_dir}")
    return Restored()
