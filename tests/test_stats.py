"""calib.stats: the exact tests behind every flag, against scipy computed here, and their bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as ss

from calib import stats


def test_pvalues_equal_scipy_laws():
    k, n = np.array([0, 3, 10, 47]), np.array([5, 10, 10, 1000])
    np.testing.assert_allclose(stats.binom_greater_pvalue(k, n, 0.05), [1.0] + [ss.binomtest(int(a), int(b), 0.05,
                               alternative="greater").pvalue for a, b in zip(k[1:], n[1:])], rtol=1e-12)
    np.testing.assert_allclose(stats.binom_less_pvalue(k, n, 0.9), [ss.binomtest(int(a), int(b), 0.9,
                               alternative="less").pvalue for a, b in zip(k, n)], rtol=1e-12)
    assert stats.betabinom_less_pvalue(85, 100, 90, 10) == pytest.approx(ss.betabinom(100, 90, 10).cdf(85), rel=1e-12)
    assert stats.binom_greater_pvalue(0, 0, 0.1) == 1.0 and stats.betabinom_less_pvalue(0, 0, 1, 1) == 1.0


def test_holm_equals_the_step_down_rule_written_out():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001])
    order = np.argsort(p)
    want, running = np.empty(5), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (5 - rank) * p[i]))
        want[i] = running
    np.testing.assert_allclose(stats.holm_adjust(p), want)


def test_clopper_pearson_equals_the_beta_quantiles_and_covers():
    lo, hi = stats.clopper_pearson(5, 100, level=0.9)
    assert lo == pytest.approx(ss.beta.ppf(0.05, 5, 96)) and hi == pytest.approx(ss.beta.ppf(0.95, 6, 95))
    assert stats.clopper_pearson(0, 10)[0] == 0.0 and stats.clopper_pearson(10, 10)[1] == 1.0
    assert stats.clopper_pearson(0, 0) == (0.0, 1.0)
    # exact intervals cover at least their level: P(lo <= 0.3 <= hi) over Binomial(40, 0.3), computed exactly
    ks = np.arange(41)
    covered = [stats.clopper_pearson(int(k), 40)[0] <= 0.3 <= stats.clopper_pearson(int(k), 40)[1] for k in ks]
    assert float(ss.binom.pmf(ks, 40, 0.3)[covered].sum()) >= 0.95


@pytest.mark.parametrize("call, err, match", [
    (lambda: stats.binom_greater_pvalue(11, 10, 0.1), ValueError, r"0 <= k <= n"),
    (lambda: stats.binom_greater_pvalue(-1, 10, 0.1), ValueError, r"0 <= k <= n"),
    (lambda: stats.binom_greater_pvalue(1.5, 10, 0.1), TypeError, r"whole counts"),
    (lambda: stats.binom_less_pvalue(np.nan, 10, 0.1), TypeError, r"whole counts"),
    (lambda: stats.binom_less_pvalue("3", 10, 0.1), TypeError, r"whole counts"),
    (lambda: stats.binom_greater_pvalue(1, 10, 1.5), ValueError, r"p0"),
    (lambda: stats.binom_less_pvalue(1, 10, 0.0), ValueError, r"p0"),
    (lambda: stats.betabinom_less_pvalue(1, 10, 0, 1), ValueError, r"a, b > 0"),
    (lambda: stats.betabinom_less_pvalue(1, 10, 1, np.inf), ValueError, r"a, b > 0"),
    (lambda: stats.holm_adjust([0.1, np.nan]), ValueError, r"pvalues in \[0, 1\]"),
    (lambda: stats.holm_adjust([0.1, 1.2]), ValueError, r"pvalues in \[0, 1\]"),
    (lambda: stats.holm_adjust([[0.1]]), ValueError, r"shape \(m,\)"),
    (lambda: stats.holm_adjust([True, False]), TypeError, r"real numbers"),
    (lambda: stats.clopper_pearson(3, 2), ValueError, r"0 <= k <= n"),
    (lambda: stats.clopper_pearson(1, 10, level=1.0), ValueError, r"level"),
])
def test_bad_input_names_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call()
