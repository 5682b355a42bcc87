"""Compare models that share one test set: accuracy, ECE, AURC and the product metrics of the same policies.

For each model: a calibrator fitted on its calibration part, every policy fitted on the calibrated
calibration part and scored on the test part with bootstrap CIs (:func:`calib.evaluation.routing.evaluate_routing`).
Models must share one test set (same labels in the same order), so their rows are directly comparable.
"""

from __future__ import annotations

import logging
import numbers
import warnings

import numpy as np

from calib._validation import check_fraction, check_positive_int
from calib.plotting.routing import check_policy_name

__all__ = ["compare_models", "markdown_table", "check_policy_name"]

log = logging.getLogger(__name__)


def compare_models(datasets, make_calibrator, policies, *, n_bins=15, n_resamples=2000, seed=0):
    """Evaluate each ``(name, LogitsData)`` of ``datasets``; return ``{"rows": [...], "curves": {...}}``.

    ``make_calibrator()`` and each ``policies[name]()`` return unfitted objects. The calibration/test split
    is the data's own (``split`` column) or a stratified one drawn with ``seed``. Each row holds the model's
    name, n_test, accuracy, ECE (``n_bins`` equal-width bins), AURC, E-AURC and, per policy, the routing
    metrics with their CIs and the policy's guarantee; ``curves`` holds each model's risk-coverage curve.
    Warnings a policy raises while fitting (e.g. nothing certified) are logged with the model's name.
    """
    from calib import metrics, selective
    from calib.evaluation.routing import evaluate_routing

    n_bins = check_positive_int(n_bins, "n_bins")
    check_positive_int(n_resamples, "n_resamples")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Expected seed as an integer >= 0, got {seed!r}.")
    if not hasattr(policies, "items"):
        raise TypeError(f"Expected policies as a mapping of name -> callable returning a policy, got "
                        f"{type(policies).__name__}.")
    if not callable(make_calibrator):
        raise TypeError(f"Expected make_calibrator as a callable returning a calibrator, got {make_calibrator!r}.")
    bad = sorted(name for name, make in dict(policies).items() if not callable(make))
    if bad:
        raise TypeError(f"Expected policies as a mapping of name -> callable returning a policy; not callable: {bad}.")
    rows, curves, test_labels, first = [], {}, None, None
    for item in datasets:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"Expected datasets as (name, LogitsData) pairs, got {type(item).__name__} {item!r:.80}.")
        name, data = item
        cal, test = data.split_cal_test(seed=seed)
        if test_labels is None:
            test_labels, first = test.labels, name
        elif not np.array_equal(test_labels, test.labels):
            raise ValueError(f"Expected every model to share one test set, but {name!r} has test labels "
                             f"different from {first!r}'s.")
        calibrator = make_calibrator().fit(cal.logits, cal.labels)
        pc, pt = calibrator.predict_proba(cal.logits), calibrator.predict_proba(test.logits)
        conf = pt.max(axis=1)
        correct = pt.argmax(axis=1) == test.labels
        row = {"model": name, "n_test": int(test.n_samples), "accuracy": metrics.accuracy(pt, test.labels),
               "ece": metrics.expected_calibration_error(pt, test.labels, n_bins=n_bins),
               "aurc": selective.aurc(conf, correct), "eaurc": selective.eaurc(conf, correct), "policies": {}}
        for policy_name, make in policies.items():
            policy = make()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                policy.fit(pc, cal.labels, fallback=cal.extras.get("fallback"))
            for w in caught:
                log.warning("%s / %s: %s", name, policy_name, w.message)
            _, m = evaluate_routing(policy, pt, test.labels, fallback=test.extras.get("fallback"),
                                    n_resamples=n_resamples, seed=seed)
            m["guarantee"] = policy.guarantee()
            row["policies"][policy_name] = m
        rows.append(row)
        curves[name] = selective.risk_coverage_curve(conf, correct)
        log.info("%s: acc %.4f, ECE %.4f", name, row["accuracy"], row["ece"])
    if not rows:
        raise ValueError("Expected at least one (name, LogitsData) in datasets, got none.")
    return {"rows": rows, "curves": curves}


def _fmt_ci(m, key, pct=True):
    v, ci = m[key], m["ci"].get(key)
    if v is None:
        return "n/a"
    f = (lambda x: f"{100 * x:.2f}") if pct else (lambda x: f"{x:.3f}")
    return f"{f(v)} [{f(ci[0])}, {f(ci[1])}]" if ci else f(v)


def markdown_table(rows, policy_name, *, target_risk=None, delta=None, calibrator="temperature scaling", n_bins=15):
    """One markdown table of ``rows`` (from :func:`compare_models`) for one policy, best accuracy first."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise ValueError(f"Expected rows as the non-empty list of compare_models(...)['rows'], got {rows!r:.80}.")
    check_policy_name(rows, policy_name)
    if target_risk is not None:
        check_fraction(target_risk, "target_risk")
    if delta is not None:
        check_fraction(delta, "delta")
    n_bins = check_positive_int(n_bins, "n_bins")
    if not isinstance(calibrator, str):
        raise TypeError(f"Expected calibrator as a name (str), got {type(calibrator).__name__} {calibrator!r}.")
    head = (f"Policy `{policy_name}`"
            + (f" (target selective risk r = {target_risk}, delta = {delta})" if target_risk is not None else "")
            + f"; rates in %, 95% percentile-bootstrap CI in brackets; ECE after {calibrator} ({n_bins} bins).\n\n")
    cols = ["model", "acc %", "ECE %", "AURC ‰", "automation %", "selective risk %", "silent failure %",
            "recovery %", "task completion %", "cost / item", "certified"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: -r["accuracy"]):
        m = r["policies"][policy_name]
        g = m.get("guarantee") or {}
        lines.append("| " + " | ".join([
            r["model"], f"{100 * r['accuracy']:.2f}", f"{100 * r['ece']:.2f}", f"{1000 * r['aurc']:.2f}",
            _fmt_ci(m, "automation_rate"), _fmt_ci(m, "selective_risk"), _fmt_ci(m, "silent_failure_rate"),
            _fmt_ci(m, "recovery_rate"), _fmt_ci(m, "task_completion_rate"), _fmt_ci(m, "expected_cost", pct=False),
            "n/a" if g.get("certified") is None else str(g["certified"]),
        ]) + " |")
    return head + "\n".join(lines) + "\n"
