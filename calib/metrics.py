"""Calibration metrics on probabilities: pure functions returning floats.

Conventions (stated because published tables differ):

* ``brier_score`` is the mean over samples of the sum over classes of (p_c - 1[y = c])^2 (range
  [0, 2]). Kull et al. 2019 tabulate the mean over all n*k entries: divide by k to compare.
* ``expected_calibration_error`` is top-label ECE, reported as a fraction. Equal-width bins are
  ``(lo, hi]`` over [0, 1] (a confidence of exactly 0 joins the first bin), as in Guo et al. 2017 and
  netcal; equal-mass bins hold ``n // n_bins`` or one more samples each, in order of confidence.
* ``classwise_ece`` is the mean over classes of the per-class ECE of p_c against 1[y = c]. Kull et al.
  2019 tabulate the **sum** over classes with ``np.digitize`` bins: use ``reduction="sum",
  binning="digitize"`` to reproduce their numbers.
* ``negative_log_likelihood`` clips p_y at 1e-15 (as scikit-learn's ``log_loss`` did up to 1.4).

Accumulation is in float64 whatever the input precision; large inputs are processed in row chunks.
"""

from __future__ import annotations

import numpy as np

from calib import _chunks as chunking
from calib._validation import as_array, check_binary, check_choice, check_positive_int, check_probs_labels

__all__ = [
    "accuracy",
    "negative_log_likelihood",
    "brier_score",
    "expected_calibration_error",
    "maximum_calibration_error",
    "classwise_ece",
    "calibration_bins",
    "summary",
    "BINNINGS",
]

BINNINGS = ("width", "mass", "digitize")
_NLL_CLIP = 1e-15


def _chunks(n, k):
    step = chunking.rows_per_chunk(k, entries=chunking.REDUCE)
    return range(0, n, step), step


def accuracy(probs, labels):
    """Share of rows whose argmax equals the label.

    >>> accuracy(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]))
    0.5
    """
    _, y, pred = check_probs_labels(probs, labels, return_argmax=True)
    return float(np.mean(pred == y))


def negative_log_likelihood(probs, labels):
    """Mean of ``-log p_y`` (natural log), p_y clipped at 1e-15.

    >>> round(negative_log_likelihood(np.array([[0.5, 0.5], [0.25, 0.75]]), np.array([0, 1])), 6)
    0.490415
    """
    return _nll(*check_probs_labels(probs, labels))


def _nll(p, y):
    py = np.take_along_axis(p, y[:, None], axis=1)[:, 0].astype(np.float64)
    return float(-np.mean(np.log(np.maximum(py, _NLL_CLIP))))


def brier_score(probs, labels):
    """Mean over samples of ``sum_c (p_c - 1[y = c])^2``.

    >>> brier_score(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([0, 0]))
    0.25
    """
    return _brier(*check_probs_labels(probs, labels))


def _brier(p, y):
    n, k = p.shape
    starts, step = _chunks(n, k)
    total = 0.0
    for s in starts:
        block = p[s:s + step]
        sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        py = np.take_along_axis(block, y[s:s + step, None], axis=1)[:, 0].astype(np.float64)
        total += float(np.sum(sq - 2.0 * py + 1.0))
    return total / n


def _bin_index(values, n_bins, binning):
    """Bin of each value in [0, 1]: 'width' (lo, hi], 'mass' equal counts, 'digitize' Kull et al."""
    if binning == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        idx = np.searchsorted(edges, values, side="left") - 1
        return np.clip(idx, 0, n_bins - 1)
    if binning == "digitize":
        # np.digitize(p, linspace(0, 1, n_bins)) - 1: n_bins - 1 bins [lo, hi) of width 1/(n_bins - 1),
        # plus a last bin holding p == 1 exactly.
        return np.digitize(values, np.linspace(0.0, 1.0, n_bins)) - 1
    order = np.argsort(values, kind="stable")
    idx = np.empty(values.shape[0], dtype=np.int64)
    idx[order] = (np.arange(values.shape[0]) * n_bins) // values.shape[0]
    return idx


_CONF_SLACK = 1e-3  # probabilities of rows summing to 1 within check_probs' tolerance may exceed 1 by this


def _check_binned(confidence, correct, conf_name="confidence", hit_name="correct"):
    """``confidence`` (n,) finite in [0, 1], n >= 1, and ``correct`` (n,) booleans or 0/1 integers."""
    c = as_array(confidence, conf_name)
    if c.dtype.kind not in "biuf":
        raise TypeError(f"Expected {conf_name} as real numbers in [0, 1], got dtype {c.dtype}.")
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"Expected {conf_name} of shape (n_samples,) with n >= 1, got shape {c.shape}.")
    c = np.asarray(c, dtype=np.float64)
    bad = ~(np.isfinite(c) & (c >= -_CONF_SLACK) & (c <= 1 + _CONF_SLACK))
    if bad.any():
        raise ValueError(f"Expected {conf_name} in [0, 1], got {int(bad.sum())} entries outside it or NaN "
                         f"(e.g. {float(c[bad][0])!r}).")
    h = as_array(correct, hit_name)
    if h.shape != c.shape:
        raise ValueError(f"Expected {hit_name} of length {c.size} (one per {conf_name}), got shape {h.shape}.")
    return c, check_binary(h, hit_name)


def calibration_bins(confidence, correct, *, n_bins=15, binning="width"):
    """Per-bin counts, mean confidence and accuracy for a reliability diagram or an ECE.

    Returns ``(count, mean_confidence, accuracy)``, each of shape (n_bins,); empty bins hold NaN means.

    >>> count, conf, acc = calibration_bins(np.array([0.9, 0.6]), np.array([1, 0]), n_bins=2)
    >>> count.tolist(), conf.tolist(), acc.tolist()
    ([0, 2], [nan, 0.75], [nan, 0.5])
    """
    n_bins = check_positive_int(n_bins, "n_bins")
    check_choice(binning, "binning", BINNINGS)
    conf, hit = _check_binned(confidence, correct)
    idx = _bin_index(conf, n_bins, binning)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=hit, minlength=n_bins) / count
    return count, mean_conf, acc


def _top_label(probs, labels):
    p, y, pred = check_probs_labels(probs, labels, return_argmax=True)
    return _top_from(p, y, pred)


def _top_from(p, y, pred):
    conf = np.take_along_axis(p, pred[:, None], axis=1)[:, 0]
    return conf, pred == y


def _check_bin_options(n_bins, binning):
    return check_positive_int(n_bins, "n_bins"), check_choice(binning, "binning", BINNINGS)


def expected_calibration_error(probs, labels, *, n_bins=15, binning="width"):
    """Top-label ECE: ``sum_b |acc_b - conf_b| * n_b / n`` over confidence bins.

    Parameters
    ----------
    probs : ndarray of shape (n_samples, n_classes)
    labels : ndarray of shape (n_samples,)
    n_bins : int, default 15
    binning : {"width", "mass", "digitize"}, default "width"
        Equal-width ``(lo, hi]`` bins, equal-mass bins, or Kull et al.'s ``np.digitize`` bins.

    >>> round(expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), n_bins=2), 6)
    0.25
    """
    n_bins, binning = _check_bin_options(n_bins, binning)
    conf, hit = _top_label(probs, labels)
    return _ece(conf, hit, n_bins, binning)


def _ece(conf, hit, n_bins, binning):
    count, mean_conf, acc = calibration_bins(conf, hit, n_bins=n_bins, binning=binning)
    filled = count > 0
    return float(np.sum(np.abs(acc[filled] - mean_conf[filled]) * count[filled]) / conf.shape[0])


def maximum_calibration_error(probs, labels, *, n_bins=15, binning="width"):
    """Top-label MCE: the largest ``|acc_b - conf_b|`` over non-empty bins.

    >>> maximum_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), n_bins=2)
    0.25
    """
    n_bins, binning = _check_bin_options(n_bins, binning)
    conf, hit = _top_label(probs, labels)
    return _mce(conf, hit, n_bins, binning)


def _mce(conf, hit, n_bins, binning):
    count, mean_conf, acc = calibration_bins(conf, hit, n_bins=n_bins, binning=binning)
    filled = count > 0
    return float(np.max(np.abs(acc[filled] - mean_conf[filled])))


def classwise_ece(probs, labels, *, n_bins=15, binning="width", reduction="mean"):
    """Classwise ECE: per class c, the ECE of p_c against 1[y = c]; averaged (or summed) over classes.

    ``reduction="sum", binning="digitize"`` reproduces the values tabulated by Kull et al. 2019.

    >>> p = np.array([[0.9, 0.1], [0.6, 0.4]])
    >>> round(classwise_ece(p, np.array([0, 1]), n_bins=2), 6)
    0.25
    """
    n_bins = check_positive_int(n_bins, "n_bins")
    check_choice(binning, "binning", BINNINGS)
    check_choice(reduction, "reduction", ("mean", "sum"))
    return _classwise(*check_probs_labels(probs, labels), n_bins, binning, reduction)


def _classwise(p, y, n_bins, binning, reduction):
    n, k = p.shape
    if binning == "mass":
        per_class = np.array([
            expected_calibration_error_binary(p[:, c], y == c, n_bins=n_bins, binning="mass") for c in range(k)
        ])
    else:
        n_slots = n_bins + (1 if binning == "digitize" else 0)
        diff = np.zeros(k * n_slots)
        count = np.zeros(k * n_slots)
        offset = np.arange(k) * n_slots
        starts, step = _chunks(n, k)
        for s in starts:
            block = p[s:s + step].astype(np.float64)
            idx = (_bin_index(block, n_bins, binning) + offset).ravel()
            onehot = np.zeros_like(block)
            np.put_along_axis(onehot, y[s:s + step, None], 1.0, axis=1)
            diff += np.bincount(idx, weights=(block - onehot).ravel(), minlength=k * n_slots)
            count += np.bincount(idx, minlength=k * n_slots)
        per_class = np.abs(diff).reshape(k, n_slots).sum(axis=1) / n
    return float(per_class.sum() if reduction == "sum" else per_class.mean())


def expected_calibration_error_binary(prob_positive, is_positive, *, n_bins=15, binning="width"):
    """ECE of a probability for one event against its 0/1 outcomes (the per-class term of classwise ECE).

    ``prob_positive`` (n,) in [0, 1]; ``is_positive`` (n,) booleans or 0/1 integers."""
    conf, hit = _check_binned(prob_positive, is_positive, "prob_positive", "is_positive")
    count, mean_conf, freq = calibration_bins(conf, hit, n_bins=n_bins, binning=binning)
    filled = count > 0
    return float(np.sum(np.abs(freq[filled] - mean_conf[filled]) * count[filled]) / conf.shape[0])


def summary(probs, labels, *, n_bins=15):
    """The standard metric dict: accuracy, nll, brier, ece, ece_mass, mce, classwise_ece."""
    n_bins = check_positive_int(n_bins, "n_bins")
    p, y, pred = check_probs_labels(probs, labels, return_argmax=True)  # validated once for all metrics
    conf, hit = _top_from(p, y, pred)
    return {
        "accuracy": float(np.mean(hit)),
        "nll": _nll(p, y),
        "brier": _brier(p, y),
        "ece": _ece(conf, hit, n_bins, "width"),
        "ece_mass": _ece(conf, hit, n_bins, "mass"),
        "mce": _mce(conf, hit, n_bins, "width"),
        "classwise_ece": _classwise(p, y, n_bins, "width", "mean"),
    }
