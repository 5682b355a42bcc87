"""Product metrics of a routing decision, with seeded bootstrap confidence intervals.

Definitions (n items; A answered, E escalated, F fallen back; "wrong" compares with the true label;
h = human accuracy; costs and times from the :class:`~calib.policy.costs.CostModel`):

=========================  ==========================================================================
automation_rate            A / n
escalation_rate            E / n
fallback_rate              F / n
selective_risk             #(answered and wrong) / A           (nan when A = 0)
selective_accuracy         1 - selective_risk
silent_failure_rate        #(answered and wrong) / n
recovery_rate              #(model wrong and not answered) / #(model wrong)   (nan without errors)
task_completion_rate       (#(answered and right) + h * E + #(fallback and right)) / n
expected_cost              (wrong_answer * #(answered and wrong) + (escalation + (1 - h) * wrong_answer) * E
                            + wrong_fallback * #(fallback and wrong)) / n
expected_time              (model_time * A + human_time * E + fallback_time * F) / n
time_to_correct_output     expected_time / task_completion_rate   (handling time per correct output)
=========================  ==========================================================================

Every metric depends on an item only through its cell (action, model right?, fallback right?), 12
cells in all. Resampling n items with replacement is therefore a multinomial draw over the 12 cell
frequencies, so the bootstrap (Efron & Tibshirani 1993, percentile intervals) runs in O(B) without
touching the items — the same distribution as ``scipy.stats.bootstrap`` with ``method="percentile"``.

**What the intervals cover.** Only the test items are resampled; the routing decisions (the fitted policy,
its threshold) are held fixed. The interval is therefore *conditional on the calibration split*: it covers
the rates of this fitted policy on the test population, not what refitting the policy on a new calibration
set would give (across re-splits the automation rate varies more than this interval says). ``ci_method``
says so; the procedure-level interval, which refits, is
:func:`calib.evaluation.intervals.procedure_bootstrap` (docs/metrics.md).
"""

from __future__ import annotations

import numbers

import numpy as np

from calib._validation import as_array, check_fraction, check_labels, check_positive_int
from calib.policy.costs import as_cost_model

__all__ = ["RATE_KEYS", "outcome_cells", "metrics_from_counts", "product_metrics", "check_actions"]

#: Metrics reported with a confidence interval.
RATE_KEYS = ("automation_rate", "escalation_rate", "fallback_rate", "selective_risk", "selective_accuracy",
             "silent_failure_rate", "recovery_rate", "task_completion_rate", "expected_cost", "expected_time",
             "time_to_correct_output")


def outcome_cells(actions, prediction, labels, fallback=None):
    """Cell index per item: ``4 * action + 2 * model_right + fallback_right`` in [0, 12)."""
    y = check_labels(labels, "labels")
    n = y.size
    if n == 0:
        raise ValueError("Expected labels of at least one item, got length 0.")
    a = check_actions(actions, n)
    pred = check_labels(prediction, "prediction", n_samples=n)
    model_right = pred == y
    fb_right = np.zeros(n, dtype=bool) if fallback is None else check_labels(fallback, "fallback", n_samples=n) == y
    if fallback is None and (a == 2).any():
        raise ValueError("Expected fallback labels for items routed to fallback, got fallback=None.")
    return (4 * a.astype(np.int64) + 2 * model_right + fb_right).astype(np.int64)


def check_actions(actions, n, name="actions"):
    """Actions (n,) of 0 (answer), 1 (escalate), 2 (fallback) as integers (bool and float refused)."""
    a = as_array(actions, name)
    if a.dtype.kind not in "iu":
        raise TypeError(f"Expected {name} as integers 0 (answer), 1 (escalate), 2 (fallback), got dtype {a.dtype}.")
    if a.shape != (n,):
        raise ValueError(f"Expected {name} of length {n} (one per label), got shape {a.shape}.")
    bad = ~np.isin(a, (0, 1, 2))
    if bad.any():
        raise ValueError(f"Expected {name} with values 0/1/2, got {np.unique(a[bad])[:5].tolist()}.")
    return a.astype(np.int64)


def _check_counts(counts):
    c = as_array(counts, "counts")
    if c.dtype.kind not in "iuf" or c.dtype.kind == "b":
        raise TypeError(f"Expected counts as non-negative integer cell counts, got dtype {c.dtype}.")
    if c.ndim not in (1, 2) or c.shape[-1] != 12:
        raise ValueError(f"Expected counts of shape (12,) or (B, 12) (one per outcome cell), got shape {c.shape}.")
    c = np.asarray(c, dtype=np.float64)
    bad = ~(np.isfinite(c) & (c >= 0) & (c == np.round(c)))
    if bad.any():
        raise ValueError(f"Expected counts as non-negative integers, got {int(bad.sum())} other entries "
                         f"(e.g. {float(c[bad][0])!r}).")
    empty = c.reshape(-1, 12).sum(axis=1) == 0
    if empty.any():
        raise ValueError(f"Expected counts of at least one item per row, got {int(empty.sum())} rows of zeros.")
    return c


def metrics_from_counts(counts, costs=None):
    """Metrics from cell counts of shape (12,) or (B, 12); returns a dict of floats or (B,) arrays.

    >>> c = np.zeros(12); c[[2, 0, 4 + 2, 4, 8 + 1]] = [6, 1, 1, 1, 1]   # 10 items
    >>> m = metrics_from_counts(c, {"human_accuracy": 0.9, "escalation": 0.2})
    >>> round(float(m["task_completion_rate"]), 4), round(float(m["recovery_rate"]), 4)
    (0.88, 0.6667)
    """
    cm = as_cost_model(costs)
    c = _check_counts(counts)
    squeeze = c.ndim == 1
    c = np.atleast_2d(c).reshape(-1, 3, 2, 2)  # (B, action, model_right, fallback_right)
    n = c.sum(axis=(1, 2, 3))
    per_action = c.sum(axis=(2, 3))
    n_a, n_e, n_f = per_action[:, 0], per_action[:, 1], per_action[:, 2]
    ans_wrong = c[:, 0, 0, :].sum(axis=1)
    ans_right = c[:, 0, 1, :].sum(axis=1)
    model_wrong = c[:, :, 0, :].sum(axis=(1, 2))
    intercepted = c[:, 1:, 0, :].sum(axis=(1, 2))
    fb_right = c[:, 2, :, 1].sum(axis=1)
    fb_wrong = c[:, 2, :, 0].sum(axis=1)
    h = cm.human_accuracy
    with np.errstate(invalid="ignore", divide="ignore"):
        sel_risk = ans_wrong / n_a
        completion = (ans_right + h * n_e + fb_right) / n
        time = (cm.model_time * n_a + cm.human_time * n_e + cm.fallback_time * n_f) / n
        out = {
            "automation_rate": n_a / n,
            "escalation_rate": n_e / n,
            "fallback_rate": n_f / n,
            "selective_risk": sel_risk,
            "selective_accuracy": 1.0 - sel_risk,
            "silent_failure_rate": ans_wrong / n,
            "recovery_rate": intercepted / model_wrong,
            "task_completion_rate": completion,
            "expected_cost": (cm.wrong_answer * ans_wrong + cm.escalation_cost * n_e
                              + cm.wrong_fallback * fb_wrong) / n,
            "expected_time": time,
            "time_to_correct_output": time / completion,
            "model_accuracy": 1.0 - model_wrong / n,
        }
    if squeeze:
        out = {k: float(v[0]) for k, v in out.items()}
    return out


def product_metrics(actions, prediction, labels, fallback=None, *, costs=None, n_resamples=2000,
                    confidence_level=0.95, seed=0):
    """Product metrics of a routing with percentile bootstrap intervals.

    Parameters
    ----------
    actions : ndarray (n,) of 0 (answer), 1 (escalate), 2 (fallback)
    prediction : ndarray (n,)   the model's label
    labels : ndarray (n,)       true labels
    fallback : ndarray (n,), optional   the fallback's label (needed when any action is 2)
    costs : mapping or CostModel, optional
    n_resamples : int, default 2000
    confidence_level : float in (0, 1), default 0.95
    seed : int, default 0

    Returns
    -------
    dict with every metric of :data:`RATE_KEYS` (plus ``model_accuracy``, ``n``), ``"ci"``:
    {metric: [lo, hi]} (None where undefined) and ``"ci_method"`` (what the interval holds fixed: the
    routing decisions, i.e. it is conditional on the calibration split).

    >>> m = product_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1]),
    ...                     np.array([0, 0, 0, 1]), costs={"human_accuracy": 1.0})
    >>> m["silent_failure_rate"], m["task_completion_rate"], m["recovery_rate"]
    (0.25, 0.75, 0.5)
    """
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    confidence_level = check_fraction(confidence_level, "confidence_level")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Expected seed as an integer >= 0, got {seed!r}.")
    costs = as_cost_model(costs)
    cells = outcome_cells(actions, prediction, labels, fallback)
    counts = np.bincount(cells, minlength=12)
    n = int(counts.sum())
    point = metrics_from_counts(counts, costs)
    rng = np.random.default_rng(seed)
    boot = metrics_from_counts(rng.multinomial(n, counts / n, size=n_resamples), costs)
    alpha = (1.0 - confidence_level) / 2.0
    ci = {}
    for key in RATE_KEYS:
        v = boot[key]
        v = v[np.isfinite(v)]
        ci[key] = None if v.size == 0 else [float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))]
    out = {k: (None if not np.isfinite(v) else float(v)) for k, v in point.items()}
    out["n"] = n
    out["ci"] = ci
    out["ci_method"] = (f"percentile bootstrap over test items, fitted policy held fixed (conditional on the "
                        f"calibration split), {n_resamples} resamples, level {confidence_level}, seed {seed}")
    return out
