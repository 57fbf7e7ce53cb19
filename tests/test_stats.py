"""``nin_multi.stats``: Welch's t-test (SciPy's, with JSON-ready results) and step drift."""
import math

import numpy as np
import pytest

from nin_multi.stats import first_exceeding, largest_per_epoch, mean_std, relative_difference, welch


def test_welch_p_values_against_closed_forms():
    """n = 2 per group with equal spreads gives df = 2, and n = 3 gives df = 4: Student's t has closed forms
    there, so SciPy's p-values are checked against arithmetic, not against SciPy."""
    for shift in (0.0, 0.3, 1.0, 3.0, 12.0):
        w = welch([0.0, 1.0], [shift, shift + 1.0])
        assert w.df == pytest.approx(2) and w.t == pytest.approx(-shift / math.sqrt(0.5))
        assert w.p == pytest.approx(1 - abs(w.t) / math.sqrt(2 + w.t ** 2), rel=1e-11, abs=1e-15)
        w = welch([0.0, 1.0, 2.0], [shift, shift + 1.0, shift + 2.0])
        x = abs(w.t) / math.sqrt(4 + w.t ** 2)
        assert w.df == pytest.approx(4) and w.p == pytest.approx(1 - x * (1.5 - 0.5 * x * x), rel=1e-11, abs=1e-15)


def test_welch_t_test():
    # Equal spreads and sizes: Welch's t is Student's, with df = 2 (n - 1).
    w = welch([1, 2, 3], [4, 5, 6])
    assert w.difference == -3 and w.t == pytest.approx(-3 / math.sqrt(2 / 3)) and w.df == pytest.approx(4)
    x = abs(w.t) / math.sqrt(4 + w.t ** 2)
    assert w.p == pytest.approx(1 - x * (1.5 - 0.5 * x * x), rel=1e-11)
    # t tables: the two-sided 5% critical value is 2.776445 at df = 4, 4.604095 at 1%.
    assert w.smallest_significant() == pytest.approx(2.776445105 * math.sqrt(2 / 3), rel=1e-9)
    assert w.smallest_significant(0.01) == pytest.approx(4.604094871 * math.sqrt(2 / 3), rel=1e-9)
    # Unequal spreads: the Welch-Satterthwaite df (hand-computed: variances 2.5 and 7.3, n = 5 each).
    w = welch([1, 2, 3, 4, 5], [2, 3, 4, 5, 9])
    va, vb = 2.5 / 5, 7.3 / 5
    assert w.t == pytest.approx(-1.6 / math.sqrt(va + vb))
    assert w.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 4))
    assert w.p == pytest.approx(0.29373, abs=1e-5)  # scipy.stats.ttest_ind(..., equal_var=False)
    assert all(type(v) is float for v in (w.difference, w.t, w.df, w.p, w.se))  # JSON numbers, not NumPy scalars
    assert welch([0.5, 0.5], [0.5, 0.5]).p == 1.0 and welch([0.5, 0.5], [0.6, 0.6]).p == 0.0
    with pytest.raises(ValueError, match="at least two"):
        welch([1.0], [1.0, 2.0])
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2))) and mean_std([4.0]) == (4.0, 0.0)


def test_relative_difference_and_first_step_above():
    rel = relative_difference([1.0, 2.0, 0.0, 3.0], [1.0, 1.0, 0.0, 4.0])
    np.testing.assert_array_equal(rel, [0.0, 1.0, 0.0, 0.25])
    assert first_exceeding([0.0, 1e-7, 1e-6, 1.1e-6, 0.0]) == 4  # 1-based; exactly the threshold is not above
    assert first_exceeding([1e-9] * 5) is None and first_exceeding([]) is None
    assert first_exceeding([1e-3], threshold=1e-2) is None
    assert largest_per_epoch([1, 5, 2, 3], [1, 1, 2, 2]) == [5.0, 3.0]
