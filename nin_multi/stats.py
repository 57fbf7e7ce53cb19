"""The numbers ``reproduce`` judges frameworks by: step-by-step drift between two loss trajectories, and
Welch's t-test between two backends' results over seeds.

SciPy is not a dependency, so the t distribution is computed here from the regularized incomplete beta
function (Lentz's continued fraction); tests check it against known values. Everything is plain Python
floats and NumPy: no framework is imported.
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


# -- the t distribution ---------------------------------------------------------------------------------
def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1.

    The continued fraction converges fast for x < (a + 1) / (a + b + 2); beyond that the symmetry
    I_x(a, b) = 1 - I_{1-x}(b, a) brings x back below it.
    """
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x == 0.0 or x == 1.0:
        return x
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) * _beta_fraction(a, b, x) / a


def _beta_fraction(a: float, b: float, x: float, eps: float = 1e-15, max_terms: int = 10_000) -> float:
    """1 / (1 + d1 / (1 + d2 / (1 + ...))), the continued fraction of I_x(a, b), by Lentz's method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, max_terms + 1):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),                  # even term d_2m
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):       # odd term d_2m+1
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < eps:
            return f
    raise ArithmeticError(f"betainc({a}, {b}, {x}): the continued fraction did not converge")


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (any real df > 0)."""
    if math.isnan(t) or not df > 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t)."""
    half = t_two_sided_p(t, df) / 2.0
    return 1.0 - half if t > 0 else half


def t_critical(df: float, alpha: float = 0.05) -> float:
    """The |t| above which a two-sided test at level ``alpha`` rejects: bisection on t_two_sided_p."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > alpha:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > alpha else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2.0


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
        return t_critical(self.df, alpha) * self.se if self.se > 0 and self.df > 0 else 0.0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of one value is 0."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's t-test; needs at least two values on each side."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Welch's t-test needs at least two values per group, got {a.size} and {b.size}")
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size  # Python floats: JSON-ready results
    diff = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    if se == 0.0:  # no spread on either side: equal means are equal, different ones certainly differ
        return Welch(diff, 0.0 if diff == 0 else math.copysign(math.inf, diff), math.nan,
                     1.0 if diff == 0 else 0.0, 0.0)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    t = diff / se
    return Welch(diff, t, df, t_two_sided_p(t, df), se)
