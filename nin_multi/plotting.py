"""The one matplotlib set-up for every figure the package writes (curves, drift, seeds, compare).

Figures are files, never windows: the Agg backend is chosen before pyplot is first imported, so a
command works the same on a server without a display as on a laptop. matplotlib is imported only when
a figure is drawn, so commands that draw none (``resources``, ``summary``) never load it.
"""
from __future__ import annotations

from contextlib import contextmanager

from .fileio import save_figure

DPI = 110


def pyplot():
    """``matplotlib.pyplot`` with the file-only Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colours() -> list[str]:
    """The default colour cycle: one colour per backend, pair or variant, in order."""
    return pyplot().rcParams["axes.prop_cycle"].by_key()["color"]


@contextmanager
def figure(dest, title: str = "", title_size: float = 10, **subplots):
    """``plt.subplots(**subplots)`` for the caller to draw on; on leaving, the title, a tight layout and the
    file (written atomically, so an interrupted save leaves no half-written PNG). The figure is closed
    even when drawing fails, and nothing is written then."""
    plt = pyplot()
    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        if title:
            fig.suptitle(title, fontsize=title_size)
        fig.tight_layout()
        save_figure(fig, dest, dpi=DPI)
    finally:
        plt.close(fig)
