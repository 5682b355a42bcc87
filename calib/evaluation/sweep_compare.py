"""Configurations of a sweep compared metric by metric, with an interval for each difference from the best.

For the sweep's report (``report.html``) and notebooks: :func:`compare_configurations` takes the runs of a
sweep (:func:`calib.evaluation.results.find_runs` mapped through :func:`~calib.evaluation.results.load_run`)
and, for each metric, finds the best configuration (by the mean over its seeds, in the metric's
:data:`DIRECTIONS`) and gives every other configuration's difference from it with an interval; a difference
whose interval holds 0 is *not distinguishable* from zero. Configurations are identified as
:mod:`calib.evaluation.results` identifies them (the override keys except ``seed`` and ``experiment``).

Methods, chosen per configuration against the best (see docs/report_statistics.md):

* **paired t** over the seeds both ran (>= 2 shared seeds; the same seed gives the same calibration/test split
  in these sweeps): the t interval of the mean per-seed difference. It holds the split-to-split variation.
* **Welch t** over seeds (fewer than 2 shared seeds, >= 2 seeds each): unpaired, unequal variances.
* **one seed each**: a normal interval from the two runs' own bootstrap intervals,
  ``d +- z * sqrt(se_a**2 + se_b**2)`` with ``se = (hi - lo) / (2 z_run)``. Two configurations scored on the
  same test items are positively correlated and this ignores it, so the interval is conservative (wider than
  needed) when that covariance is >= 0. It holds only test-item variation (the fitted components are fixed).
  No interval (``None``) when a run has none (e.g. ``eval.calibration_bootstrap=0``; conformal metrics).

Each row also carries a two-sided ``p_value`` of "difference = 0" from the same law as its interval and
``p_holm``, Holm-adjusted (:func:`calib.stats.holm_adjust`) over the configurations compared with the best for
that metric; ``distinguishable`` is the interval's verdict (uncorrected), ``distinguishable_holm``
``p_holm < 1 - level``.

Numpy and stdlib at module level; scipy (t and normal quantiles) inside the functions.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import defaultdict

import numpy as np

from calib._validation import check_fraction
from calib.evaluation import results as _results

__all__ = ["DEFAULT_METRICS", "DIRECTIONS", "compare_configurations", "comparison_markdown"]

#: Which way is better, per metric (``"section.name"`` of metrics.json). Conventions: automation and task
#: completion are better higher (more handled without harm), escalation and fallback lower (each costs people
#: or a degraded answer); silent failures, selective risk, expected cost and time lower. Conformal coverage is
#: "higher" only as a tie-breaker: every split-conformal configuration covers >= 1 - alpha by construction, so
#: read it together with ``conformal.mean_set_size`` (lower is better).
DIRECTIONS = {
    "calibrated.ece": "lower",
    "calibrated.nll": "lower",
    "calibrated.brier": "lower",
    "calibrated.accuracy": "higher",
    "calibrated.classwise_ece": "lower",
    "calibrated.ece_debiased": "lower",
    "policy.automation_rate": "higher",
    "policy.escalation_rate": "lower",
    "policy.fallback_rate": "lower",
    "policy.task_completion_rate": "higher",
    "policy.silent_failure_rate": "lower",
    "policy.selective_risk": "lower",
    "policy.expected_cost": "lower",
    "policy.expected_time": "lower",
    "conformal.coverage": "higher",
    "conformal.mean_set_size": "lower",
}

#: Every metric of :data:`DIRECTIONS`, in report order; those no run has are left out of the result.
DEFAULT_METRICS = tuple(DIRECTIONS)

_LEVEL_IN_TEXT = re.compile(r"\blevel ([0-9]*\.?[0-9]+)")


# --- reading one run --------------------------------------------------------------------------------------

def _value(metrics, metric):
    section, _, name = metric.partition(".")
    block = metrics.get(section)
    if not isinstance(block, dict):
        return None
    v = block.get(name)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        return None
    return float(v)


def _run_interval(metrics, metric):
    """``((lo, hi), level, None)`` of the run's own bootstrap interval of ``metric``, or ``(None, None, why)``."""
    section, _, name = metric.partition(".")
    if section == "calibrated":
        block = metrics.get("calibration_ci")
        if not isinstance(block, dict):
            return None, None, "no interval: the run has no calibration_ci (eval.calibration_bootstrap=0)"
        pair, level = (block.get("calibrated") or {}).get(name), block.get("level")
    elif section == "policy":
        policy = metrics.get("policy") or {}
        pair = (policy.get("ci") or {}).get(name) if isinstance(policy.get("ci"), dict) else None
        match = _LEVEL_IN_TEXT.search(str(policy.get("ci_method", "")))
        level = float(match.group(1)) if match else None
        if pair is not None and level is None:
            return None, None, "no interval: policy.ci_method does not state the interval's level"
    else:
        return None, None, f"no interval: metrics.json has none for {section} metrics"
    ok = (isinstance(pair, (list, tuple)) and len(pair) == 2
          and all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in pair)
          and pair[0] <= pair[1])
    if not ok:
        return None, None, f"no interval: the run has no bootstrap interval of {metric}"
    if not (isinstance(level, numbers.Real) and 0.0 < float(level) < 1.0):
        return None, None, f"no interval: the level of {metric}'s interval is missing or not in (0, 1)"
    return (float(pair[0]), float(pair[1])), float(level), None


# --- the laws ---------------------------------------------------------------------------------------------

def _t_interval(x, level):
    """Mean, t interval and two-sided p-value (H0: mean 0) of the values ``x`` (n >= 2)."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    n = x.size
    mean = float(x.mean())
    se = float(x.std(ddof=1)) / math.sqrt(n)
    q = float(stats.t.ppf(0.5 + level / 2.0, n - 1))
    p = (1.0 if mean == 0 else 0.0) if se == 0 else float(2.0 * stats.t.sf(abs(mean) / se, n - 1))
    return mean, [mean - q * se, mean + q * se], p


def _welch(a, b, level):
    """mean(a) - mean(b), its Welch t interval and p-value (each of a, b with >= 2 values)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    d = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return d, [d, d], (1.0 if d == 0 else 0.0)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    q = float(stats.t.ppf(0.5 + level / 2.0, df))
    return d, [d - q * se, d + q * se], float(2.0 * stats.t.sf(abs(d) / se, df))


def _z(level):
    from scipy import stats

    return float(stats.norm.ppf(0.5 + level / 2.0))


def _normal(d, se, level):
    from scipy import stats

    if se == 0:
        return [d, d], (1.0 if d == 0 else 0.0)
    q = _z(level)
    return [d - q * se, d + q * se], float(2.0 * stats.norm.sf(abs(d) / se))


# --- the comparison ---------------------------------------------------------------------------------------

def _check_runs(runs):
    if isinstance(runs, (str, bytes, dict)) or not hasattr(runs, "__iter__"):
        raise TypeError(f"Expected runs as a list of run dicts (results.load_run), got {type(runs).__name__}.")
    runs = list(runs)
    if not runs:
        raise ValueError("Expected runs as a non-empty list of run dicts (results.load_run), got an empty list.")
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            raise TypeError(f"Expected runs[{i}] as a dict with run, overrides, seed and metrics "
                            f"(results.load_run), got {type(run).__name__}.")
        missing = [k for k in ("run", "overrides", "seed", "metrics") if k not in run]
        if missing:
            raise ValueError(f"Expected runs[{i}] as a dict with run, overrides, seed and metrics "
                             f"(results.load_run), got a dict without {missing}.")
        if not isinstance(run["overrides"], dict) or not isinstance(run["metrics"], dict):
            raise TypeError(f"Expected runs[{i}]['overrides'] and ['metrics'] as dicts, got "
                             f"{type(run['overrides']).__name__} and {type(run['metrics']).__name__}.")
    return [{"choices": {}, "config": {}, **run} for run in runs]


def _check_metrics(metrics):
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError(f"Expected metrics as names among {list(DIRECTIONS)}, got none.")
    unknown = [m for m in metrics if not isinstance(m, str) or m not in DIRECTIONS]
    if unknown:
        raise ValueError(f"Expected metrics among {list(DIRECTIONS)} (section.name of metrics.json), "
                         f"got unknown {unknown}.")
    return tuple(dict.fromkeys(metrics))


def _row_interval(values, run_intervals, level):
    """The configuration's own interval: t over seeds (>= 2), else the single run's bootstrap interval at
    ``level`` (rescaled about the value when the run's level differs); None when neither exists."""
    if len(values) >= 2:
        return _t_interval(list(values.values()), level)[1]
    (seed, v), = values.items()
    pair, run_level, _ = run_intervals[seed]
    if pair is None:
        return None
    if run_level == level:
        return list(pair)
    scale = _z(level) / _z(run_level)
    return [v - (v - pair[0]) * scale, v + (pair[1] - v) * scale]


def _compare(cfg, best, level):
    """``(difference, interval, p_value, method)`` of configuration ``cfg`` minus ``best``."""
    shared = [s for s in cfg["values"] if s in best["values"]]
    n_a, n_b = len(cfg["values"]), len(best["values"])
    if len(shared) >= 2:
        diffs = [cfg["values"][s] - best["values"][s] for s in shared]
        d, interval, p = _t_interval(diffs, level)
        note = "" if len(shared) == n_a == n_b else f" (over the {len(shared)} shared of {n_a} and {n_b} seeds)"
        return d, interval, p, f"paired t over {len(shared)} shared seeds{note}"
    if n_a >= 2 and n_b >= 2:
        d, interval, p = _welch(list(cfg["values"].values()), list(best["values"].values()), level)
        note = "one seed shared, ignored (conservative)" if shared else "no shared seed"
        return d, interval, p, f"Welch t over {n_a} and {n_b} seeds ({note})"
    if n_a == 1 and n_b == 1 or len(shared) == 1:
        s_a = shared[0] if shared else next(iter(cfg["values"]))
        s_b = shared[0] if shared else next(iter(best["values"]))
        d = cfg["values"][s_a] - best["values"][s_b]
        parts = []
        for who, c, s in (("this configuration", cfg, s_a), ("the best", best, s_b)):
            pair, run_level, why = c["intervals"][s]
            if pair is None:
                return d, None, None, f"{why} ({who}, seed {s or '(none)'})"
            parts.append((pair[1] - pair[0]) / (2.0 * _z(run_level)))
        interval, p = _normal(d, math.sqrt(parts[0] ** 2 + parts[1] ** 2), level)
        if s_a == s_b:
            where = (f"seed {s_a}; ignores their positive correlation on the same test items (conservative when "
                     "it is >= 0)")
        else:
            where = (f"seeds {s_a} and {s_b}: different splits, split-to-split variation (of the fitted "
                     "components) not included")
        return d, interval, p, f"normal from the two runs' bootstrap intervals, {where}"
    return (None, None, None, (f"not compared: {n_a} seed(s) against the best's {n_b}, none shared "
                               "(needs >= 2 shared seeds, >= 2 seeds each, or one seed each)"))


def compare_configurations(runs, metrics=DEFAULT_METRICS, *, level=0.95):
    """Every configuration of a sweep against the best one, per metric.

    Parameters
    ----------
    runs : list of dict
        Runs as :func:`calib.evaluation.results.load_run` returns them (``run``, ``overrides``, ``choices``,
        ``config``, ``seed``, ``metrics``).
    metrics : sequence of str
        ``"section.name"`` keys of metrics.json among :data:`DIRECTIONS`; those no run has are skipped.
    level : float in (0, 1)
        Confidence level of every interval.

    Returns
    -------
    list of dict, one per metric present: ``metric``, ``direction`` (``"lower"`` / ``"higher"`` is better),
    ``best`` (label), ``level``, ``rows`` (best first, then by mean in the metric's direction): ``config``,
    ``overrides``, ``n_seeds``, ``seeds``, ``mean``, ``interval`` (t over seeds, or the single run's bootstrap
    interval; None without one), ``difference`` (this minus the best; the paired estimate when only some seeds
    are shared), ``difference_interval``, ``distinguishable`` (the interval excludes 0; None without an
    interval or for the best), ``p_value``, ``p_holm`` (Holm over this metric's comparisons),
    ``distinguishable_holm`` and ``method``.

    Runs of one configuration with the same seed (a repeated job) are averaged as one seed.

    >>> runs = [{"run": f"{c}/{s}", "overrides": {"calibrator": c, "seed": str(s)}, "seed": str(s),
    ...          "metrics": {"calibrated": {"ece": e}}}
    ...         for c, es in (("ts", (0.020, 0.022, 0.019)), ("iso", (0.030, 0.035, 0.031))) for s, e in enumerate(es)]
    >>> out = compare_configurations(runs, ["calibrated.ece"])
    >>> out[0]["best"], [r["config"] for r in out[0]["rows"]], out[0]["rows"][1]["distinguishable"]
    ('calibrator=ts', ['calibrator=ts', 'calibrator=iso'], True)
    """
    from calib.stats import holm_adjust

    runs = _check_runs(runs)
    metrics = _check_metrics(metrics)
    level = check_fraction(level, "level")
    columns = _results.override_columns(runs)
    keys = [_results._config_key({k: _results.fill_key(run, k) for k in columns}, columns) for run in runs]
    configs = list(dict.fromkeys(keys))
    fixed = _results._fixed_keys(configs)
    out = []
    for metric in metrics:
        direction = DIRECTIONS[metric]
        per = defaultdict(lambda: defaultdict(list))  # config -> seed -> [(value, interval)]
        for run, key in zip(runs, keys):
            v = _value(run["metrics"], metric)
            if v is not None:
                per[key][str(run["seed"])].append((v, _run_interval(run["metrics"], metric)))
        if not per:
            continue
        cfgs = []
        for key in configs:
            if key not in per:
                continue
            values, intervals = {}, {}
            for seed, items in per[key].items():
                values[seed] = float(np.mean([v for v, _ in items], dtype=np.float64))
                # a repeated job: its interval only when there is one run (two runs' intervals do not combine)
                intervals[seed] = items[0][1] if len(items) == 1 else (
                    None, None, f"no interval: {len(items)} runs share seed {seed}")
            cfgs.append({"key": key, "values": values, "intervals": intervals,
                         "mean": float(np.mean(list(values.values()), dtype=np.float64))})
        sign = 1.0 if direction == "lower" else -1.0
        cfgs.sort(key=lambda c: sign * c["mean"])  # stable: ties keep the sweep's order
        best = cfgs[0]
        rows = []
        for c in cfgs:
            row = {"config": _results._label(c["key"], fixed), "overrides": dict(c["key"]),
                   "n_seeds": len(c["values"]), "seeds": list(c["values"]), "mean": c["mean"],
                   "interval": _row_interval(c["values"], c["intervals"], level)}
            if c is best:
                row.update(difference=0.0, difference_interval=None, distinguishable=None, p_value=None,
                           method="the best configuration (reference)")
            else:
                d, interval, p, method = _compare(c, best, level)
                row.update(difference=d, difference_interval=interval,
                           distinguishable=None if interval is None else bool(interval[0] > 0 or interval[1] < 0),
                           p_value=p, method=method)
            rows.append(row)
        tested = [r for r in rows if r["p_value"] is not None]
        adjusted = holm_adjust(np.array([r["p_value"] for r in tested], dtype=np.float64)) if tested else []
        for r in rows:
            r["p_holm"], r["distinguishable_holm"] = None, None
        for r, p in zip(tested, np.atleast_1d(adjusted)):
            r["p_holm"] = float(p)
            r["distinguishable_holm"] = bool(p < 1.0 - level)
        out.append({"metric": metric, "direction": direction, "best": rows[0]["config"], "level": level,
                    "rows": rows})
    return out


def _num(x):
    return "–" if x is None else _results.format_number(x)


def comparison_markdown(result):
    """One markdown table per metric of :func:`compare_configurations`'s result; rows not distinguishable from
    the best are marked ``≈ best (not distinguishable)``."""
    if not isinstance(result, list):
        raise TypeError(f"Expected result as compare_configurations' list of dicts, got {type(result).__name__}.")
    parts = []
    for block in result:
        pct = f"{100 * block['level']:g}%"
        lines = [f"### {block['metric']} ({block['direction']} is better; best: {block['best']})", "",
                 (f"| configuration | seeds | mean | {pct} interval | difference from best | {pct} interval | "
                  "verdict | method |"), "|---|---|---|---|---|---|---|---|"]
        for r in block["rows"]:
            ci = "–" if r["interval"] is None else f"[{_num(r['interval'][0])}, {_num(r['interval'][1])}]"
            dci = ("–" if r["difference_interval"] is None else
                   f"[{_num(r['difference_interval'][0])}, {_num(r['difference_interval'][1])}]")
            if r["method"].startswith("the best"):
                verdict = "best"
            elif r["distinguishable"] is None:
                verdict = "no interval"
            else:
                verdict = "differs" if r["distinguishable"] else "≈ best (not distinguishable)"
            cells = [r["config"], str(r["n_seeds"]), _num(r["mean"]), ci,
                     "–" if r["difference"] is None else ("+" if r["difference"] > 0 else "") + _num(r["difference"]), dci, verdict, r["method"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + ("\n" if parts else "")
