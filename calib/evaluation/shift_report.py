"""Shift report: calibrate and choose the routing threshold on one split, evaluate on another.

The Learn-then-Test guarantee assumes calibration and test items are exchangeable. Under shift (for
example a long-tailed validation set and a balanced test set) it can break; this report says whether the
overall guarantee held on the shifted split and which classes broke. A class "breaks" when its test
selective risk significantly exceeds the target: one-sided exact binomial test of H0: risk <= r on its
answered items, Holm-corrected over classes (Holm 1979).

Next to it, conformal coverage: a conformal predictor (LAC at alpha = 0.1 unless given) fitted on the
calibrated first split, its sets on the second. Marginal coverage is tested against ``1 - alpha`` with the
exact law of split conformal under exchangeability (``BetaBinomial(m, r, n + 1 - r)``: a small p-value says
the shift broke the coverage guarantee), each class with the exact binomial test given the fitted sets,
Holm-corrected (:mod:`calib.evaluation.set_metrics`; docs/statistics.md).
"""

from __future__ import annotations

import numpy as np

__all__ = ["shift_report"]


def shift_report(cal_logits, cal_labels, test_logits, test_labels, *, calibrator, policy, alpha=0.05,
                 n_resamples=2000, seed=0, class_names=None, conformal=None):
    """Fit ``calibrator``, ``policy`` (a target-risk policy) and ``conformal`` on the first split, evaluate on
    the second.

    ``alpha`` is the level of every test here (not the conformal miscoverage, which is the predictor's);
    ``conformal``: an unfitted conformal predictor of one alpha (default ``SplitConformal(score="lac",
    alpha=0.1)``).

    Returns a dict: ``guarantee``, calibration-split and test-split risk/coverage with CIs, ``broken``
    (overall test risk significantly above the target), ``classes`` (rows per class: calibration/test counts,
    coverage, selective risk, p-value, Holm-adjusted p, ``broken``), ``test_ece`` and ``conformal``
    (``kind``, ``score``, ``alpha``, ``n_calibration``, test ``coverage``, ``coverage_test`` (marginal, exact),
    ``class_coverage_test`` (per class, Holm), ``class_coverage``, ``min_class_coverage``, ``mean_set_size``).
    """
    import warnings

    from calib import metrics
    from calib.conformal.split import ConformalBase, SplitConformal
    from calib.evaluation.conformal import coverage_law_kwargs
    from calib.evaluation.routing import evaluate_routing
    from calib.evaluation.set_metrics import set_metrics
    from calib.stats import binom_greater_pvalue, holm_adjust

    from calib._validation import check_fraction, check_positive_int

    alpha = check_fraction(alpha, "alpha")
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    check_positive_int(seed, "seed", minimum=0)
    if conformal is None:
        conformal = SplitConformal(score="lac", alpha=0.1)
    if not isinstance(conformal, ConformalBase):
        raise TypeError(f"Expected conformal as a conformal predictor of calib.conformal.REGISTRY (or None for LAC "
                        f"at alpha=0.1), got {type(conformal).__name__}.")
    if len(conformal.alphas) != 1:
        raise ValueError(f"Expected a conformal predictor with one alpha, got alpha={list(conformal.alphas)}.")
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
    pval = np.atleast_1d(binom_greater_pvalue(n_err, n_ans, r))  # 1 for a class with nothing answered
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
    overall_p = binom_greater_pvalue(int((answered & wrong).sum()), int(answered.sum()), r)
    conformal.fit(pc, yc)
    a_conf = float(conformal.alphas[0])
    block = set_metrics(conformal.predict_set(pt), yt, a_conf, level=alpha, **coverage_law_kwargs(conformal))
    conf_section = {"kind": conformal.kind, "score": conformal.score_name, "alpha": a_conf,
                    "n_calibration": int(conformal.n_calibration_),
                    **{key: block[key] for key in ("coverage", "coverage_test", "mean_set_size", "empty_rate",
                                                   "min_class_coverage", "class_coverage_gap", "class_coverage_test",
                                                   "class_coverage")}}
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
        "conformal": conf_section,
    }
