"""Compare models that share one test set: at matched operating points with paired intervals, plus accuracy,
ECE, AURC and the product metrics of the same policies.

For each model a calibrator is fitted on its calibration part. Then:

- :func:`matched_comparison` (``result["matched"]``): every model at the same **escalation budget(s)** (each
  escalates exactly that share of the test items, its least confident ones) and at the same **target risk(s)**
  (each model's Learn-then-Test threshold), with per-model metrics and **paired** differences (same resampled
  test items) whose percentile intervals redo the operating point on every resample; a difference whose
  interval contains 0 is "not distinguishable". This is the comparison to read.
- per policy of ``policies`` (``result["rows"]``): the policy fitted on the calibrated calibration part and
  scored on the test part (:func:`calib.evaluation.routing.evaluate_routing`); its bootstrap CIs are
  **conditional on the fitted policy** (the threshold is held fixed), and models land at different
  escalation rates, so these rows describe each model, they do not compare them.

Models must share one test set (same labels in the same order), so their rows are directly comparable.
"""

from __future__ import annotations

import logging
import numbers
import warnings

import numpy as np

from calib._validation import check_choice, check_fraction, check_positive_int
from calib.evaluation.results import format_number
from calib.plotting.routing import check_policy_name

__all__ = ["compare_models", "markdown_table", "check_policy_name", "matched_comparison", "matched_markdown",
           "resample_indices", "MATCHED_KEYS", "DIFF_KEYS"]

log = logging.getLogger(__name__)


def compare_models(datasets, make_calibrator, policies, *, n_bins=15, n_resamples=2000, seed=0, budgets=None,
                   target_risks=None, delta=0.1, family="multi_start", costs=None, reference=None,
                   paired_resamples=1000, resplit=False, cal_fraction=0.5):
    """Evaluate each ``(name, LogitsData)`` of ``datasets``; return ``{"rows", "curves", "matched"}``.

    ``make_calibrator()`` and each ``policies[name]()`` return unfitted objects. The calibration/test split
    is the data's own (``split`` column; unless ``resplit``) or a stratified one (``cal_fraction``) drawn with
    ``seed``. Each row holds the model's name, n_test, accuracy, ECE (``n_bins`` equal-width bins), AURC,
    E-AURC and, per policy, the routing metrics with their CIs (conditional on the fitted policy) and the
    policy's guarantee; ``curves`` holds each model's risk-coverage curve and ``frontiers`` its
    task-completion vs escalation curve. Warnings a policy raises while fitting (e.g. nothing certified) are
    logged with the model's name.

    When ``budgets`` or ``target_risks`` is given, ``matched`` is :func:`matched_comparison` of the calibrated
    max-probability confidences (``delta``, ``family``, ``costs``, ``reference``, ``paired_resamples``
    resamples, ``seed``); else None.
    """
    from calib import metrics, selective
    from calib.evaluation.routing import evaluate_routing
    from calib.plotting.routing import prepare_completion_frontier

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
    rows, curves, frontiers, confs, test_labels, first = [], {}, {}, [], None, None
    for item in datasets:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"Expected datasets as (name, LogitsData) pairs, got {type(item).__name__} {item!r:.80}.")
        name, data = item
        cal, test = data.split_cal_test(seed=seed, resplit=resplit, cal_fraction=cal_fraction)
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
        confs.append((name, pc.max(axis=1), pc.argmax(axis=1) == cal.labels, conf, correct))
        log.info("%s: acc %.4f, ECE %.4f", name, row["accuracy"], row["ece"])
    if not rows:
        raise ValueError("Expected at least one (name, LogitsData) in datasets, got none.")
    matched = None
    if budgets or target_risks:
        matched = matched_comparison(confs, budgets=budgets or (), target_risks=target_risks or (), delta=delta,
                                     family=family, costs=costs, reference=reference,
                                     n_resamples=paired_resamples, seed=seed)
        h = matched["costs"]["human_accuracy"]
        for name, _, _, conf, correct in confs:
            frontiers[name] = prepare_completion_frontier(conf, correct, human_accuracy=h)
    return {"rows": rows, "curves": curves, "frontiers": frontiers, "matched": matched}


def _fmt_ci(m, key, pct=True):
    v, ci = m[key], m["ci"].get(key)
    if v is None:
        return "n/a"
    f = (lambda x: format_number(100 * x, decimals=2)) if pct else (lambda x: format_number(x, decimals=3))
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
            + f"; rates in %, 95% percentile-bootstrap CI in brackets, conditional on the fitted policy (its threshold "
            f"held fixed; each model at its own escalation rate: a description of each model, not a comparison); "
            f"ECE after {calibrator} ({n_bins} bins).\n\n")
    cols = ["model", "acc %", "ECE %", "AURC ‰", "automation %", "selective risk %", "silent failure %",
            "recovery %", "task completion %", "cost / item", "certified"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: -r["accuracy"]):
        m = r["policies"][policy_name]
        g = m.get("guarantee") or {}
        lines.append("| " + " | ".join([
            r["model"], format_number(100 * r["accuracy"], decimals=2), format_number(100 * r["ece"], decimals=2),
            format_number(1000 * r["aurc"], decimals=2),
            _fmt_ci(m, "automation_rate"), _fmt_ci(m, "selective_risk"), _fmt_ci(m, "silent_failure_rate"),
            _fmt_ci(m, "recovery_rate"), _fmt_ci(m, "task_completion_rate"), _fmt_ci(m, "expected_cost", pct=False),
            "n/a" if g.get("certified") is None else str(g["certified"]),
        ]) + " |")
    return head + "\n".join(lines) + "\n"


# --- matched operating points -----------------------------------------------------------------------------
#: Metrics of a matched operating point, per model and as paired differences (model a minus model b).
MATCHED_KEYS = ("automation_rate", "escalation_rate", "selective_risk", "silent_failure_rate",
                "task_completion_rate", "expected_cost")
DIFF_KEYS = ("task_completion_rate", "automation_rate", "selective_risk", "expected_cost")

_CHUNK = 64  # resamples per block of the fixed-budget computation (a (64, n) count matrix)


def resample_indices(seed, b, n_test, n_cal=None):
    """The item indices of paired resample ``b``: ``(test_idx, cal_idx)``, drawn with replacement from
    ``np.random.default_rng([seed, b])`` — first the n_test test indices, then (when ``n_cal`` is given) the
    n_cal calibration indices. Every model uses the same indices, which is what makes the differences paired;
    a test can redraw them to check an interval independently."""
    rng = np.random.default_rng([seed, b])
    test_idx = rng.integers(0, n_test, n_test)
    return test_idx, (None if n_cal is None else rng.integers(0, n_cal, n_cal))


def _rates(n, n_escalated, answered_wrong, cost_model):
    """Metrics (MATCHED_KEYS) of answer-or-escalate routing from counts (scalars or arrays)."""
    n = np.asarray(n, dtype=np.float64)
    e = np.asarray(n_escalated, dtype=np.float64)
    w = np.asarray(answered_wrong, dtype=np.float64)
    a = n - e
    h = cost_model.human_accuracy
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"automation_rate": a / n, "escalation_rate": e / n, "selective_risk": np.where(a > 0, w / a, np.nan),
                "silent_failure_rate": w / n, "task_completion_rate": (a - w + h * e) / n,
                "expected_cost": (cost_model.wrong_answer * w + cost_model.escalation_cost * e) / n}


def _budget_counts(counts, order, wrong_sorted, m):
    """Errors among the answered items when the ``m`` least confident resampled items are escalated.

    ``counts`` (B, n): copies of each test item in each resample; ``order``: the items by increasing
    confidence (ties: lower index first); ``wrong_sorted``: the model's errors in that order. The copies of
    one item are consecutive, so the rule "escalate the m least confident items" escalates
    clip(m - copies before, 0, copies of the item) copies of each item."""
    w = counts[:, order]
    before = np.cumsum(w, axis=1, dtype=np.int64) - w
    escalated = np.clip(m - before, 0, w)
    return ((w - escalated) * wrong_sorted).sum(axis=1, dtype=np.int64)


def _summary(point, boot, level):
    """Point estimates and percentile intervals (None where no resample defines the metric)."""
    out = {k: (None if not np.isfinite(point[k]) else float(point[k])) for k in point}
    alpha = (1.0 - level) / 2.0
    ci = {}
    for k in point:
        v = np.asarray(boot[k], dtype=np.float64)
        v = v[np.isfinite(v)]
        ci[k] = None if v.size == 0 else [float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))]
    out["ci"] = ci
    return out


def _differences(names, pairs, points, boots, level):
    """Paired differences a - b of DIFF_KEYS, with percentile intervals over the same resamples."""
    alpha = (1.0 - level) / 2.0
    rows = []
    for a, b in pairs:
        row = {"a": names[a], "b": names[b]}
        for k in DIFF_KEYS:
            d = points[a][k] - points[b][k]
            v = np.asarray(boots[a][k], dtype=np.float64) - np.asarray(boots[b][k], dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size == 0 or not np.isfinite(d):
                row[k] = {"difference": None if not np.isfinite(d) else float(d), "ci": None,
                          "distinguishable": None, "n_resamples_defined": int(v.size)}
                continue
            lo, hi = float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))
            row[k] = {"difference": float(d), "ci": [lo, hi], "distinguishable": not (lo <= 0.0 <= hi),
                      "n_resamples_defined": int(v.size)}
        rows.append(row)
    return rows


def _pairs(names, reference):
    if reference is None:
        return [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    if reference not in names:
        raise ValueError(f"Unknown reference model {reference!r}; valid options: {list(names)}.")
    r = names.index(reference)
    return [(i, r) for i in range(len(names)) if i != r]


def matched_comparison(models, *, budgets=(0.05, 0.10, 0.30), target_risks=(0.05,), delta=0.1,
                       family="multi_start", costs=None, reference=None, n_resamples=1000, seed=0,
                       confidence_level=0.95):
    """Compare models on one test set at matched operating points, with paired, procedure-level intervals.

    ``models``: a list of ``(name, cal_confidence, cal_correct, test_confidence, test_correct)``; every model
    has the same test items in the same order (and, for the pairing of the calibration resamples to mean
    anything, the same calibration items). Routing is answer-or-escalate (no fallback).

    **Fixed escalation budget** ``b`` (each of ``budgets``): every model escalates exactly
    m = round(b * n_test) test items, its m least confident ones (confidence ties: lower item index first),
    and answers the rest. The threshold is the model's own test-confidence quantile: label-free, so no label
    of the test set leaks into it. Automation is 1 - m / n for every model; the models differ in which items
    they escalate.

    **Fixed target risk** ``r`` (each of ``target_risks``): every model's Learn-then-Test threshold
    (:func:`calib.policy.guarantees.ltt_threshold`, ``delta``, ``family``; the same as
    :class:`calib.policy.RiskControlPolicy`) fitted on its calibration items and applied to the test items; a
    model with nothing certified escalates everything.

    **Intervals**: resample ``b`` (of ``n_resamples``) draws test indices with replacement, and in the
    target-risk mode calibration indices too, from ``np.random.default_rng([seed, b])``
    (:func:`resample_indices`); every model uses the same indices. On each resample the operating point is
    redone — the m least confident of the resampled test items, or the LTT threshold refitted on the
    resampled calibration items — and the metrics recomputed. Intervals are percentile intervals
    (``confidence_level``) of the per-model metrics and of the paired differences a - b. Held fixed: the
    models and their calibrators (fitted once). A difference whose interval contains 0 is reported as
    ``distinguishable: False`` ("not distinguishable").

    ``reference``: compare every model with this one (a - reference); default every pair (in input order).

    Returns ``{"method", "models", "n_test", "budgets": [...], "targets": [...]}``; each operating point holds
    ``models`` (name -> metrics with ``ci``) and ``differences`` (one entry per pair: per metric
    ``difference``, ``ci``, ``distinguishable``).
    """
    from calib.policy.costs import as_cost_model
    from calib.policy.guarantees import FAMILIES, ltt_threshold
    from calib.selective import _check_conf_correct

    cost_model = as_cost_model(costs)
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    confidence_level = check_fraction(confidence_level, "confidence_level")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Expected seed as an integer >= 0, got {seed!r}.")
    budgets = [check_fraction(b, "budgets") for b in (budgets or ())]
    target_risks = [check_fraction(r, "target_risks") for r in (target_risks or ())]
    delta = check_fraction(delta, "delta")
    family = check_choice(family, "family", tuple(FAMILIES))
    models = list(models)
    if not models:
        raise ValueError("Expected at least one model in models, got none.")
    names, cal, test = [], [], []
    for item in models:
        if not (isinstance(item, (tuple, list)) and len(item) == 5 and isinstance(item[0], str)):
            raise TypeError("Expected models as (name, cal_confidence, cal_correct, test_confidence, test_correct) "
                            f"tuples, got {type(item).__name__} {item!r:.80}.")
        names.append(item[0])
        cal.append(_check_conf_correct(item[1], item[2]))
        test.append(_check_conf_correct(item[3], item[4]))
    if len(set(names)) != len(names):
        raise ValueError(f"Expected distinct model names, got {names}.")
    n = test[0][0].size
    bad = [nm for nm, (c, _) in zip(names, test) if c.size != n]
    if bad:
        raise ValueError(f"Expected every model to have the same n_test={n} test items, got other sizes for {bad}.")
    pairs = _pairs(names, reference)
    level = confidence_level

    # --- fixed escalation budgets: point and resamples -------------------------------------------------------
    orders = [np.argsort(c, kind="stable") for c, _ in test]
    wrongs = [(~h).astype(np.int64) for _, h in test]
    wrong_sorted = [w[o] for w, o in zip(wrongs, orders)]
    ms = [int(round(b * n)) for b in budgets]
    boot_w = np.zeros((len(names), len(ms), n_resamples), dtype=np.int64)
    for start in range(0, n_resamples, _CHUNK):
        bs = range(start, min(start + _CHUNK, n_resamples))
        idx = np.stack([resample_indices(seed, b, n)[0] for b in bs])
        counts = np.bincount((np.arange(len(bs))[:, None] * n + idx).ravel(),
                             minlength=len(bs) * n).reshape(len(bs), n)
        for i in range(len(names)):
            for j, m in enumerate(ms):
                boot_w[i, j, start:start + len(bs)] = _budget_counts(counts, orders[i], wrong_sorted[i], m)
    ones = np.ones((1, n), dtype=np.int64)
    budget_blocks = []
    for j, (b, m) in enumerate(zip(budgets, ms)):
        points, boots, per_model = [], [], {}
        for i, name in enumerate(names):
            w0 = int(_budget_counts(ones, orders[i], wrong_sorted[i], m)[0])
            p = {k: float(v) for k, v in _rates(n, m, w0, cost_model).items()}
            bt = _rates(n, m, boot_w[i, j], cost_model)
            points.append(p)
            boots.append(bt)
            conf_sorted = test[i][0][orders[i]]
            per_model[name] = {**_summary(p, bt, level), "n_escalated": m,
                               "confidence_cut": float(conf_sorted[m - 1]) if m > 0 else None}
        budget_blocks.append({"escalation_budget": b, "n_escalated": m, "models": per_model,
                              "differences": _differences(names, pairs, points, boots, level)})

    # --- fixed target risks: LTT per model, refitted per resample -----------------------------------------
    target_blocks = []
    for r in target_risks:
        def fit(c, h):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return ltt_threshold(c, h, target_risk=r, delta=delta, family=family)

        points, boots, per_model = [], [], {}
        for i, name in enumerate(names):
            (cc, hc), (ct, ht) = cal[i], test[i]
            g = fit(cc, hc)
            ans = ct >= g.threshold
            p = {k: float(v) for k, v in _rates(n, n - int(ans.sum()), int((ans & ~ht).sum()), cost_model).items()}
            e_b = np.empty(n_resamples)
            w_b = np.empty(n_resamples)
            for b in range(n_resamples):
                t_idx, c_idx = resample_indices(seed, b, n, cc.size)
                thr = fit(cc[c_idx], hc[c_idx]).threshold
                a_b = ct[t_idx] >= thr
                e_b[b] = n - a_b.sum()
                w_b[b] = (a_b & ~ht[t_idx]).sum()
            bt = _rates(n, e_b, w_b, cost_model)
            points.append(p)
            boots.append(bt)
            per_model[name] = {**_summary(p, bt, level), "certified": bool(g.certified),
                               "threshold": g.threshold if np.isfinite(g.threshold) else None,
                               "cal_coverage": g.cal_coverage}
        target_blocks.append({"target_risk": r, "delta": delta, "family": family, "models": per_model,
                              "differences": _differences(names, pairs, points, boots, level)})

    method = (f"paired percentile bootstrap, {n_resamples} resamples (np.random.default_rng([{seed}, b])), level "
              f"{confidence_level}: the same resampled test items for every model; per resample the operating "
              "point is redone (fixed budget: the least confident share of the resampled test items is "
              "escalated; fixed target risk: the Learn-then-Test threshold is refitted on resampled calibration "
              "items). Held fixed: the models and their calibrators. An interval containing 0: not "
              "distinguishable.")
    return {"method": method, "models": names, "n_test": int(n), "reference": reference,
            "costs": cost_model.to_dict(), "budgets": budget_blocks, "targets": target_blocks}


def _pct(x, signed=False):
    if x is None:
        return "n/a"
    text = format_number(100 * x, decimals=2)
    return ("+" + text if signed and not text.startswith("-") else text)


def _num(x, signed=False):
    if x is None:
        return "n/a"
    text = format_number(x, decimals=4)
    return ("+" + text if signed and not text.startswith("-") else text)


def _cell(m, key, fmt=_pct):
    ci = m["ci"].get(key)
    return fmt(m[key]) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def _diff_cell(d, fmt):
    if d["difference"] is None:
        return "n/a"
    if d["ci"] is None:
        return fmt(d["difference"], True)
    lo, hi = d["ci"]
    return (f"{fmt(d['difference'], True)} [{fmt(lo, True)}, {fmt(hi, True)}]"
            + ("" if d["distinguishable"] else " n.d."))


def matched_markdown(matched, *, accuracy=None):
    """Markdown of :func:`matched_comparison`: per operating point a table of the models, then one table of the
    paired differences, "n.d." marking a difference whose interval contains 0 (not distinguishable).
    ``accuracy``: optional {model: test accuracy} for an extra column."""
    if not isinstance(matched, dict) or "budgets" not in matched or "targets" not in matched:
        raise ValueError(f"Expected matched as the dict of matched_comparison(...), got {matched!r:.80}.")
    accuracy = dict(accuracy or {})
    level = 95
    out = [f"Matched operating points on {matched['n_test']} shared test items; rates in %, cost per item; "
           f"{level}% paired percentile-bootstrap intervals in brackets that redo the operating point on every "
           "resample (procedure-level for the threshold; models and calibrators held fixed). Answer or escalate, "
           "no fallback.\n"]
    cols = ["model"] + (["acc %"] if accuracy else [])
    for blk in matched["budgets"]:
        out.append(f"\n**Escalation budget {100 * blk['escalation_budget']:g}%**: every model escalates its "
                   f"{blk['n_escalated']} least confident test items (ties: lower item index first) and answers "
                   "the rest.\n")
        c = cols + ["automation %", "selective risk %", "silent failure %", "task completion %", "cost / item"]
        out += ["| " + " | ".join(c) + " |", "|" + "---|" * len(c)]
        for name, m in blk["models"].items():
            out.append("| " + " | ".join([name] + ([_pct(accuracy.get(name))] if accuracy else []) + [
                _pct(m["automation_rate"]), _cell(m, "selective_risk"), _cell(m, "silent_failure_rate"),
                _cell(m, "task_completion_rate"), _cell(m, "expected_cost", _num)]) + " |")
    for blk in matched["targets"]:
        out.append(f"\n**Target selective risk {blk['target_risk']:g}** (delta {blk['delta']:g}, Learn then Test, "
                   f"family {blk['family']}): each model's threshold fitted on its calibration part (refitted on "
                   "resampled calibration items in every resample).\n")
        c = cols + ["certified", "automation %", "selective risk %", "task completion %", "cost / item"]
        out += ["| " + " | ".join(c) + " |", "|" + "---|" * len(c)]
        for name, m in blk["models"].items():
            out.append("| " + " | ".join([name] + ([_pct(accuracy.get(name))] if accuracy else []) + [
                str(m["certified"]), _cell(m, "automation_rate"), _cell(m, "selective_risk"),
                _cell(m, "task_completion_rate"), _cell(m, "expected_cost", _num)]) + " |")
    ref = matched.get("reference")
    out.append("\n**Paired differences** (model a minus model b" + (f" = {ref}" if ref else "")
               + "; the same resampled test items for both; points of %, cost per item). **n.d.** = not "
               "distinguishable: the interval contains 0.\n")
    c = ["operating point", "a", "b", "Δ task completion", "Δ automation", "Δ selective risk", "Δ cost / item"]
    out += ["| " + " | ".join(c) + " |", "|" + "---|" * len(c)]
    for blk in matched["budgets"] + matched["targets"]:
        point = (f"escalate {100 * blk['escalation_budget']:g}%" if "escalation_budget" in blk
                 else f"risk {blk['target_risk']:g}")
        matched_automation = "escalation_budget" in blk  # equal by construction: no interval to read
        for d in blk["differences"]:
            out.append("| " + " | ".join([point, d["a"], d["b"], _diff_cell(d["task_completion_rate"], _pct),
                                          "matched" if matched_automation else _diff_cell(d["automation_rate"], _pct),
                                          _diff_cell(d["selective_risk"], _pct),
                                          _diff_cell(d["expected_cost"], _num)]) + " |")
    return "\n".join(out) + "\n"
