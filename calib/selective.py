"""Selective prediction: how the risk of the answered items falls as the model abstains on its least
confident items.

Pure numpy functions on a confidence score per item (higher = more confident) and a boolean
``correct`` per item. Any score works: calibrated max-probability, margin, negative entropy
(:func:`confidence_scores`) or minus the conformal set size (:func:`set_size_confidence`).

Ties in the confidence are broken *in expectation*: inside a block of equal scores the errors are
spread evenly, which is the mean over all random tie-breaks and makes every curve deterministic.

References: Geifman & El-Yaniv (2017), "Selective classification for deep neural networks" (risk–
coverage curve); Geifman, Uziel & El-Yaniv (2019), "Bias-reduced uncertainty estimation for deep neural
classifiers" (AURC, E-AURC); Traub et al. (2024), "Overcoming common flaws in the evaluation of
selective classification systems" (AUGRC).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from calib._validation import as_array, check_binary, check_choice, check_fraction, check_probs

__all__ = [
    "CONFIDENCES",
    "RiskCoverage",
    "confidence_domain",
    "confidence_scores",
    "set_size_confidence",
    "risk_coverage_curve",
    "aurc",
    "eaurc",
    "augrc",
    "selective_risk_at_coverage",
    "coverage_at_risk",
    "error_detection_auroc",
]

#: Confidence scores computable from probabilities alone (large = sure; the opposite of the
#: nonconformity scores of :mod:`calib.conformal.scores`).
CONFIDENCES = ("max_prob", "margin", "neg_entropy")


def confidence_scores(probs, confidence="max_prob"):
    """Confidence per item from probabilities (n, k): higher means more confident.

    ``max_prob`` = max_j p_j; ``margin`` = top-1 minus top-2 probability; ``neg_entropy`` =
    sum_j p_j log p_j (0 for a one-hot row). Returned in float64, shape (n,).

    >>> p = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]])
    >>> confidence_scores(p, "margin").round(3).tolist()
    [0.5, 0.0]
    """
    check_choice(confidence, "confidence", CONFIDENCES)
    return _confidence_scores(check_probs(probs), confidence)


def _confidence_scores(p, confidence, pred=None):
    """:func:`confidence_scores` of checked probabilities; ``pred`` (their argmax, when known) gives
    ``max_prob`` by one gather instead of a second row-max pass (the same values, bit for bit)."""
    if confidence == "max_prob":
        if pred is not None:
            return np.take_along_axis(p, pred[:, None], axis=1)[:, 0].astype(np.float64)
        return p.max(axis=1).astype(np.float64)
    if confidence == "margin":
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:].astype(np.float64)
        return top2[:, 1] - top2[:, 0]
    p64 = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p64 > 0, p64 * np.log(p64), 0.0)
    return plogp.sum(axis=1)


def confidence_domain(confidence, n_classes):
    """``(lo, hi)``: every ``confidence`` score of probabilities with ``n_classes`` columns lies in it (with the
    slack of rows summing to 1 within :func:`calib._validation.check_probs`'s tolerance).

    >>> confidence_domain("max_prob", 4)[0] < 0.25 < confidence_domain("max_prob", 4)[1]
    True
    """
    check_choice(confidence, "confidence", CONFIDENCES)
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ValueError(f"Expected n_classes as an integer >= 2, got {n_classes!r}.")
    eps = 1e-3 + 2e-7 * n_classes
    if confidence == "max_prob":
        return 1.0 / n_classes - eps, 1.0 + eps
    if confidence == "margin":
        return 0.0, 1.0 + eps
    return -float(np.log(n_classes)) - eps, eps


def set_size_confidence(sets):
    """Minus the size of each prediction set (boolean (n, k)): smaller sets are more confident.

    >>> set_size_confidence(np.array([[True, False], [True, True]])).tolist()
    [-1.0, -2.0]
    """
    s = as_array(sets, "sets")
    if s.ndim != 2 or s.dtype != bool:
        raise ValueError(f"Expected sets as a boolean array of shape (n, k), got dtype {s.dtype}, shape {s.shape}.")
    return -s.sum(axis=1).astype(np.float64)


def _check_conf_correct(confidence, correct):
    """``confidence`` finite reals (n,), n >= 1; ``correct`` booleans or 0/1 integers of the same shape (floats
    refused: a probability of being right is not an outcome)."""
    c = as_array(confidence, "confidence")
    if c.dtype.kind not in "biuf":
        raise TypeError(f"Expected confidence as real numbers, got dtype {c.dtype}.")
    c = np.asarray(c, dtype=np.float64)
    h = as_array(correct, "correct")
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"Expected confidence of shape (n_samples,) with n >= 1, got shape {c.shape}.")
    if h.shape != c.shape:
        raise ValueError(f"Expected correct of shape {c.shape} (one per confidence), got shape {h.shape}.")
    h = check_binary(h, "correct")
    if not np.isfinite(c).all():
        raise ValueError(f"Expected finite confidence, got {int((~np.isfinite(c)).sum())} NaN/inf entries.")
    return c, h


@dataclasses.dataclass(frozen=True)
class RiskCoverage:
    """Risk–coverage curve at every coverage ``i / n`` (i = 1..n), most confident items first.

    Attributes
    ----------
    coverage : ndarray (n,)      i / n
    risk : ndarray (n,)          expected errors among the i most confident items / i
    errors : ndarray (n,)        expected number of errors among the i most confident items
    thresholds : ndarray (m,)    distinct confidence values, descending
    threshold_coverage : ndarray (m,)   share of items with confidence >= threshold
    threshold_risk : ndarray (m,)       selective risk of the items with confidence >= threshold
    """

    coverage: np.ndarray
    risk: np.ndarray
    errors: np.ndarray
    thresholds: np.ndarray
    threshold_coverage: np.ndarray
    threshold_risk: np.ndarray


def risk_coverage_curve(confidence, correct) -> RiskCoverage:
    """Risk–coverage curve (Geifman & El-Yaniv 2017) with ties spread in expectation.

    Parameters
    ----------
    confidence : ndarray of shape (n,)
        Any score, higher = more confident.
    correct : ndarray of shape (n,), bool
        Whether the model's answer on the item is right.

    >>> rc = risk_coverage_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, True]))
    >>> rc.risk.round(4).tolist()
    [0.0, 0.5, 0.3333, 0.25]
    """
    c, h = _check_conf_correct(confidence, correct)
    n = c.size
    order = np.argsort(-c, kind="stable")
    cs = c[order]
    err = (~h[order]).astype(np.float64)
    # blocks of equal confidence
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    ends = np.r_[starts[1:], n]
    block_err = np.add.reduceat(err, starts)
    cum_before = np.r_[0.0, np.cumsum(block_err)[:-1]]
    block_of = np.repeat(np.arange(starts.size), ends - starts)
    i = np.arange(1, n + 1, dtype=np.float64)
    rate = block_err / (ends - starts)
    errors = cum_before[block_of] + (i - starts[block_of]) * rate[block_of]
    thr_cov = ends / n
    thr_err = cum_before + block_err
    return RiskCoverage(coverage=i / n, risk=errors / i, errors=errors, thresholds=cs[starts],
                        threshold_coverage=thr_cov, threshold_risk=thr_err / ends)


def aurc(confidence, correct):
    """Area under the risk–coverage curve: the mean of the selective risk over coverages i/n.

    Geifman, Uziel & El-Yaniv (2019). Lower is better.

    >>> round(aurc(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, True])), 6)
    0.270833
    """
    return float(risk_coverage_curve(confidence, correct).risk.mean())


def eaurc(confidence, correct):
    """Excess AURC: AURC minus the AURC of an oracle that ranks every error last (Geifman et al. 2019).

    >>> round(eaurc(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, True])), 6)
    0.208333
    """
    c, h = _check_conf_correct(confidence, correct)
    return aurc(c, h) - aurc(h.astype(np.float64), h)


def augrc(confidence, correct):
    """Area under the generalised risk–coverage curve: mean over i of (errors among the top i) / n.

    Traub et al. (2024): the generalised risk counts accepted errors over *all* items, so it is the
    probability that a random item is both accepted and wrong, averaged over coverage.

    >>> round(augrc(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, True])), 6)
    0.1875
    """
    rc = risk_coverage_curve(confidence, correct)
    return float(rc.errors.mean() / rc.errors.size)


def selective_risk_at_coverage(confidence, correct, coverage):
    """Selective risk of the ``ceil(coverage * n)`` most confident items (ties in expectation).

    >>> selective_risk_at_coverage(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, True]), 0.5)
    0.5
    """
    coverage = check_fraction(coverage, "coverage", inclusive=True)
    rc = risk_coverage_curve(confidence, correct)
    m = max(1, int(np.ceil(coverage * rc.risk.size - 1e-12)))
    return float(rc.risk[m - 1])


def coverage_at_risk(confidence, correct, risk):
    """Largest coverage reached by a confidence threshold whose selective risk is <= ``risk``.

    Only real thresholds count (all items tied at a value are accepted together); 0.0 when none works.

    >>> coverage_at_risk(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, True]), 0.3)
    1.0
    """
    risk = check_fraction(risk, "risk", inclusive=True)
    rc = risk_coverage_curve(confidence, correct)
    ok = rc.threshold_risk <= risk + 1e-12
    return float(rc.threshold_coverage[ok].max()) if ok.any() else 0.0


def error_detection_auroc(confidence, correct):
    """AUROC of the confidence for separating correct from wrong answers (ties count one half).

    Probability that a random correct item gets a higher confidence than a random wrong one; nan when
    one of the two groups is empty.

    >>> round(error_detection_auroc(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, True])), 6)
    0.333333
    """
    c, h = _check_conf_correct(confidence, correct)
    n_pos, n_neg = int(h.sum()), int((~h).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(c, kind="stable")
    cs = c[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    ends = np.r_[starts[1:], c.size]
    avg_rank = (starts + ends + 1) / 2.0  # 1-based average rank of each tie block
    ranks = np.empty(c.size)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    u = ranks[h].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
