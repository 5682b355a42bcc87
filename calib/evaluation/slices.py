"""Silent-failure slice finder: where does a routing policy answer wrongly more often than it promised?

Per slice (each true class, and each ``groups`` value when given): size, accuracy, ECE (top-label,
equal-width bins), coverage (share answered), silent-failure rate (answered and wrong) and escalation
rate. Each slice is tested with a one-sided exact binomial test of H0: silent-failure rate <= target
(p = P(Binomial(n_s, target) >= k_s), :func:`calib.stats.binom_greater_pvalue`); the p-values of all slices are Holm-adjusted (Holm 1979, "A simple
sequentially rejective multiple test procedure") and slices with adjusted p <= alpha are flagged. Rows are
sorted by harm: excess silent failures k_s - target * n_s, largest first.
"""

from __future__ import annotations

import numpy as np

from calib._validation import as_array, check_fraction, check_positive_int, check_probs_labels
from calib.evaluation.product_metrics import check_actions
from calib.evaluation.set_metrics import check_groups
from calib.metrics import _bin_index
from calib.stats import binom_greater_pvalue, holm_adjust  # holm_adjust re-exported: its home is calib.stats

__all__ = ["holm_adjust", "silent_failure_slices", "slices_from_rows"]


def silent_failure_slices(probs, labels, actions, *, target, groups=None, alpha=0.05, n_bins=15, class_names=None):
    """Table of slices (list of dicts, sorted by harm) for a routing ``actions`` (0 answer, 1 escalate, 2 fallback).

    Parameters
    ----------
    probs : ndarray (n, k)     calibrated probabilities
    labels : ndarray (n,)
    actions : ndarray (n,)
    target : float in (0, 1)   silent-failure rate each slice should stay under
    groups : ndarray (n,), optional
    alpha : float in (0, 1), default 0.05   family-wise level of the Holm-corrected tests

    >>> p = np.array([[0.9, 0.1]] * 10 + [[0.2, 0.8]] * 10)
    >>> y = np.array([0] * 10 + [0] * 5 + [1] * 5)
    >>> rows = silent_failure_slices(p, y, np.zeros(20, int), target=0.05)
    >>> [(r["slice"], r["silent_failures"]) for r in rows]
    [('0', 5), ('1', 0)]
    """
    p, y = check_probs_labels(probs, labels)
    target = check_fraction(target, "target")
    alpha = check_fraction(alpha, "alpha")
    n_bins = check_positive_int(n_bins, "n_bins")
    n, k = p.shape
    a = check_actions(actions, n)
    if class_names is not None:
        if isinstance(class_names, str) or not hasattr(class_names, "__len__") or len(class_names) != k:
            got = f"length {len(class_names)}" if hasattr(class_names, "__len__") else type(class_names).__name__
            raise ValueError(f"Expected class_names with {k} entries (one per column of probs), got {got}.")
    pred = p.argmax(axis=1)
    conf = p[np.arange(n), pred]
    g = None if groups is None else check_groups(groups, n, length_of="probs")
    return slices_from_rows(conf, pred, y, a, k, target=target, groups=g, alpha=alpha, n_bins=n_bins,
                            class_names=class_names)


def slices_from_rows(conf, pred, labels, actions, n_classes, *, target, groups=None, alpha=0.05, n_bins=15,
                     class_names=None):
    """:func:`silent_failure_slices` from each row's top-label confidence ``conf`` and prediction ``pred``
    (checked arrays: the entry point of the out-of-core pipeline, which keeps per-row vectors, never (n, k))."""
    conf = np.asarray(conf).astype(np.float64)
    y = np.asarray(labels)
    a = np.asarray(actions)
    k = int(n_classes)
    hit = pred == y
    answered = a == 0
    silent = answered & ~hit
    bins = _bin_index(conf, n_bins, "width")
    kinds = [("class", y, [str(c) for c in range(k)] if class_names is None else list(class_names))]
    if groups is not None:
        uniq, gi = np.unique(groups, return_inverse=True)
        kinds.append(("group", gi, [str(u) for u in uniq]))
    rows = []
    for kind, idx, names in kinds:
        m = len(names)
        size = np.bincount(idx, minlength=m)
        # ECE per slice from one (slice, bin) histogram
        cell = idx * n_bins + bins
        sconf = np.bincount(cell, weights=conf, minlength=m * n_bins).reshape(m, n_bins)
        shit = np.bincount(cell, weights=hit, minlength=m * n_bins).reshape(m, n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            ece = np.abs(shit - sconf).sum(axis=1) / size
            stats = {
                "accuracy": np.bincount(idx, weights=hit, minlength=m) / size,
                "coverage": np.bincount(idx, weights=answered, minlength=m) / size,
                "escalation_rate": np.bincount(idx, weights=a == 1, minlength=m) / size,
                "silent_failure_rate": np.bincount(idx, weights=silent, minlength=m) / size,
            }
        n_silent = np.bincount(idx, weights=silent, minlength=m).astype(np.int64)
        pval = np.atleast_1d(binom_greater_pvalue(n_silent, size, target))
        for j in range(m):
            if size[j] == 0:
                continue
            rows.append({"slice_type": kind, "slice": names[j], "n": int(size[j]), "ece": float(ece[j]),
                         **{key: float(v[j]) for key, v in stats.items()}, "silent_failures": int(n_silent[j]),
                         "excess_silent_failures": float(n_silent[j] - target * size[j]), "p_value": float(pval[j])})
    adj = holm_adjust(np.array([r["p_value"] for r in rows]))
    for r, q in zip(rows, adj):
        r["p_holm"] = float(q)
        r["flagged"] = bool(q <= alpha)
    rows.sort(key=lambda r: -r["excess_silent_failures"])
    return rows
