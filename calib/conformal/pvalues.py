"""Conformal p-values per class (Vovk, Gammerman & Shafer, 2005, ch. 2; Angelopoulos & Bates, 2023).

For calibration scores ``s_1..s_n`` and a candidate score ``s``:

- plain: ``p = (1 + #{i : s_i >= s}) / (n + 1)``, super-uniform under exchangeability;
- smoothed: ``p = (#{i : s_i > s} + u * (1 + #{i : s_i = s})) / (n + 1)``, ``u ~ U(0, 1)``, exactly uniform.

``{j : p_j > alpha}`` is the split-conformal set at level alpha (plain p-values; tested).
"""

from __future__ import annotations

import numpy as np

__all__ = ["conformal_pvalues", "class_pvalues"]


def conformal_pvalues(cal_scores, test_scores, *, smoothed=False, seed=0):
    """p-values of ``test_scores`` (any shape) against ``cal_scores`` (n,); one sort, then searchsorted.

    >>> conformal_pvalues(np.array([1.0, 2.0, 3.0]), np.array([2.5, 0.0])).tolist()
    [0.5, 1.0]
    """
    cal = np.sort(np.asarray(cal_scores, dtype=np.float64).ravel())
    s = np.asarray(test_scores, dtype=np.float64)
    n = cal.size
    left = np.searchsorted(cal, s, side="left")
    if not smoothed:
        return (1.0 + n - left) / (n + 1.0)
    right = np.searchsorted(cal, s, side="right")
    u = np.random.default_rng([seed, 4]).random(s.shape)
    return ((n - right) + u * (1.0 + right - left)) / (n + 1.0)


def class_pvalues(predictor, cal_probs, cal_labels, probs, *, smoothed=False):
    """Per-class p-values (n, k) of ``probs`` with the score of a conformal predictor (fitted or not).

    Uses the predictor's score and randomisation policy; Mondrian predictors are not supported here.
    """
    from calib._validation import check_probs_labels, check_probs

    p_cal, y_cal = check_probs_labels(cal_probs, cal_labels)
    p = check_probs(probs, "probs", n_classes=p_cal.shape[1])
    cal = predictor.label_scores(p_cal, y_cal, predictor._u(p_cal.shape[0], 0))
    test = predictor.scorer.matrix(p, predictor._u(p.shape[0], 1))
    return conformal_pvalues(cal, test, smoothed=smoothed, seed=predictor.seed)
