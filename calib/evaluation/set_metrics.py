"""Metrics of prediction sets: coverage, sizes, conditional coverage. Pure numpy functions.

``sets`` is a bool array (n, k); ``labels`` int (n,).
"""

from __future__ import annotations

import numpy as np

__all__ = ["coverage", "set_sizes", "mean_set_size", "median_set_size", "size_histogram", "empty_rate",
           "singleton_rate", "size_stratified_coverage", "class_conditional_coverage", "class_coverage_summary",
           "group_coverage", "set_metrics"]


def _hits(sets, labels):
    sets = np.asarray(sets, dtype=bool)
    labels = np.asarray(labels)
    return sets[np.arange(sets.shape[0]), labels]


def coverage(sets, labels):
    """Fraction of rows whose label is in the set.

    >>> coverage(np.array([[True, False], [True, True]]), np.array([1, 1]))
    0.5
    """
    return float(_hits(sets, labels).mean())


def set_sizes(sets):
    """Number of classes in each set, int64 (n,)."""
    return np.asarray(sets, dtype=bool).sum(axis=1, dtype=np.int64)


def mean_set_size(sets):
    """Mean number of classes per set.

    >>> mean_set_size(np.array([[True, False], [True, True]]))
    1.5
    """
    return float(set_sizes(sets).mean())


def median_set_size(sets):
    """Median number of classes per set.

    >>> median_set_size(np.array([[True, False], [True, True], [True, True]]))
    2.0
    """
    return float(np.median(set_sizes(sets)))


def size_histogram(sets):
    """Counts of set sizes 0..k, int64 (k + 1,).

    >>> size_histogram(np.array([[True, False], [True, True]])).tolist()
    [0, 1, 1]
    """
    sets = np.asarray(sets, dtype=bool)
    return np.bincount(set_sizes(sets), minlength=sets.shape[1] + 1)


def empty_rate(sets):
    """Fraction of empty sets.

    >>> empty_rate(np.array([[False, False], [True, True]]))
    0.5
    """
    return float((set_sizes(sets) == 0).mean())


def singleton_rate(sets):
    """Fraction of sets with exactly one class.

    >>> singleton_rate(np.array([[False, True], [True, True]]))
    0.5
    """
    return float((set_sizes(sets) == 1).mean())


def size_stratified_coverage(sets, labels):
    """``{size: (count, coverage)}`` over the set sizes that occur (Angelopoulos et al., 2021, SSCV).

    >>> size_stratified_coverage(np.array([[True, False], [True, True]]), np.array([1, 1]))
    {1: (1, 0.0), 2: (1, 1.0)}
    """
    size = set_sizes(sets)
    hit = _hits(sets, labels)
    counts = np.bincount(size)
    covered = np.bincount(size, weights=hit)
    return {int(s): (int(counts[s]), float(covered[s] / counts[s])) for s in np.flatnonzero(counts)}


def class_conditional_coverage(sets, labels, n_classes=None):
    """Coverage among rows of each true class, float (k,); NaN for classes absent from ``labels``.

    >>> class_conditional_coverage(np.array([[True, False], [True, True]]), np.array([0, 1])).tolist()
    [1.0, 1.0]
    """
    sets = np.asarray(sets, dtype=bool)
    k = sets.shape[1] if n_classes is None else n_classes
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    covered = np.bincount(labels, weights=_hits(sets, labels), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, covered / np.maximum(counts, 1), np.nan)


def class_coverage_summary(sets, labels, alpha):
    """``{"min", "gap", "violating_classes", "per_class"}``: the worst class coverage, its shortfall
    ``max(0, 1 - alpha - min)`` and the classes covered below ``1 - alpha``.

    >>> class_coverage_summary(np.array([[True, False], [False, True]]), np.array([0, 0]), 0.1)["violating_classes"]
    [0]
    """
    cc = class_conditional_coverage(sets, labels)
    present = ~np.isnan(cc)
    mn = float(np.min(cc[present]))
    return {"min": mn, "gap": max(0.0, 1.0 - alpha - mn),
            "violating_classes": np.flatnonzero(present & (cc < 1.0 - alpha)).tolist(),
            "per_class": [None if np.isnan(c) else float(c) for c in cc]}


def group_coverage(sets, labels, groups):
    """``{group: (count, coverage)}`` for each group value (keys as str).

    >>> group_coverage(np.array([[True, False], [True, True]]), np.array([1, 1]), np.array(["a", "b"]))
    {'a': (1, 0.0), 'b': (1, 1.0)}
    """
    g = np.asarray(groups)
    values, inv = np.unique(g, return_inverse=True)
    hit = _hits(sets, labels)
    counts = np.bincount(inv)
    covered = np.bincount(inv, weights=hit)
    return {str(v): (int(c), float(h / c)) for v, c, h in zip(values, counts, covered)}


def set_metrics(sets, labels, alpha, groups=None):
    """The metrics.json block of one alpha (JSON-able)."""
    hist = size_histogram(sets)
    cls = class_coverage_summary(sets, labels, alpha)
    out = {
        "coverage": coverage(sets, labels),
        "mean_set_size": mean_set_size(sets),
        "median_set_size": median_set_size(sets),
        "singleton_rate": singleton_rate(sets),
        "empty_rate": empty_rate(sets),
        "size_histogram": hist.tolist(),
        "size_stratified_coverage": {str(k): {"count": c, "coverage": v}
                                     for k, (c, v) in size_stratified_coverage(sets, labels).items()},
        "min_class_coverage": cls["min"],
        "class_coverage_gap": cls["gap"],
        "violating_classes": cls["violating_classes"],
        "class_coverage": cls["per_class"],
    }
    if groups is not None:
        out["group_coverage"] = {k: {"count": c, "coverage": v}
                                 for k, (c, v) in group_coverage(sets, labels, groups).items()}
    return out
