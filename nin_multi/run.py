"""Run bookkeeping shared by every backend: the run directory, metrics files, plot, progress bar.

A backend never writes files itself; it hands numbers to a ``Run``, so all three frameworks leave
the same files behind and a plot from one can be laid over a plot from another.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .errors import RunDirError

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
PLOT = "curves.png"
CONFIG = "config.json"
WEIGHTS = "weights.npz"
FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "examples_per_sec", "seconds")


def default_run_dir(backend: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{backend}"


def prepare_dir(path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create a run directory, refusing to mix a new run into an old one's files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not resume:
        if not overwrite:
            raise RunDirError(f"run directory {path} already holds files; pass --overwrite to replace "
                              f"them, --resume {path} to continue that run, or choose another --out")
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {path}: {e.strerror or e}") from None
    return path


def write_json(path: Path, obj) -> None:
    """Atomic: a reader (or a crash) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class Run:
    def __init__(self, path, title: str = "", overwrite: bool = False, resume: bool = False):
        self.path = prepare_dir(path, overwrite, resume)
        self.title = title
        self.history: list[dict] = read_metrics(self.path) if resume else []

    def write_config(self, config: dict) -> None:
        write_json(self.path / CONFIG, config)

    def truncate(self, epochs: int) -> None:
        """On resume, forget epochs logged after the checkpoint we restart from."""
        self.history = self.history[:epochs]
        (self.path / METRICS_JSONL).write_text("".join(json.dumps(r) + "\n" for r in self.history))

    def log_epoch(self, row: dict) -> None:
        """Append one epoch's metrics to JSON lines (streamable) and CSV (spreadsheet), and replot."""
        self.history.append(row)
        with open(self.path / METRICS_JSONL, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.path / METRICS_CSV, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self.history[0]), extrasaction="ignore")
            w.writeheader()
            w.writerows(self.history)
        plot_curves({self.title: self.history}, self.path / PLOT, self.title)


def read_metrics(path) -> list[dict]:
    f = Path(path) / METRICS_JSONL
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


def plot_curves(histories: dict[str, list[dict]], dest, title: str = "") -> None:
    """The book's figure (train loss, train acc, test acc against epoch), one style per run.

    Several runs (e.g. the same training in three frameworks) are laid over each other, line style
    telling the metric and colour the run.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def progress(total: int, desc: str, enabled: bool = True):
    """A progress bar with rate and ETA on stderr; silent when disabled."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False,
                dynamic_ncols=True, file=sys.stderr)


def final_line(row: dict, device: str) -> str:
    """What the book prints at the end of training."""
    return (f"loss {row['train_loss']:.3f}, train acc {row['train_acc']:.3f}, test acc {row['test_acc']:.3f}\n"
            f"{row['examples_per_sec']:.1f} examples/sec on {device}")
