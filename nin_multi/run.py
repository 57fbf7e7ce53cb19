"""Run bookkeeping shared by every backend: the run directory, metrics files, plot, TensorBoard events,
progress bar.

A backend never writes files itself; it hands numbers to a ``Run``, so all three frameworks leave
the same files behind and a plot from one can be laid over a plot from another.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from .checkpoints import CHECKPOINTS, is_checkpoint_name
from .errors import RunDirError
from .events import PREFIX as EVENTS_PREFIX, EventLog
from .fileio import TEMPORARY, save_figure, sweep_temporaries, writable, write_csv, write_json, write_text
from .lock import LOCK, RunLock

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
PLOT = "curves.png"
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "examples_per_sec", "seconds", "backend")


def default_run_dir(backend: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{backend}"


#: Every name a command of this project writes in a run directory (``train``'s files, ``reproduce``'s and
#: ``compare``'s reports): with the lock, checkpoints, temporary files and sub-runs, what ``--overwrite``
#: may remove. tests/test_safety.py checks that every output name the commands define is listed.
PROJECT_FILES = frozenset({
    CONFIG, METRICS_JSONL, METRICS_CSV, PLOT, WEIGHTS, "weights.npz",  # (.npz: runs before safetensors)
    "initial_weights.safetensors", "initial_weights.npz", "backends.csv", "drift.csv", "reproduce.json",
    "steps.csv", "drift.png", "seeds.csv", "seeds.png", "compare.csv", "compare.png",
})
#: TensorBoard's event files (``events.EventLog``): one per process that wrote to the run.
EVENT_FILE = re.compile(re.escape(EVENTS_PREFIX) + r"\.\d+\..+\.\d+\.\d+\Z")
#: What makes a folder a run's (beside its lock): a command writes one of these first.
MARKERS = (CONFIG, CHECKPOINTS, "reproduce.json", "compare.csv")
_HELD: dict = {}  # absolute run directory -> the RunLock this process holds on it (``prepare_dir``)


def prepare_dir(path, overwrite: bool = False, resume: bool = False) -> Path:
    """A run directory for a command that writes several files (``reproduce``, ``compare``): taken under
    its lock like ``open_run_dir``, and held by this process until ``release_dir`` or its exit (a second
    call in the same process, a notebook's next cell, takes it again)."""
    key = Path(path).absolute()
    held = _HELD.get(key)
    if held is not None and held.held:
        _clear(_make_dir(path), overwrite, resume)
        return Path(path)
    path, _HELD[key] = open_run_dir(path, overwrite, resume)
    return path


def release_dir(path) -> None:
    """Release the locks ``prepare_dir`` took on ``path`` and the folders below it (at exit the kernel
    drops them anyway)."""
    top = Path(path).absolute()
    for key in [k for k in _HELD if k == top or top in k.parents]:
        _HELD.pop(key).release()


def open_run_dir(path, overwrite: bool = False, resume: bool = False) -> tuple[Path, RunLock]:
    """The run directory under its lock, taken before anything in it is looked at, written or removed:
    a second process is refused before it can ``--overwrite`` a run that is still training."""
    path = _make_dir(path)
    try:
        lock = RunLock(path).acquire()
        writable(path)
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {path}: {e.strerror or e}") from None
    try:
        _clear(path, overwrite, resume)
    except BaseException:
        lock.release()
        raise
    return path, lock


def _make_dir(path) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {path}: {e.strerror or e}") from None
    return path


def _clear(path: Path, overwrite: bool, resume: bool) -> None:
    """Under the lock: a resume sweeps the temporary files a killed run left; ``overwrite`` removes a
    run's files and nothing else; a new run wants an empty folder."""
    if resume:
        sweep_temporaries(path)
        if (path / CHECKPOINTS).is_dir() and not (path / CHECKPOINTS).is_symlink():
            sweep_temporaries(path / CHECKPOINTS)
        return
    old = [e for e in os.scandir(path) if e.name != LOCK]
    if not old:
        return
    if not overwrite:
        raise RunDirError(f"run directory {path} already holds files; pass --overwrite to replace "
                          f"them, --resume {path} to continue that run, or choose another --out")
    foreign = _foreign(path)
    if foreign:
        raise RunDirError(f"--overwrite refuses {path}: {foreign}; nin-multi only removes what its own runs "
                          f"wrote. Choose another --out, or move those files away yourself")
    _remove_run(path)


def _foreign(path: Path, depth: int = 0) -> str:
    """Why ``path`` is not a folder that only runs of this project wrote ("" when it is). Files are looked
    at before folders, and sub-runs only three deep, so a home folder is refused without walking it."""
    entries = [e for e in os.scandir(path) if e.name != LOCK]
    files = [e for e in entries if not e.is_dir(follow_symlinks=False)]
    others = sorted(e.name for e in files if not _own_file(e))
    folders = [e for e in entries if e.is_dir(follow_symlinks=False)]
    if not others:
        others = sorted(e.name for e in folders if depth >= 3 or not _own_folder(Path(e.path), depth))
    if others:
        shown = ", ".join(repr(n) for n in others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return f"it holds {shown}, which no nin-multi run wrote"
    if folders or any(e.name in MARKERS for e in files) or all(TEMPORARY.match(e.name) for e in files):
        return ""
    return f"it is not a nin-multi run directory (it has no {CONFIG}, {CHECKPOINTS}/ or report)"


def _own_file(e: os.DirEntry) -> bool:
    """A regular file (never a link: the project creates none) of a name the project writes."""
    return e.is_file(follow_symlinks=False) and (e.name in PROJECT_FILES or bool(TEMPORARY.match(e.name))
                                                 or bool(EVENT_FILE.match(e.name)))


def _own_folder(p: Path, depth: int) -> bool:
    if p.name == CHECKPOINTS:
        return all(e.is_file(follow_symlinks=False) and (is_checkpoint_name(e.name) or TEMPORARY.match(e.name))
                   for e in os.scandir(p) if e.name != LOCK)
    return not _foreign(p, depth + 1)  # a sub-run: reproduce's per-framework and per-seed folders, compare's


def _remove_run(path: Path) -> None:
    """Remove what ``_foreign`` found to be the project's, depth first. The folder's own lock stays (its
    caller holds it); a sub-run's is taken first, so a run another process is writing is never emptied."""
    for e in sorted(os.scandir(path), key=lambda e: not e.is_dir(follow_symlinks=False)):
        if e.name == LOCK:
            continue
        if e.is_dir(follow_symlinks=False):
            sub = Path(e.path)
            if e.name == CHECKPOINTS:
                _remove_run(sub)
            else:
                release_dir(sub)  # a sub-run this process prepared (reproduce's) is this process's own
                with RunLock(sub):
                    _remove_run(sub)
            os.rmdir(sub)
        else:
            os.unlink(e.path)


class Run:
    """A run directory and its metrics. ``lock=True`` (``train``) holds the directory's lock until
    ``close``."""

    def __init__(self, path, title: str = "", overwrite: bool = False, resume: bool = False, lock: bool = False):
        self.lock = None
        if lock:
            self.path, self.lock = open_run_dir(path, overwrite, resume)
        else:
            self.path = prepare_dir(path, overwrite, resume)
        self.title = title
        self.history: list[dict] = []
        self.events = EventLog(self.path, resumed=resume)

    def close(self) -> None:
        self.events.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def write_config(self, config: dict) -> None:
        write_json(self.path / CONFIG, config)

    def set_history(self, rows: list[dict]) -> None:
        """On resume: the epochs up to the checkpoint we restart from (later ones are forgotten)."""
        self.history = list(rows)
        self._write_metrics()

    def log_step(self, step: int, loss: float, lr: float) -> None:
        """One SGD step's mean training loss and learning rate (``step`` counts from 1 over the whole run),
        to the TensorBoard events."""
        self.events.log_step(step, loss, lr)

    def log_epoch(self, row: dict) -> None:
        """One epoch's metrics to JSON lines (streamable) and CSV (spreadsheet), and replot. Each file is
        rewritten whole through the durable writer: a failed write leaves the previous version intact.
        Then to the TensorBoard events, at the step that ended the epoch."""
        self.history.append(row)
        self._write_metrics()
        plot_curves({self.title: self.history}, self.path / PLOT, self.title)
        self.events.log_epoch(row)

    def _write_metrics(self) -> None:
        # One column order (FIELDS, then any others), however a row was built: rows rebuilt from a
        # checkpoint's header come back with their keys sorted.
        self.history = [{**{k: r[k] for k in FIELDS if k in r}, **r} for r in self.history]
        write_text(self.path / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in self.history))
        write_csv(self.path / METRICS_CSV, self.history)


def read_metrics(path) -> list[dict]:
    """The rows of ``metrics.jsonl``; a damaged file (a line that is not a JSON object with an epoch)
    raises ``RunDirError`` naming the file and the line."""
    f = Path(path) / METRICS_JSONL
    if not f.exists():
        return []
    rows = []
    for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            why = getattr(e, "msg", str(e)).removesuffix(" at")
            raise RunDirError(f"{f} is damaged: line {i} is not JSON ({why} at column {getattr(e, 'colno', '?')})") \
                from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise RunDirError(f"{f} is damaged: line {i} is not a metrics row")
        rows.append(row)
    return rows


def plot_curves(histories: dict[str, list[dict]], dest, title: str = "") -> None:
    """The book's figure (train loss, train acc, test acc against epoch), one style per run.

    Several runs (e.g. the same training in three frameworks) are laid over each other, line style
    telling the metric and colour the run.
    """
    from .plotting import pyplot
    plt = pyplot()

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, hist) in enumerate(histories.items()):
        if not hist:
            continue
        c = colours[i % len(colours)]
        ep = [r["epoch"] for r in hist]
        label = f"{name} " if len(histories) > 1 else ""
        ax_loss.plot(ep, [r["train_loss"] for r in hist], "-o", color=c, ms=3, label=f"{label}train loss")
        if "test_loss" in hist[0]:
            ax_loss.plot(ep, [r["test_loss"] for r in hist], "--", color=c, label=f"{label}test loss")
        ax_acc.plot(ep, [r["train_acc"] for r in hist], "-o", color=c, ms=3, label=f"{label}train acc")
        ax_acc.plot(ep, [r["test_acc"] for r in hist], "--s", color=c, ms=3, label=f"{label}test acc")
        for prev, row in zip(hist, hist[1:]):  # a run continued in another framework: mark where
            if prev.get("backend") and row.get("backend") and prev["backend"] != row["backend"]:
                for ax in (ax_loss, ax_acc):
                    ax.axvline(prev["epoch"] + 0.5, color=c, ls=":", lw=1)
                    ax.annotate(f"{prev['backend']} \u2192 {row['backend']}", (prev["epoch"] + 0.5, 0.98),
                                xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right", fontsize=7)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        save_figure(fig, dest, dpi=110)
    finally:
        plt.close(fig)


def progress(total: int, desc: str, enabled: bool = True):
    """A progress bar with rate and ETA on stderr (a widget in Jupyter); silent when disabled, and when
    stderr is neither a terminal nor a notebook (a redirected log gets the plain per-epoch lines, not
    carriage-return frames)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled or not _interactive(sys.stderr),
                leave=False,
                dynamic_ncols=True, file=sys.stderr)


def _interactive(stream) -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "kernel", None) is not None:  # a Jupyter kernel: someone is watching the cell
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def final_line(row: dict, device: str) -> str:
    """What the book prints at the end of training."""
    return (f"loss {row['train_loss']:.3f}, train acc {row['train_acc']:.3f}, test acc {row['test_acc']:.3f}\n"
            f"{row['examples_per_sec']:.1f} examples/sec on {device}")
