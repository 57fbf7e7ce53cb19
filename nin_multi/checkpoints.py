"""Per-epoch checkpoints: written durably, verified on load, and the newest *intact* one resumed.

A checkpoint is a weights file (``weights.py``: canonical arrays, the spec, a SHA-256 of the arrays)
plus the backend's training state under ``state.`` and, in its header, the epochs done, the backend,
the config and the metrics history up to that epoch. Holding the history makes the checkpoint the
run's source of truth: a damaged or stale ``metrics.jsonl`` is rebuilt from it. Like Orbax, a resume
does not trust the newest file blindly: it verifies it and falls back to the next older one.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import DamagedFileError, RunDirError
from .fileio import real_dir
from .weights import read_weights_file, save_weights, written_by_nin_multi

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 3
_NAME = re.compile(r"epoch-\d{4,}\.npz\Z")


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


def is_checkpoint_name(name: str) -> bool:
    return bool(_NAME.match(name))


def checkpoint_paths(run_dir) -> list[Path]:
    """Oldest first: the regular files named as this module names them, in a ``checkpoints`` folder that
    is not a link (one is refused: resuming would write into, and prune, the folder it points to)."""
    folder = real_dir(Path(run_dir) / CHECKPOINTS, create=False)
    if not folder.is_dir():
        return []
    found = [Path(e.path) for e in os.scandir(folder)
             if is_checkpoint_name(e.name) and e.is_file(follow_symlinks=False)]
    return sorted(found, key=lambda p: (len(p.name), p.name))


def save_checkpoint(run_dir, spec, weights: dict, state: dict, epoch: int, backend: str, config: dict,
                    history: list, trained: Optional[dict] = None) -> Path:
    """After each epoch; the last ``KEEP_CHECKPOINTS`` are kept (older ones removed only after the new
    one is safely on disk). ``trained`` (``weights.trained_entry``): what the network is being trained at,
    so that a checkpoint evaluated or converted is taken at its own size."""
    path = real_dir(Path(run_dir) / CHECKPOINTS) / f"epoch-{epoch + 1:04d}.npz"
    save_weights(path, spec, weights, state=state, trained=trained,
                 meta={"epochs_done": epoch + 1, "backend": backend, "config": config, "history": history})
    for old in checkpoint_paths(run_dir)[:-KEEP_CHECKPOINTS]:
        if written_by_nin_multi(old):  # a file copied in under a checkpoint's name is not ours to delete
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
