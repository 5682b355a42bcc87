"""Shift report: calibrate and choose the routing threshold on one split, evaluate on another.

The Learn-then-Test guarantee assumes calibration and test items are exchangeable. Under shift (for
example a long-tailed validation set and a balanced test set) it can break; this report says whether the
overall guarantee held on the shifted split and which classes broke. A class "breaks" when its test
selective risk significantly exceeds the target: one-sided exact binomial test of H0: risk <= r on its
answered items, Holm-corrected over classes (Holm 1979).
"""

from __future__ import annotations

import numpy as np

__all__ = ["shift_report"]


def shift_report(cal_logits, cal_labels, test_logits, test_labels, *, calibrator, policy, alpha=0.05,
                 n_resamples=2000, seed=0, class_names=None):
    """Fit ``calibrator`` and ``policy`` (a target-risk policy) on the first split, evaluate on the second.

    Returns a dict: ``overall`` (guarantee, calibration-split and test-split risk/coverage with CIs,
    ``broken``), ``classes`` (rows per class: calibration/test counts, coverage, selective risk, p-value,
    Holm-adjusted p, ``broken``), ``test_ece``.
    """
    import warnings

    from scipy.stats import binom

    from calib import metrics
    from calib.evaluation.routing import evaluate_routing
    from calib.evaluation.slices import holm_adjust

    from calib._validation import check_fraction, check_positive_int

    alpha = check_fraction(alpha, "alpha")
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    check_positive_int(seed, "seed", minimum=0)
    calibrator.fit(cal_logits, cal_labels)
    pc, pt = calibrator.predict_proba(cal_logits), calibrator.predict_proba(test_logits)
    yc = np.asarray(cal_labels)
    yt = np.asarray(test_labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        policy.fit(pc, yc, fallback=None)
    g = policy.guarantee()
    r = g.get("target_risk")
    if r is None:
        raise ValueError(f"Expected a policy with a target risk (risk_control), got {policy.kind!r}.")
    dec, m = evaluate_routing(policy, pt, yt, n_resamples=n_resamples, seed=seed)
    dec_c, m_c = evaluate_routing(policy, pc, yc, n_resamples=n_resamples, seed=seed)
    k = pt.shape[1]
    answered = dec.actions == 0
    wrong = dec.prediction != yt
    n_t = np.bincount(yt, minlength=k)
    n_c = np.bincount(yc, minlength=k)
    n_ans = np.bincount(yt, weights=answered, minlength=k).astype(np.int64)
    n_err = np.bincount(yt, weights=answered & wrong, minlength=k).astype(np.int64)
    ans_c = dec_c.actions == 0
    n_ans_c = np.bincount(yc, weights=ans_c, minlength=k).astype(np.int64)
    n_err_c = np.bincount(yc, weights=ans_c & (dec_c.prediction != yc), minlength=k).astype(np.int64)
    pval = np.where(n_ans > 0, binom.sf(n_err - 1, np.maximum(n_ans, 1), r), 1.0)
    adj = holm_adjust(pval)
    names = [str(c) for c in range(k)] if class_names is None else list(class_names)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = [{"class": names[j], "n_cal": int(n_c[j]), "n_test": int(n_t[j]),
                 "cal_coverage": float(n_ans_c[j] / n_c[j]) if n_c[j] else None,
                 "cal_selective_risk": float(n_err_c[j] / n_ans_c[j]) if n_ans_c[j] else None,
                 "test_coverage": float(n_ans[j] / n_t[j]) if n_t[j] else None,
                 "test_selective_risk": float(n_err[j] / n_ans[j]) if n_ans[j] else None,
                 "p_value": float(pval[j]), "p_holm": float(adj[j]), "broken": bool(adj[j] <= alpha)}
                for j in range(k)]
    overall_p = float(binom.sf(int((answered & wrong).sum()) - 1, max(int(answered.sum()), 1), r))
    return {
        "guarantee": g,
        "warnings": [str(w.message) for w in caught],
        "calibration_split": {key: m_c[key] for key in ("automation_rate", "selective_risk", "model_accuracy")},
        "test_split": {key: m[key] for key in ("automation_rate", "selective_risk", "silent_failure_rate",
                                               "model_accuracy")},
        "test_ci": {key: m["ci"][key] for key in ("automation_rate", "selective_risk")},
        "test_ece": metrics.expected_calibration_error(pt, yt),
        "overall_p_value": overall_p,
        "broken": bool(m["selective_risk"] is not None and m["selective_risk"] > r and overall_p <= alpha),
        "classes": rows,
    }
