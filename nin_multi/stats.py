"""The numbers ``reproduce`` judges frameworks by: step-by-step drift between two loss trajectories, and
Welch's t-test between two backends' results over seeds.

The test and the t distribution are SciPy's (``scipy.stats.ttest_ind(equal_var=False)``, ``scipy.stats.t``);
what is here is what SciPy leaves to its caller: results as plain Python floats (JSON numbers), and a
verdict where neither group has any spread (SciPy answers NaN there). No framework is imported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

#: Where two trajectories count as separated: ten times fp32's rounding of one loss (~1e-7 relative), ten
#: orders of magnitude above float64's (~1e-16).
SEPARATION = 1e-6
#: What "the same trajectory" means in float64 (the issue's bar for --precision fp64).
FP64_AGREEMENT = 1e-9


# -- trajectories ---------------------------------------------------------------------------------------
def relative_difference(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """|a - b| / |b| element by element (b is the reference: the second backend of a pair)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(a - b) / np.abs(b)
    return np.where(a == b, 0.0, rel)  # 0/0 (both losses exactly 0) is agreement, not NaN


def first_exceeding(rel: Sequence[float], threshold: float = SEPARATION) -> Optional[int]:
    """The first step (1-based) whose relative difference is above ``threshold``; None: never."""
    above = np.flatnonzero(np.asarray(rel, np.float64) > threshold)
    return int(above[0]) + 1 if above.size else None


def largest_per_epoch(rel: Sequence[float], epochs: Sequence[int]) -> list[float]:
    """The largest relative difference among each epoch's steps (``epochs``: each step's 1-based epoch)."""
    rel, epochs = np.asarray(rel, np.float64), np.asarray(epochs)
    return [float(rel[epochs == e].max()) for e in range(1, int(epochs.max()) + 1)] if rel.size else []


# -- Welch's t-test -------------------------------------------------------------------------------------
@dataclass
class Welch:
    """Welch's unequal-variance t-test of mean(a) == mean(b)."""

    difference: float   # mean(a) - mean(b)
    t: float
    df: float           # Welch-Satterthwaite degrees of freedom
    p: float            # two-sided
    se: float           # standard error of the difference

    def smallest_significant(self, alpha: float = 0.05) -> float:
        """The |difference| this test would have called significant at ``alpha`` with these spreads."""
        from scipy import stats as scipy_stats  # here, not at import: the CLI's start stays fast

        if not (self.se > 0 and self.df > 0):
            return 0.0
        return float(scipy_stats.t.isf(alpha / 2, self.df)) * self.se


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of one value is 0."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's t-test; needs at least two values on each side."""
    from scipy import stats as scipy_stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Welch's t-test needs at least two values per group, got {a.size} and {b.size}")
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size  # Python floats: JSON-ready results
    diff = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    if se == 0.0:  # no spread on either side: equal means are equal, different ones certainly differ
        return Welch(diff, 0.0 if diff == 0 else math.copysign(math.inf, diff), math.nan,
                     1.0 if diff == 0 else 0.0, 0.0)
    r = scipy_stats.ttest_ind(a, b, equal_var=False)
    return Welch(diff, float(r.statistic), float(r.df), float(r.pvalue), se)
