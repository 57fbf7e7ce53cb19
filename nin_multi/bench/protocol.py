"""What a bench worker and the runner that started it share: the tagged JSON lines the worker prints
(every worker's protocol, ``nin_multi.interpreters``: results stream back one by one, so the paths that
finished before a crash are kept) and the row each path becomes in the table and ``bench.json``."""
from __future__ import annotations

from ..interpreters import TAG, emit, error_text, parse

__all__ = ["LR", "TAG", "emit", "error_text", "parse", "peer_paths", "planned", "row"]
LR = 0.1  # the chapter's learning rate; speed does not depend on it


def row(backend: str, path: str, precision: str, error: str | None = None, layout: str | None = None,
        description: str | None = None, **numbers) -> dict:
    """One path's row; the figures derived from the rows beside it are added by ``figures.derive``."""
    out = {"backend": backend, "path": path, "precision": precision, "layout": layout,
           "description": description or path, "train_img_s": None, "infer_img_s": None,
           "train_step_s": None, "infer_step_s": None, "train_steps_s": [], "infer_steps_s": [],
           "first_train_step_s": None, "error": error}
    out.update(numbers)
    return out


def peer_paths(fast_is_default: bool, has_fast: bool, s: dict) -> list[tuple[str, str]]:
    """The paths a user of the framework could run without this project: the chapter's code, and the
    framework's one-switch fast path unless the backend's own Trainer is that path."""
    fast = has_fast and not fast_is_default and s.get("fast", True)
    return [("chapter", "fp32")] + ([("fast", "fp32")] if fast else [])


def planned(s: dict, fast_is_default: bool = False, has_fast: bool = True) -> list[tuple[str, str]]:
    """Every (path, precision) a worker runs, in the table's order. A worker that could not even load
    its backend never said what its framework offers: it gets the generic plan, every row an error."""
    return peer_paths(fast_is_default, has_fast, s) + [("default", p) for p in s["precisions"]]
