"""The policy stage of :func:`calib.evaluation.pipeline.fit_and_evaluate`: fit a routing policy on the
calibration part, route the test part, report product metrics with confidence intervals, the guarantee,
selective metrics, slices and the data of its figures (drawn by
:meth:`calib.evaluation.pipeline.PipelineResult.write`)."""

from __future__ import annotations

import numbers

import numpy as np

from calib._json import to_json
from calib._validation import check_labels, check_positive_int, check_probs_labels, check_same_length

__all__ = ["policy_stage", "evaluate_routing", "routing_sections", "test_risk_test", "LEVEL"]

#: level of the test of the test-split selective risk against the target
LEVEL = 0.05


def test_risk_test(n_errors, n_answered, target, level=LEVEL):
    """Exact one-sided test of H0 "the fitted policy's selective risk <= target" from its answered test items:
    ``{"h0", "n_answered", "n_errors", "p_value", "level", "exceeds"}``, ``p = P(Binomial(n_answered, target)
    >= n_errors)`` (:func:`calib.stats.binom_greater_pvalue`; 1 when nothing is answered), ``exceeds`` =
    ``p <= level``. The test items are a sample of the population the policy will route; a Learn-then-Test
    guarantee bounds that population risk, so this is the check of the guarantee that a test split can do.

    >>> test_risk_test(76, 1500, 0.05)["exceeds"]  # risk 0.0507 against 0.05: no evidence
    False
    """
    from calib._validation import check_fraction
    from calib.stats import binom_greater_pvalue

    level = check_fraction(level, "level")
    target = check_fraction(target, "target")
    p = binom_greater_pvalue(n_errors, n_answered, target)
    return {"h0": "selective risk of the fitted policy <= target_risk", "n_answered": int(n_answered),
            "n_errors": int(n_errors), "p_value": float(p), "level": level, "exceeds": bool(p <= level)}


test_risk_test.__test__ = False  # a function of the library, not a pytest test


def _check_resampling(n_resamples, seed):
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Expected seed as an integer >= 0, got {seed!r}.")
    return n_resamples, int(seed)


def _rows(a):
    return None if a is None else np.atleast_1d(np.asarray(a))


def _check_policy(policy):
    from calib.policy import RoutingPolicy

    if not isinstance(policy, RoutingPolicy):
        raise TypeError(f"Expected policy as a routing policy of calib.policy.REGISTRY, got {type(policy).__name__}.")


def _sets(conformal, probs, groups):
    if conformal is None:
        return None
    try:
        return conformal.predict_set(probs, groups=groups)
    except TypeError:
        return conformal.predict_set(probs)


def _fallback(extras, n, where):
    if not extras or "fallback" not in extras:
        return None
    fb = np.asarray(extras["fallback"])
    if fb.shape[:1] != (n,):
        raise ValueError(f"Expected the {where} fallback array with {n} entries (one per item), got shape {fb.shape}.")
    return fb


def evaluate_routing(policy, probs, labels, *, sets=None, fallback=None, n_resamples=2000, seed=0):
    """Route ``probs`` with a fitted policy and return ``(decision, product metrics dict)``."""
    from calib.evaluation.product_metrics import product_metrics

    _check_policy(policy)
    n_resamples, seed = _check_resampling(n_resamples, seed)
    decision = policy.route(probs, sets=sets, fallback=fallback)
    labels = check_labels(labels, "labels", n_samples=decision.actions.size, n_classes=policy.n_classes_)
    metrics = product_metrics(decision.actions, decision.prediction, labels, decision.fallback,
                              costs=policy.cost_model, n_resamples=n_resamples, seed=seed)
    return decision, metrics


def policy_stage(policy, cal_probs, cal_labels, test_probs, test_labels, *, conformal=None, cal_extras=None,
                 test_extras=None, cal_groups=None, test_groups=None, n_resamples=2000, seed=0, class_names=None):
    """Fit ``policy`` on the calibration part, apply it to the test part.

    Parameters
    ----------
    policy : RoutingPolicy
        A freshly instantiated member of :data:`calib.policy.REGISTRY`.
    cal_probs, test_probs : ndarray (n, k)
        Calibrated probabilities.
    cal_labels, test_labels : ndarray (n,)
    conformal : fitted conformal predictor with ``predict_set(probs, groups=None)``, optional
        Required by policies with ``needs_sets`` (``conformal_routing``).
    cal_extras, test_extras : dict, optional
        Per-item arrays of the data; ``"fallback"`` (int labels) is the fallback's output.
    cal_groups, test_groups : ndarray (n,), optional
    class_names : sequence of k str, optional; the class slices are named by them (table and figure).

    Returns
    -------
    sections : dict
        ``{"policy": {...rates, "ci", "guarantee", "slices"}, "selective": {"aurc", "eaurc", ...}}``.
    plot_data : dict of file name -> :class:`calib.plotting.FigureSpec`
        ``risk_coverage.png`` (:class:`~calib.plotting.routing.RiskCoverageData`), ``completion_frontier.png``
        (:class:`~calib.plotting.routing.FrontierData`), ``silent_failure_slices.png``
        (:class:`~calib.plotting.routing.SliceData`). Nothing is drawn here.
    """
    from calib import selective
    from calib.evaluation.slices import silent_failure_slices

    _check_policy(policy)
    n_resamples, seed = _check_resampling(n_resamples, seed)
    cal_p, cal_y = check_probs_labels(cal_probs, cal_labels)
    test_p, test_y = check_probs_labels(test_probs, test_labels, n_classes=cal_p.shape[1])
    check_same_length(cal_y.size, "cal_groups", "cal_probs", cal_groups=_rows(cal_groups))
    check_same_length(test_y.size, "test_groups", "test_probs", test_groups=_rows(test_groups))
    if policy.needs_sets and conformal is None:
        raise ValueError(
            f"Policy {policy.kind!r} routes on conformal prediction sets, but no conformal predictor is configured "
            "(conformal=none); set conformal=lac (or aps), or choose policy=threshold/risk_control/cost."
        )
    cal_sets = _sets(conformal, cal_p, cal_groups) if policy.needs_sets else None
    test_sets = _sets(conformal, test_p, test_groups) if policy.needs_sets else None
    cal_fb = _fallback(cal_extras, cal_y.size, "calibration")
    test_fb = _fallback(test_extras, test_y.size, "test")
    policy.fit(cal_p, cal_y, sets=cal_sets, fallback=cal_fb, groups=cal_groups)
    decision, m = evaluate_routing(policy, test_p, test_y, sets=test_sets, fallback=test_fb,
                                   n_resamples=n_resamples, seed=seed)
    confidence = getattr(policy, "confidence", "max_prob")  # policies without a confidence score: max-prob
    conf = selective.confidence_scores(test_p, confidence)
    return routing_sections(policy, m, decision.actions, decision.prediction, test_y, conf,
                            lambda target: silent_failure_slices(test_p, test_y, decision.actions, target=target,
                                                                 groups=test_groups, class_names=class_names))


#: slices kept in metrics.json's ``policy.slices.top`` (the report's "where silent failures concentrate")
TOP_SLICES = 5


def routing_sections(policy, metrics, actions, prediction, labels, conf, slices_for):
    """The policy stage's sections and figure data from a routed test part: ``metrics`` of
    :func:`calib.evaluation.product_metrics.product_metrics`, each row's action, prediction, label and the
    policy's confidence score ``conf``; ``slices_for(target)`` returns the silent-failure slice rows tested
    against ``target``. Shared by :func:`policy_stage` and the out-of-core pipeline (per-row vectors only)."""
    from calib import selective
    from calib.plotting import FigureSpec
    from calib.plotting import routing as rplots

    m = metrics
    guarantee = policy.guarantee()
    confidence = getattr(policy, "confidence", "max_prob")
    correct = np.asarray(prediction) == np.asarray(labels)
    answered = np.asarray(actions) == 0
    target = guarantee.get("target_risk")
    # slices are tested against the policy's target risk, or (no target) against the overall silent-failure rate
    slice_target = target if target is not None else max(min(m["silent_failure_rate"] or 0.0, 0.999), 1e-3)
    slices = slices_for(slice_target)
    section = {
        "kind": policy.kind,
        **{key: m[key] for key in ("automation_rate", "escalation_rate", "fallback_rate", "selective_risk",
                                   "selective_accuracy", "silent_failure_rate", "recovery_rate",
                                   "task_completion_rate", "expected_cost", "expected_time",
                                   "time_to_correct_output", "model_accuracy", "n")},
        "ci": m["ci"],
        "ci_method": m["ci_method"],
        "guarantee": guarantee,
        "test_risk_test": (None if target is None else
                           test_risk_test(int((answered & ~correct).sum()), int(answered.sum()), target)),
        "costs": policy.cost_model.to_dict(),
        # "top": the most harmful slices (sorted by excess silent failures), flagged or not: where they concentrate
        "slices": {"target": slice_target, "flagged": [r for r in slices if r["flagged"]][:20],
                   "n_slices": len(slices), "top": slices[:TOP_SLICES]},
    }
    sel = {
        "score": confidence,  # metrics.json key kept from schema 1: the confidence score
        "aurc": selective.aurc(conf, correct),
        "eaurc": selective.eaurc(conf, correct),
        "augrc": selective.augrc(conf, correct),
        "error_detection_auroc": selective.error_detection_auroc(conf, correct),
    }
    if target is not None:
        sel["coverage_at_target_risk"] = selective.coverage_at_risk(conf, correct, target)
    sel = to_json(sel)  # strict JSON: undefined metrics as null

    thr = getattr(policy, "threshold_", None)
    rc = rplots.prepare_risk_coverage(conf, correct, threshold=thr if thr is not None and np.isfinite(thr) else None,
                                      target_risk=target)
    fr = rplots.prepare_completion_frontier(conf, correct, human_accuracy=policy.cost_model.human_accuracy,
                                            point=(m["escalation_rate"], m["task_completion_rate"]))
    plot_data = {
        "risk_coverage.png": FigureSpec("routing.plot_risk_coverage", rc, kwargs={"label": f"{confidence} (test)"},
                                        size=(4.5, 3.5), title=f"risk vs coverage, policy {policy.kind}",
                                        title_fontsize=9, tight_layout=True),
        "completion_frontier.png": FigureSpec("routing.plot_completion_frontier", fr, size=(4.5, 3.5),
                                              title=f"task completion vs escalation, policy {policy.kind}",
                                              title_fontsize=9,
                                              tight_layout=True),
        "silent_failure_slices.png": FigureSpec("routing.plot_slices",
                                                rplots.prepare_slices(slices, target=slice_target),
                                                size=rplots.slices_figure_size(len(slices)), tight_layout=True,
                                                title=f"silent failures per slice, policy {policy.kind}",
                                                title_fontsize=9),
    }
    return {"policy": section, "selective": sel}, plot_data
