"""Metrics of prediction sets: coverage, sizes, conditional coverage. Pure numpy functions.

``sets`` is a bool array (n, k) (0/1 integers are accepted; floats are refused, a score is not a set);
``labels`` int (n,) in [0, k). Every function validates its arguments and names the one that is wrong.
"""

from __future__ import annotations

import numpy as np

from calib._validation import as_array, check_binary, check_fraction, check_group_ids, check_labels

__all__ = ["coverage", "set_sizes", "mean_set_size", "median_set_size", "size_histogram", "empty_rate",
           "singleton_rate", "size_stratified_coverage", "class_conditional_coverage", "class_coverage_summary",
           "group_coverage", "set_metrics", "check_sets", "check_groups"]


def check_sets(sets, name="sets"):
    """Prediction sets as a bool array (n, k), n >= 1, k >= 2; 0/1 integers are converted."""
    s = as_array(sets, name)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] < 2:
        raise ValueError(f"Expected {name} of shape (n_samples, n_classes) with n >= 1 and k >= 2, got shape "
                         f"{s.shape}.")
    return check_binary(s, name)


def _sets_labels(sets, labels):
    s = check_sets(sets)
    y = check_labels(labels, "labels", n_samples=s.shape[0], n_classes=s.shape[1])
    return s, y


def check_groups(groups, n, name="groups", length_of="sets"):
    """Group ids (n,): integers, strings, booleans or finite floats, never objects."""
    return check_group_ids(groups, n, name, length_of)


def _hits(sets, labels):
    s, y = _sets_labels(sets, labels)
    return s[np.arange(s.shape[0]), y]


def coverage(sets, labels):
    """Fraction of rows whose label is in the set.

    >>> coverage(np.array([[True, False], [True, True]]), np.array([1, 1]))
    0.5
    """
    return float(_hits(sets, labels).mean())


def set_sizes(sets):
    """Number of classes in each set, int64 (n,)."""
    return check_sets(sets).sum(axis=1, dtype=np.int64)


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
    s = check_sets(sets)
    return np.bincount(s.sum(axis=1, dtype=np.int64), minlength=s.shape[1] + 1)


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
    s, y = _sets_labels(sets, labels)
    return _size_stratified(s, y)


def _size_stratified(s, y):
    size = s.sum(axis=1, dtype=np.int64)
    hit = s[np.arange(s.shape[0]), y]
    counts = np.bincount(size)
    covered = np.bincount(size, weights=hit)
    return {int(v): (int(counts[v]), float(covered[v] / counts[v])) for v in np.flatnonzero(counts)}


def class_conditional_coverage(sets, labels, n_classes=None):
    """Coverage among rows of each true class, float (k,); NaN for classes absent from ``labels``.

    ``n_classes``, when given, must equal the number of columns of ``sets``.

    >>> class_conditional_coverage(np.array([[True, False], [True, True]]), np.array([0, 1])).tolist()
    [1.0, 1.0]
    """
    s, y = _sets_labels(sets, labels)
    if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer))
                                  or n_classes != s.shape[1]):
        raise ValueError(f"Expected n_classes equal to the {s.shape[1]} columns of sets (or None), got {n_classes!r}.")
    return _class_coverage(s, y)


def _class_coverage(s, y):
    k = s.shape[1]
    counts = np.bincount(y, minlength=k).astype(np.float64)
    covered = np.bincount(y, weights=s[np.arange(s.shape[0]), y], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, covered / np.maximum(counts, 1), np.nan)


def class_coverage_summary(sets, labels, alpha):
    """``{"min", "gap", "violating_classes", "per_class"}``: the worst class coverage, its shortfall
    ``max(0, 1 - alpha - min)`` and the classes covered below ``1 - alpha``.

    >>> class_coverage_summary(np.array([[True, False], [False, True]]), np.array([0, 0]), 0.1)["violating_classes"]
    [0]
    """
    s, y = _sets_labels(sets, labels)
    return _class_summary(s, y, check_fraction(alpha, "alpha"))


def _class_summary(s, y, alpha):
    cc = _class_coverage(s, y)
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
    s, y = _sets_labels(sets, labels)
    return _group_coverage(s, y, check_groups(groups, s.shape[0]))


def _group_coverage(s, y, g):
    values, inv = np.unique(g, return_inverse=True)
    hit = s[np.arange(s.shape[0]), y]
    counts = np.bincount(inv)
    covered = np.bincount(inv, weights=hit)
    return {str(v): (int(c), float(h / c)) for v, c, h in zip(values, counts, covered)}


def set_metrics(sets, labels, alpha, groups=None):
    """The metrics.json block of one alpha (JSON-able); every argument validated once."""
    s, y = _sets_labels(sets, labels)
    alpha = check_fraction(alpha, "alpha")
    g = None if groups is None else check_groups(groups, s.shape[0])
    size = s.sum(axis=1, dtype=np.int64)
    hist = np.bincount(size, minlength=s.shape[1] + 1)
    cls = _class_summary(s, y, alpha)
    out = {
        "coverage": float(s[np.arange(s.shape[0]), y].mean()),
        "mean_set_size": float(size.mean()),
        "median_set_size": float(np.median(size)),
        "singleton_rate": float((size == 1).mean()),
        "empty_rate": float((size == 0).mean()),
        "size_histogram": hist.tolist(),
        "size_stratified_coverage": {str(k): {"count": c, "coverage": v}
                                     for k, (c, v) in _size_stratified(s, y).items()},
        "min_class_coverage": cls["min"],
        "class_coverage_gap": cls["gap"],
        "violating_classes": cls["violating_classes"],
        "class_coverage": cls["per_class"],
    }
    if g is not None:
        out["group_coverage"] = {k: {"count": c, "coverage": v} for k, (c, v) in _group_coverage(s, y, g).items()}
    return out
