"""Conformal p-values per class (Vovk, Gammerman & Shafer, 2005, ch. 2; Angelopoulos & Bates, 2023).

For calibration scores ``s_1..s_n`` and a candidate score ``s``:

- plain: ``p = (1 + #{i : s_i >= s}) / (n + 1)``, super-uniform under exchangeability;
- smoothed: ``p = (#{i : s_i > s} + u * (1 + #{i : s_i = s})) / (n + 1)``, ``u ~ U(0, 1)``, exactly uniform.

``{j : p_j > alpha}`` is the split-conformal set at level alpha (plain p-values; tested).
"""

from __future__ import annotations

import numbers

import numpy as np

from calib._validation import as_array
from calib.conformal.quantile import _check_scores

__all__ = ["conformal_pvalues", "class_pvalues"]


def _check_smoothed_seed(smoothed, seed):
    if not isinstance(smoothed, bool):
        raise TypeError(f"Expected smoothed as a bool, got {type(smoothed).__name__} {smoothed!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Expected seed as an integer >= 0, got {seed!r}.")


def conformal_pvalues(cal_scores, test_scores, *, smoothed=False, seed=0):
    """p-values of ``test_scores`` (any shape) against ``cal_scores`` (n,); one sort, then searchsorted.

    >>> conformal_pvalues(np.array([1.0, 2.0, 3.0]), np.array([2.5, 0.0])).tolist()
    [0.5, 1.0]
    """
    _check_smoothed_seed(smoothed, seed)
    cal = np.sort(_check_scores(cal_scores, "cal_scores"))
    s = as_array(test_scores, "test_scores")
    if s.dtype.kind not in "biuf":
        raise TypeError(f"Expected test_scores as real numbers, got dtype {s.dtype}.")
    s = np.asarray(s, dtype=np.float64)
    if np.isnan(s).any():
        raise ValueError(f"Expected test_scores without NaN, got {int(np.isnan(s).sum())} NaN entries; a NaN score "
                         "has no rank among the calibration scores.")
    n = cal.size
    left = np.searchsorted(cal, s, side="left")
    if not smoothed:
        return (1.0 + n - left) / (n + 1.0)
    right = np.searchsorted(cal, s, side="right")
    u = np.random.default_rng([seed, 4]).random(s.shape)
    return ((n - right) + u * (1.0 + right - left)) / (n + 1.0)


def class_pvalues(predictor, cal_probs, cal_labels, probs, *, smoothed=False):
    """Per-class p-values (n, k) of ``probs`` with the score of a conformal predictor (fitted or not).

    Uses the predictor's score and randomisation policy; Mondrian predictors (one quantile per stratum) are
    refused: pooled p-values would not be theirs.
    """
    from calib._validation import check_probs, check_probs_labels
    from calib.conformal.split import ConformalBase

    if not isinstance(predictor, ConformalBase):
        raise TypeError(f"Expected predictor as a conformal predictor of calib.conformal, got "
                        f"{type(predictor).__name__}.")
    if getattr(predictor, "condition", None) is not None:
        raise ValueError(f"Expected predictor without strata (split or conformal_risk_control), got "
                         f"{type(predictor).__name__}(condition={predictor.condition!r}); its p-values are per "
                         "stratum.")
    _check_smoothed_seed(smoothed, 0)
    n_classes = predictor.__dict__.get("n_classes_")
    p_cal, y_cal = check_probs_labels(cal_probs, cal_labels, n_classes=n_classes)
    p = check_probs(probs, "probs", n_classes=p_cal.shape[1])
    key = predictor._draw_key(p_cal, y_cal)  # the draws a fit on these calibration rows makes
    cal = predictor.label_scores(p_cal, y_cal, predictor._u(p_cal.shape[0], 0, key))
    test = predictor.scorer.matrix(p, predictor._u(p.shape[0], 1, key))
    return conformal_pvalues(cal, test, smoothed=smoothed, seed=predictor.seed)
