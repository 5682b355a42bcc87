"""Conformal plots: compute with ``prepare_*`` (dataclasses of arrays), draw with ``plot_*(data, ax=None)``.

matplotlib is imported inside the plotting functions only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from calib.conformal.metrics import class_conditional_coverage, coverage, size_histogram
from calib.conformal.quantile import conformal_rank

__all__ = ["CoverageCurveData", "prepare_coverage_curve", "plot_coverage_curve", "plot_set_size_histogram",
           "plot_class_coverage"]


@dataclasses.dataclass(frozen=True)
class CoverageCurveData:
    """Empirical test coverage per alpha, with the exact finite-sample band of the coverage law.

    ``band_low``/``band_high``: central ``level`` interval of the test coverage under the
    BetaBinomial(n_test, r, n + 1 - r) law (r = ceil((n+1)(1-alpha))); ``expected`` = r / (n + 1).
    """

    alphas: np.ndarray
    coverage: np.ndarray
    expected: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    n_calibration: int
    n_test: int
    level: float


def prepare_coverage_curve(predictor_factory, cal_probs, cal_labels, test_probs, test_labels, *, alphas=None,
                           level=0.95, cal_groups=None, test_groups=None):
    """Fit ``predictor_factory(alpha_list)`` once with all alphas; test coverage per alpha and the band."""
    from scipy import stats

    alphas = np.asarray(alphas if alphas is not None else np.linspace(0.02, 0.3, 15), dtype=np.float64)
    pred = predictor_factory([float(a) for a in alphas]).fit(cal_probs, cal_labels, groups=cal_groups)
    sets = pred.predict_set(test_probs, groups=test_groups)
    n, m = int(np.asarray(cal_labels).shape[0]), int(np.asarray(test_labels).shape[0])
    cov = np.array([coverage(sets[:, :, j], test_labels) for j in range(alphas.size)])
    lo, hi, ex = [], [], []
    for a in alphas:
        r = conformal_rank(n, a)
        if r > n:
            lo.append(1.0), hi.append(1.0), ex.append(1.0)
            continue
        law = stats.betabinom(m, r, n + 1 - r)
        lo.append(law.ppf((1 - level) / 2) / m), hi.append(law.ppf((1 + level) / 2) / m), ex.append(r / (n + 1))
    return CoverageCurveData(alphas, cov, np.array(ex), np.array(lo), np.array(hi), n, m, level)


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 4))
    return ax


def plot_coverage_curve(data: CoverageCurveData, *, ax=None, label="empirical"):
    """Coverage vs alpha, the ``1 - alpha`` line and the finite-sample band; returns the ax."""
    ax = _axes(ax)
    ax.fill_between(data.alphas, data.band_low, data.band_high, alpha=0.25, color="C0",
                    label=f"{int(data.level * 100)}% band (BetaBinomial, n={data.n_calibration}, m={data.n_test})")
    ax.plot(data.alphas, 1 - data.alphas, "k--", lw=1, label="1 - alpha")
    ax.plot(data.alphas, data.expected, color="C0", lw=1, label="ceil((n+1)(1-a))/(n+1)")
    ax.plot(data.alphas, data.coverage, "o", color="C3", ms=4, label=label)
    ax.set_xlabel("alpha")
    ax.set_ylabel("test coverage")
    ax.legend(fontsize=7)
    return ax


def plot_set_size_histogram(sets, *, ax=None, max_size=None):
    """Bar chart of set sizes (counts of 0..k); returns the ax."""
    ax = _axes(ax)
    hist = size_histogram(sets)
    last = int(np.max(np.flatnonzero(hist))) if max_size is None else max_size
    ax.bar(np.arange(last + 1), hist[:last + 1], color="C0")
    ax.set_xlabel("set size")
    ax.set_ylabel("count")
    return ax


def plot_class_coverage(sets, labels, alpha, *, ax=None):
    """Per-class coverage (sorted) against ``1 - alpha``; returns the ax."""
    ax = _axes(ax)
    cc = class_conditional_coverage(sets, labels)
    cc = np.sort(cc[~np.isnan(cc)])
    ax.plot(np.arange(cc.size), cc, "o-", ms=3, color="C0", label="class coverage (sorted)")
    ax.axhline(1 - alpha, color="k", ls="--", lw=1, label="1 - alpha")
    ax.set_xlabel("class rank")
    ax.set_ylabel("coverage")
    ax.legend(fontsize=7)
    return ax
