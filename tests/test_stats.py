"""``nin_multi.stats``: the t distribution from the incomplete beta function, Welch's t-test, step drift."""
import math

import numpy as np
import pytest

from nin_multi.stats import (betainc, first_exceeding, largest_per_epoch, mean_std, relative_difference,
                             t_critical, t_two_sided_p, welch)


def test_incomplete_beta_known_values():
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248, rel=1e-12)  # 6x^2(1/2 - 2x/3 + x^2/4)... = 0.5248
    assert betainc(1, 1, 0.3) == pytest.approx(0.3, rel=1e-13)      # uniform
    assert betainc(0.5, 0.5, 0.25) == pytest.approx(2 / math.pi * math.asin(0.5), rel=1e-12)  # arcsine
    for a, b, x in ((0.7, 4.0, 0.9), (30.0, 2.5, 0.2), (5.0, 0.5, 0.999)):  # both sides of the switch
        assert betainc(a, b, x) + betainc(b, a, 1 - x) == pytest.approx(1.0, abs=1e-13)
    assert betainc(2, 3, 0.0) == 0.0 and betainc(2, 3, 1.0) == 1.0
    with pytest.raises(ValueError):
        betainc(0, 1, 0.5)


def test_t_distribution_against_closed_forms():
    assert t_two_sided_p(2.0, 10) == pytest.approx(0.0734, abs=5e-5)  # tables: t=2.0, df=10
    for t in (0.0, 0.3, 1.0, 3.0, 12.706, -40.0):
        # df=1 is the Cauchy distribution; df=2 and df=4 have closed forms too.
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, rel=1e-11, abs=1e-15)
        assert t_two_sided_p(t, 2) == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-11, abs=1e-15)
        x = abs(t) / math.sqrt(4 + t * t)
        assert t_two_sided_p(t, 4) == pytest.approx(1 - x * (1.5 - 0.5 * x * x), rel=1e-11, abs=1e-15)
    assert t_two_sided_p(1.959964, 1e7) == pytest.approx(0.05, rel=1e-5)  # df -> infinity: the normal
    assert t_critical(10) == pytest.approx(2.228139, rel=1e-6) and t_critical(1) == pytest.approx(12.7062, rel=1e-5)
    assert t_two_sided_p(math.inf, 3) == 0.0 and math.isnan(t_two_sided_p(1.0, 0))


def test_welch_t_test():
    # Equal spreads and sizes: Welch's t is Student's, with df = 2 (n - 1).
    w = welch([1, 2, 3], [4, 5, 6])
    assert w.difference == -3 and w.t == pytest.approx(-3 / math.sqrt(2 / 3)) and w.df == pytest.approx(4)
    x = abs(w.t) / math.sqrt(4 + w.t ** 2)
    assert w.p == pytest.approx(1 - x * (1.5 - 0.5 * x * x), rel=1e-11)
    assert w.smallest_significant() == pytest.approx(t_critical(4) * math.sqrt(2 / 3))
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
