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
           "plot_class_coverage", "class_coverage_figure_size"]

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
                    label=f"{int(data.level * 100)}% band (BetaBinomial, n={data.n_calibration}, m={data.n_test})\n"
                          "exact for tie-free scores; ties, never-empty sets: above")
    ax.plot(data.alphas, 1 - data.alphas, "k--", lw=1, label="1 - alpha")
    ax.plot(data.alphas, data.expected, color="C0", lw=1, label="ceil((n+1)(1-a))/(n+1)")
    ax.plot(data.alphas, data.coverage, "o", color="k", ms=4, label=label)  # measured; red marks flags elsewhere
    ax.set_xlabel("alpha")
    ax.set_ylabel("test coverage")
    ax.legend(fontsize=7, loc="upper right")  # coverage falls from upper left to lower right: that corner is free
    return ax


@dataclasses.dataclass(frozen=True)
class SetSizeData:
    """Counts of prediction-set sizes 0..k (int64 (k + 1,)); ``mean``, ``median``, ``n`` and ``n_empty`` are
    computed from the counts.

    >>> d = SetSizeData(np.array([1, 2, 1]))
    >>> d.n, d.n_empty, d.mean, d.median
    (4, 1, 1.0, 1.0)
    """

    histogram: np.ndarray

    @property
    def n(self) -> int:
        return int(np.sum(self.histogram))

    @property
    def n_empty(self) -> int:
        return int(self.histogram[0])

    @property
    def mean(self) -> float:
        h = np.asarray(self.histogram, dtype=np.float64)
        return float(np.dot(np.arange(h.size), h) / h.sum()) if h.sum() > 0 else float("nan")

    @property
    def median(self) -> float:
        """The median set size (the mean of the two middle sizes for an even count, as ``np.median``)."""
        h = np.asarray(self.histogram, dtype=np.int64)
        n = int(h.sum())
        if n == 0:
            return float("nan")
        cum = np.cumsum(h)
        lo = int(np.searchsorted(cum, (n - 1) // 2 + 1))  # the size of the element of rank (n - 1) // 2
        hi = int(np.searchsorted(cum, n // 2 + 1))        # ... and of rank n // 2
        return (lo + hi) / 2.0


def prepare_set_sizes(sets) -> SetSizeData:
    """Histogram of set sizes of a bool (n, k) ``sets``.

    >>> prepare_set_sizes(np.array([[True, False], [True, True]])).histogram.tolist()
    [0, 1, 1]
    """
    sets = _sets(sets)
    return SetSizeData(np.bincount(sets.sum(axis=1, dtype=np.int64), minlength=sets.shape[1] + 1))


def plot_set_size_histogram(data, *, ax=None, max_size=None):
    """Bar chart of set sizes (counts of 0..k) from :class:`SetSizeData` (or a bool sets array), with size 0
    always on the axis and its count written (empty sets are abstentions a reader must see), and the mean and
    median set size as vertical lines; returns the ax."""
    from calib.plotting.style import COLORS

    if not isinstance(data, SetSizeData):
        data = prepare_set_sizes(data)
    ax = axes(ax, size=_SIZE)
    hist = np.asarray(data.histogram)
    nz = np.flatnonzero(hist)
    last = (int(nz.max()) if nz.size else 0) if max_size is None else int(max_size)
    last = max(last, 1)
    x = np.arange(last + 1)
    ax.bar(x, hist[:last + 1], color=COLORS["main"], label=f"sets (n={data.n})")
    share = data.n_empty / data.n if data.n else 0.0
    ax.bar([0], [hist[0]], color=COLORS["flagged"], label=f"empty: {data.n_empty} ({100 * share:.1f}%)")
    ax.annotate(f"{data.n_empty}", (0, hist[0]), textcoords="offset points", xytext=(0, 2), ha="center",
                fontsize=7, color=COLORS["flagged"])
    ax.axvline(data.mean, color=COLORS["reference"], ls="--", lw=1, label=f"mean {data.mean:.2f}")
    ax.axvline(data.median, color=COLORS["mean"], ls=":", lw=1.5, label=f"median {data.median:g}")
    step = max(1, int(np.ceil((last + 1) / 20)))
    ax.set_xticks(x[::step])
    ax.set_xlim(-0.6, last + 0.6)
    ax.set_xlabel("set size (0 = empty set)")
    ax.set_ylabel("count of test items")
    ax.legend()
    return ax


@dataclasses.dataclass(frozen=True)
class ClassCoverageData:
    """Coverage of each class present in the labels, sorted ascending, and the target ``1 - alpha``.

    ``classes``: the class id of each point; ``p_holm``: the Holm-adjusted p-value of the exact test of H0
    "coverage of the class >= 1 - alpha"; ``flagged``: ``p_holm <= level`` (the classes a test flags, not the
    points below the line: a class-valid procedure puts about half of its classes below ``1 - alpha``);
    ``class_names``: the name of every class id (all ``k``, not only those present; None: the ids are shown).
    """

    coverage: np.ndarray
    alpha: float
    classes: np.ndarray = None
    p_holm: np.ndarray = None
    flagged: np.ndarray = None
    level: float = 0.05
    class_names: tuple = None

    @property
    def names(self) -> tuple:
        """The label of each point: its class name, or its class id as text."""
        ids = range(self.coverage.size) if self.classes is None else self.classes.tolist()
        if self.class_names is None:
            return tuple(str(c) for c in ids)
        return tuple(str(self.class_names[c]) for c in ids)


def _check_class_names(class_names, k):
    if class_names is None:
        return None
    if isinstance(class_names, str) or not hasattr(class_names, "__len__") or len(class_names) != k:
        got = f"length {len(class_names)}" if hasattr(class_names, "__len__") and not isinstance(
            class_names, str) else f"{type(class_names).__name__} {class_names!r:.40}"
        raise ValueError(f"Expected class_names with {k} entries (one per class), got {got}.")
    return tuple(str(c) for c in class_names)


def class_coverage_figure_size(n_classes):
    """Width grows with the number of classes (0.28 inch a class up to 40 labelled classes), height fixed."""
    return (max(5.0, min(0.28 * int(n_classes), 0.28 * 40) + 1.5), 4.0)


def prepare_class_coverage(sets, labels, alpha, *, p_holm=None, level=0.05, class_names=None) -> ClassCoverageData:
    """Per-class coverage (classes absent from ``labels`` dropped), sorted, with the classes a test flags.

    ``p_holm`` (k,): Holm-adjusted p-values of the per-class coverage tests, as computed for the predictor's
    law by :func:`calib.evaluation.set_metrics.class_coverage_pvalues` (the conformal stage passes them);
    None: the binomial test given these sets, ``P(Binomial(m_c, 1 - alpha) <= covered_c)``, Holm-adjusted.
    ``class_names`` (k,): shown on the axis instead of the class ids.

    >>> prepare_class_coverage(np.array([[True, False], [True, True], [False, True]]), np.array([0, 1, 0]),
    ...                        0.1).coverage.tolist()
    [0.5, 1.0]
    """
    hits = _hits(sets, labels)
    return prepare_class_coverage_rows(hits, labels, np.shape(sets)[1], alpha, p_holm=p_holm, level=level,
                                       class_names=class_names)


def prepare_class_coverage_rows(hits, labels, n_classes, alpha, *, p_holm=None, level=0.05,
                                class_names=None) -> ClassCoverageData:
    """:func:`prepare_class_coverage` from each row's "label in the set" (``hits``, bool (n,)) and the number of
    classes: what an out-of-core run keeps instead of the (n, k) sets."""
    alpha = check_fraction(alpha, "alpha")
    level = check_fraction(level, "level")
    hits = check_binary(np.asarray(hits), "hits")
    labels = np.asarray(labels).astype(np.int64)
    k = int(n_classes)
    class_names = _check_class_names(class_names, k)
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
    return ClassCoverageData(cc[order], alpha, order, adj[order], adj[order] <= level, level, class_names)


def plot_class_coverage(data, labels=None, alpha=None, *, ax=None, max_labels=40):
    """Per-class coverage, one bar per class sorted from the lowest, each labelled with its class name (or id)
    on the x axis, against the ``1 - alpha`` line; the classes flagged by the Holm-corrected exact tests in red
    (bar and label), from :class:`ClassCoverageData` (or ``sets, labels, alpha``); returns the ax.

    With more than ``max_labels`` classes only the flagged classes and the lowest ``max_labels // 2`` carry
    a label (the axis says so)."""
    from calib.plotting.style import COLORS

    if not isinstance(data, ClassCoverageData):
        data = prepare_class_coverage(data, labels, alpha)
    cc = data.coverage
    ax = axes(ax, size=class_coverage_figure_size(cc.size))
    x = np.arange(cc.size)
    flagged = (np.zeros(cc.size, dtype=bool) if data.flagged is None else np.asarray(data.flagged, dtype=bool))
    colors = [COLORS["flagged"] if f else COLORS["main"] for f in flagged]
    ax.bar(x, cc, color=colors, width=0.8)
    from matplotlib.patches import Patch

    handles = [Patch(color=COLORS["main"], label="class coverage (test)")]
    if data.flagged is not None:
        handles.append(Patch(color=COLORS["flagged"],
                             label=f"flagged: Holm p <= {data.level:g} ({int(flagged.sum())})"))
    line = ax.axhline(1 - data.alpha, color=COLORS["reference"], ls="--", lw=1, label=f"1 - alpha = {1 - data.alpha:g}")
    handles.append(line)
    names = data.names
    if cc.size <= max_labels:
        shown = x
        ax.set_xlabel("class (sorted by test coverage)")
    else:
        shown = np.union1d(x[: max_labels // 2], x[flagged])
        ax.set_xlabel(f"class (sorted by test coverage; labelled: the lowest {max_labels // 2} and the flagged)")
    ax.set_xticks(shown)
    ax.set_xticklabels([names[i] for i in shown], rotation=90 if max(map(len, names), default=0) > 2 else 0,
                       fontsize=7)
    for tick, i in zip(ax.get_xticklabels(), shown):
        if flagged[i]:
            tick.set_color(COLORS["flagged"])
    low = float(np.nanmin(cc)) if cc.size else 0.0
    ax.set_ylim(max(0.0, min(low, 1 - data.alpha) - 0.1), 1.02)
    ax.set_xlim(-0.6, cc.size - 0.4)
    ax.set_ylabel("coverage of the class (test)")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return ax
