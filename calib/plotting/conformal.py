"""Conformal plots: compute with ``prepare_*`` (frozen dataclasses of arrays), draw with
``plot_*(data, ax=None)``.

matplotlib is imported inside the plotting functions only.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from calib._validation import check_binary, check_fraction, check_labels
from calib.conformal.quantile import conformal_rank
from calib.conformal.split import SetSizeWarning
from calib.plotting import axes

__all__ = ["CoverageCurveData", "prepare_coverage_curve", "coverage_band", "plot_coverage_curve", "SetSizeData",
           "prepare_set_sizes", "plot_set_size_histogram", "ClassCoverageData", "prepare_class_coverage",
           "prepare_class_coverage_rows",
           "plot_class_coverage"]

_SIZE = (5, 4)


def _sets(sets, name="sets"):
    s = check_binary(sets, name)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] < 2:
        raise ValueError(f"Expected {name} of shape (n_samples, n_classes) with n >= 1 and k >= 2, got shape "
                         f"{s.shape}.")
    return s


def _hits(sets, labels):
    """Whether each row's label is in its set (bool (n,))."""
    sets = _sets(sets)
    labels = check_labels(labels, n_samples=sets.shape[0], n_classes=sets.shape[1], rows_of="sets")
    return sets[np.arange(sets.shape[0]), labels]


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
    alphas = np.asarray(alphas if alphas is not None else np.linspace(0.02, 0.3, 15), dtype=np.float64)
    with warnings.catch_warnings():
        # the curve sweeps alpha down to 0.02 on purpose: set-size warnings belong to the configured alpha, whose
        # own fit (the conformal stage) reports them
        warnings.simplefilter("ignore", SetSizeWarning)
        pred = predictor_factory([float(a) for a in alphas]).fit(cal_probs, cal_labels, groups=cal_groups)
    sets = pred.predict_set(test_probs, groups=test_groups)
    n, m = int(np.asarray(cal_labels).shape[0]), int(np.asarray(test_labels).shape[0])
    cov = np.array([float(_hits(sets[:, :, j], test_labels).mean()) for j in range(alphas.size)])
    return coverage_band(alphas, cov, n, m, level)


def coverage_band(alphas, coverage, n_calibration, n_test, level=0.95):
    """:class:`CoverageCurveData` from the test coverage at each alpha: the expected split-conformal coverage
    ``r / (n + 1)`` and the central ``level`` band of its BetaBinomial(m, r, n + 1 - r) law (``r`` the conformal
    rank; 1 where ``r > n``). The out-of-core pipeline calls it with coverage counted chunk by chunk."""
    from scipy import stats

    n, m = int(n_calibration), int(n_test)
    lo, hi, ex = [], [], []
    for a in alphas:
        r = conformal_rank(n, a)
        if r > n:
            lo.append(1.0), hi.append(1.0), ex.append(1.0)
            continue
        law = stats.betabinom(m, r, n + 1 - r)
        lo.append(law.ppf((1 - level) / 2) / m), hi.append(law.ppf((1 + level) / 2) / m), ex.append(r / (n + 1))
    return CoverageCurveData(np.asarray(alphas, dtype=np.float64), np.asarray(coverage, dtype=np.float64),
                             np.array(ex), np.array(lo), np.array(hi), n, m, level)


def plot_coverage_curve(data: CoverageCurveData, *, ax=None, label="empirical"):
    """Coverage vs alpha, the ``1 - alpha`` line and the finite-sample band; returns the ax."""
    ax = axes(ax, size=_SIZE)
    ax.fill_between(data.alphas, data.band_low, data.band_high, alpha=0.25, color="C0",
                    label=f"{int(data.level * 100)}% band (BetaBinomial, n={data.n_calibration}, m={data.n_test})")
    ax.plot(data.alphas, 1 - data.alphas, "k--", lw=1, label="1 - alpha")
    ax.plot(data.alphas, data.expected, color="C0", lw=1, label="ceil((n+1)(1-a))/(n+1)")
    ax.plot(data.alphas, data.coverage, "o", color="C3", ms=4, label=label)
    ax.set_xlabel("alpha")
    ax.set_ylabel("test coverage")
    ax.legend(fontsize=7)
    return ax


@dataclasses.dataclass(frozen=True)
class SetSizeData:
    """Counts of prediction-set sizes 0..k (int64 (k + 1,))."""

    histogram: np.ndarray


def prepare_set_sizes(sets) -> SetSizeData:
    """Histogram of set sizes of a bool (n, k) ``sets``.

    >>> prepare_set_sizes(np.array([[True, False], [True, True]])).histogram.tolist()
    [0, 1, 1]
    """
    sets = _sets(sets)
    return SetSizeData(np.bincount(sets.sum(axis=1, dtype=np.int64), minlength=sets.shape[1] + 1))


def plot_set_size_histogram(data, *, ax=None, max_size=None):
    """Bar chart of set sizes (counts of 0..k) from :class:`SetSizeData` (or a bool sets array); returns the ax."""
    if not isinstance(data, SetSizeData):
        data = prepare_set_sizes(data)
    ax = axes(ax, size=_SIZE)
    hist = data.histogram
    last = int(np.max(np.flatnonzero(hist))) if max_size is None else max_size
    ax.bar(np.arange(last + 1), hist[:last + 1], color="C0")
    ax.set_xlabel("set size")
    ax.set_ylabel("count")
    return ax


@dataclasses.dataclass(frozen=True)
class ClassCoverageData:
    """Coverage of each class present in the labels, sorted ascending, and the target ``1 - alpha``.

    ``classes``: the class id of each point; ``p_holm``: the Holm-adjusted p-value of the exact test of H0
    "coverage of the class >= 1 - alpha"; ``flagged``: ``p_holm <= level`` (the classes a test flags, not the
    points below the line: a class-valid procedure puts about half of its classes below ``1 - alpha``).
    """

    coverage: np.ndarray
    alpha: float
    classes: np.ndarray = None
    p_holm: np.ndarray = None
    flagged: np.ndarray = None
    level: float = 0.05


def prepare_class_coverage(sets, labels, alpha, *, p_holm=None, level=0.05) -> ClassCoverageData:
    """Per-class coverage (classes absent from ``labels`` dropped), sorted, with the classes a test flags.

    ``p_holm`` (k,): Holm-adjusted p-values of the per-class coverage tests, as computed for the predictor's
    law by :func:`calib.evaluation.set_metrics.class_coverage_pvalues` (the conformal stage passes them);
    None: the binomial test given these sets, ``P(Binomial(m_c, 1 - alpha) <= covered_c)``, Holm-adjusted.

    >>> prepare_class_coverage(np.array([[True, False], [True, True], [False, True]]), np.array([0, 1, 0]),
    ...                        0.1).coverage.tolist()
    [0.5, 1.0]
    """
    hits = _hits(sets, labels)
    return prepare_class_coverage_rows(hits, labels, np.shape(sets)[1], alpha, p_holm=p_holm, level=level)


def prepare_class_coverage_rows(hits, labels, n_classes, alpha, *, p_holm=None, level=0.05) -> ClassCoverageData:
    """:func:`prepare_class_coverage` from each row's "label in the set" (``hits``, bool (n,)) and the number of
    classes: what an out-of-core run keeps instead of the (n, k) sets."""
    alpha = check_fraction(alpha, "alpha")
    level = check_fraction(level, "level")
    hits = check_binary(np.asarray(hits), "hits")
    labels = np.asarray(labels).astype(np.int64)
    k = int(n_classes)
    counts = np.bincount(labels, minlength=k)
    covered = np.bincount(labels, weights=hits, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        cc = np.where(counts > 0, covered / np.maximum(counts, 1), np.nan)
    present = np.flatnonzero(counts > 0)
    if p_holm is None:
        from calib.stats import binom_less_pvalue, holm_adjust

        adj = np.full(k, np.nan)
        adj[present] = holm_adjust(np.atleast_1d(binom_less_pvalue(covered[present].round().astype(np.int64),
                                                                    counts[present], 1.0 - alpha)))
    else:
        adj = np.asarray(p_holm, dtype=np.float64)
        if adj.shape != (k,) or not np.all((adj[present] >= 0) & (adj[present] <= 1)):
            raise ValueError(f"Expected p_holm of shape ({k},) (one per class) with values in [0, 1] for the "
                             f"classes present, got shape {adj.shape}.")
    order = present[np.argsort(cc[present], kind="stable")]
    return ClassCoverageData(cc[order], alpha, order, adj[order], adj[order] <= level, level)


def plot_class_coverage(data, labels=None, alpha=None, *, ax=None, max_labels=10):
    """Per-class coverage (sorted) against ``1 - alpha``, the classes flagged by the Holm-corrected tests in
    red with their class id (up to ``max_labels`` names), from :class:`ClassCoverageData` (or ``sets,
    labels, alpha``); returns the ax."""
    if not isinstance(data, ClassCoverageData):
        data = prepare_class_coverage(data, labels, alpha)
    ax = axes(ax, size=_SIZE)
    cc = data.coverage
    x = np.arange(cc.size)
    ax.plot(x, cc, "o-", ms=3, color="C0", label="class coverage (sorted)")
    if data.flagged is not None:
        flagged = np.flatnonzero(data.flagged)
        ax.plot(x[flagged], cc[flagged], "o", ms=5, color="C3",
                label=f"flagged: Holm p <= {data.level:g} ({flagged.size})")
        for j in flagged[:max_labels]:
            ax.annotate(str(data.classes[j]), (x[j], cc[j]), textcoords="offset points", xytext=(3, -8),
                        fontsize=6, color="C3")
    ax.axhline(1 - data.alpha, color="k", ls="--", lw=1, label="1 - alpha")
    ax.set_xlabel("class rank")
    ax.set_ylabel("coverage")
    ax.legend(fontsize=7)
    return ax
