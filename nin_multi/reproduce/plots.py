"""reproduce's two figures: ``drift.png`` (each pair's step-by-step loss difference, one start) and
``seeds.png`` (every seed's final result per backend, several starts). The curves are run.py's."""
from __future__ import annotations

import numpy as np

from ..plotting import colours, figure
from .statistics import METRICS

#: Where an exact agreement (relative difference 0) is drawn on the log scale: below float64's epsilon.
ZERO_FLOOR = 1e-17
#: The two levels drawn across drift.png: (the step report's key, label, line style, line and label colours).
LEVELS = (("threshold", "separated", "--", "black", "black"),
          ("agreement", "fp64 agreement", ":", "grey", "dimgrey"))


def plot_drift(table: dict, drift: dict, dest, title: str) -> None:
    """The relative loss difference of each pair against the step, log scale: one sees the step where
    fp32 trajectories leave rounding level, and fp64 trajectories staying at it."""
    steps = np.asarray(table["step"])
    per_epoch = drift["steps_per_epoch"]
    with figure(dest, title, figsize=(10, 4.8)) as (fig, ax):
        any_zero = _draw_pairs(ax, steps, table, drift)
        for key, text, style, line_colour, text_colour in LEVELS:
            ax.axhline(drift[key], color=line_colour, ls=style, lw=1)
            ax.text(steps[-1], drift[key] * 1.5, f"{drift[key]:.0e}: {text}", ha="right", va="bottom", fontsize=8,
                    color=text_colour)
        for boundary in range(per_epoch, len(steps), per_epoch):
            ax.axvline(boundary + 0.5, color="grey", lw=0.8, alpha=0.5)
        if len(steps) > per_epoch:
            for e in range(len(steps) // per_epoch):
                ax.text(e * per_epoch + per_epoch / 2, 1.02, f"epoch {e + 1}", transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=8, color="dimgrey")
        ax.set_yscale("log")
        finite = [v for rel in table["rel_diff"].values() for v in rel if np.isfinite(v)]
        ax.set_ylim(ZERO_FLOOR / 3, max(1.0, max(finite, default=1.0) * 3))
        ax.set_xlim(0, steps[-1] + 1)
        ax.set_xlabel("SGD step" + (f" ({per_epoch} per epoch)" if per_epoch else ""))
        ax.set_ylabel("relative difference of the step's training loss |a - b| / |b|")
        ax.grid(alpha=0.3, which="major")
        ax.legend(fontsize=8, loc="best", title_fontsize=7,
                  title=f"exact agreement (0) drawn at {ZERO_FLOOR:.0e}" if any_zero else None)


def _draw_pairs(ax, steps: np.ndarray, table: dict, drift: dict) -> bool:
    """One line per pair, its first separation circled; returns whether any step agreed exactly."""
    palette = colours()
    any_zero = False
    for i, (pair, rel) in enumerate(table["rel_diff"].items()):
        rel = np.asarray(rel)
        any_zero |= bool((rel == 0).any())
        first = drift["pairs"][pair]["first_step_above"]
        c = palette[i % len(palette)]
        label = f"{pair}: " + (f"above {drift['threshold']:.0e} from step {first}" if first else
                               f"never above {drift['threshold']:.0e} (largest {rel.max():.1e})")
        # Later pairs thinner: where two pairs coincide (one backend apart from two that agree) both show.
        ax.plot(steps, np.maximum(rel, ZERO_FLOOR), "-", color=c, lw=max(2.6 - 0.7 * i, 0.8), label=label)
        if first:
            ax.plot([first], [rel[first - 1]], "o", color=c, ms=6, mfc="none", mew=1.5)
    return any_zero


def plot_seeds(stats: dict, names: list[str], dest, title: str) -> None:
    """Every seed's final test accuracy and loss per backend (dots), with each backend's mean ± standard
    deviation beside them, and Welch's p-value of each pair underneath."""
    palette = colours()
    seeds = stats["seeds"]
    offsets = np.linspace(-0.12, 0.12, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    with figure(dest, title, nrows=1, ncols=len(METRICS), figsize=(10, 5)) as (fig, axes):
        for ax, (key, label) in zip(axes, METRICS):
            for i, n in enumerate(names):
                c = palette[i % len(palette)]
                xs, ys = i + offsets - 0.1, stats["values"][n][key]
                ax.scatter(xs, ys, s=28, color=c, alpha=0.8, zorder=3)
                for x, y, seed in zip(xs, ys, seeds):
                    ax.annotate(str(seed), (x, y), xytext=(-3, 0), textcoords="offset points", ha="right",
                                va="center", fontsize=6, color="dimgrey")
                mean, std = stats["summary"][n][f"{key}_mean"], stats["summary"][n][f"{key}_std"]
                ax.errorbar(i + 0.22, mean, yerr=std, fmt="D", color="black", ms=5, capsize=5, zorder=4)
                ax.annotate(f"{mean:.3f}\n±{std:.3f}", (i + 0.3, mean), fontsize=7, va="center")
            ax.scatter([], [], s=28, color="grey", label="one seed (its number beside it)")
            ax.errorbar([], [], yerr=[], fmt="D", color="black", ms=5, capsize=5, label="mean ± std")
            ax.set_xticks(range(len(names)), names)
            ax.set_xlim(-0.6, len(names) - 0.2)
            ax.set(ylabel=f"final {label}", title=f"final {label}, {len(seeds)} seeds")
            ax.grid(alpha=0.3, axis="y")
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, hi + 0.25 * (hi - lo))  # room for the legend above the points
            ax.legend(fontsize=7, loc="upper right")
            ps = [t for t in stats["welch"] if t["metric"] == key]
            ax.set_xlabel("Welch's t-test, two-sided p:\n"
                          + "\n".join(f"{t['pair']}: p = {t['p']:.2g}" for t in ps), fontsize=8)
