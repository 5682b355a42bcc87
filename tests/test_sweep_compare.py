"""calib.evaluation.sweep_compare: configurations of a sweep against the best, with honest intervals.

Intervals are checked against scipy's (``ttest_rel`` / ``ttest_ind(equal_var=False)`` / ``ttest_1samp``
``.confidence_interval``); the one-seed normal rule by simulation (fixed seeds, exact binomial tests of its
coverage from calib.stats); Holm against calib.stats.holm_adjust. Runs are built by hand, shaped like
results.load_run's dicts; one slow test runs a real two-seed sweep on embedded data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from calib.evaluation import results
from calib.evaluation.sweep_compare import (
    DEFAULT_METRICS,
    DIRECTIONS,
    compare_configurations,
    comparison_markdown,
)
from calib.stats import binom_greater_pvalue, binom_less_pvalue, holm_adjust

REPO = Path(__file__).resolve().parents[1]


def _run(config, seed, section_values, *, ci=None, ci_level=0.95, policy_ci=None, policy_level=0.95):
    """A run dict as results.load_run returns it. ``config``: override dict (without seed)."""
    metrics = {}
    for section, values in section_values.items():
        metrics[section] = dict(values)
    if ci is not None:
        metrics["calibration_ci"] = {"level": ci_level, "calibrated": ci}
    if policy_ci is not None:
        metrics["policy"]["ci"] = policy_ci
        metrics["policy"]["ci_method"] = (f"percentile bootstrap over test items, fitted policy held fixed "
                                          f"(conditional on the calibration split), 2000 resamples, "
                                          f"level {policy_level}, seed 0")
    overrides = {**config, "seed": str(seed)}
    name = ",".join(f"{k}={v}" for k, v in config.items())
    return {"run": f"{name}/seed={seed}", "overrides": overrides, "choices": {}, "config": {},
            "seed": str(seed), "metrics": metrics}


def _block(out, metric):
    (block,) = [b for b in out if b["metric"] == metric]
    return block


def _row(block, label):
    (row,) = [r for r in block["rows"] if r["config"] == label]
    return row


def _sweep_values(rng, means, seeds, sd=0.004, split_sd=0.003):
    """``{config: {seed: value}}`` with a shared per-seed (split) effect, as in a real sweep."""
    split = {s: rng.normal(0, split_sd) for s in seeds}
    return {c: {s: m + split[s] + rng.normal(0, sd) for s in seeds} for c, m in means.items()}


# --- intervals equal scipy's --------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [0.9, 0.95])
def test_paired_t_interval_equals_scipy_ttest_rel(level):
    rng = np.random.default_rng(0)
    seeds = range(5)
    vals = _sweep_values(rng, {"temperature": 0.020, "isotonic": 0.024, "vector": 0.021}, seeds)
    runs = [_run({"calibrator": c}, s, {"calibrated": {"ece": v[s]}}) for c, v in vals.items() for s in seeds]
    block = _block(compare_configurations(runs, ["calibrated.ece"], level=level), "calibrated.ece")
    means = {c: np.mean(list(v.values())) for c, v in vals.items()}
    best = min(means, key=means.get)
    assert block["best"] == f"calibrator={best}"
    for c, v in vals.items():
        row = _row(block, f"calibrator={c}")
        x = np.array([v[s] for s in seeds])
        lo, hi = stats.ttest_1samp(x, 0.0).confidence_interval(level)
        assert row["interval"] == pytest.approx([lo, hi], rel=1e-12, abs=1e-15)
        assert row["mean"] == pytest.approx(x.mean(), rel=1e-14)
        if c == best:
            assert row["difference"] == 0 and row["difference_interval"] is None and row["distinguishable"] is None
            continue
        y = np.array([vals[best][s] for s in seeds])
        res = stats.ttest_rel(x, y)
        ci = res.confidence_interval(level)
        assert row["difference"] == pytest.approx(x.mean() - y.mean(), rel=1e-12)
        assert row["difference_interval"] == pytest.approx([ci.low, ci.high], rel=1e-12, abs=1e-15)
        assert row["p_value"] == pytest.approx(res.pvalue, rel=1e-10)
        assert row["distinguishable"] == bool(ci.low > 0 or ci.high < 0)
        assert row["method"].startswith("paired t over 5 shared seeds")


def test_paired_over_shared_seeds_only_when_seed_sets_differ():
    rng = np.random.default_rng(1)
    a = {0: 0.02, 1: 0.021, 2: 0.019}
    b = {1: 0.03, 2: 0.028, 3: 0.031, 4: 0.029}
    runs = [_run({"calibrator": "ts"}, s, {"calibrated": {"nll": v}}) for s, v in a.items()]
    runs += [_run({"calibrator": "iso"}, s, {"calibrated": {"nll": v + rng.normal(0, 1e-3)}}) for s, v in b.items()]
    block = _block(compare_configurations(runs, ["calibrated.nll"]), "calibrated.nll")
    iso = _row(block, "calibrator=iso")
    b_vals = {int(r["seed"]): r["metrics"]["calibrated"]["nll"] for r in runs if r["overrides"]["calibrator"] == "iso"}
    ci = stats.ttest_rel([b_vals[1], b_vals[2]], [a[1], a[2]]).confidence_interval(0.95)
    assert iso["difference_interval"] == pytest.approx([ci.low, ci.high], rel=1e-12)
    assert iso["difference"] == pytest.approx((b_vals[1] - a[1] + b_vals[2] - a[2]) / 2, rel=1e-12)
    assert "over the 2 shared of 4 and 3 seeds" in iso["method"]


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_welch_interval_equals_scipy_ttest_ind(level):
    rng = np.random.default_rng(2)
    runs = [_run({"calibrator": "ts"}, s, {"calibrated": {"brier": 0.30 + rng.normal(0, 0.004)}}) for s in (0, 1, 2)]
    runs += [_run({"calibrator": "iso"}, s, {"calibrated": {"brier": 0.305 + rng.normal(0, 0.01)}})
             for s in (3, 4, 5, 6)]
    block = _block(compare_configurations(runs, ["calibrated.brier"], level=level), "calibrated.brier")
    best = block["rows"][0]
    other = block["rows"][1]
    x = [r["metrics"]["calibrated"]["brier"] for r in runs if r["overrides"]["calibrator"] == other["overrides"]["calibrator"]]
    y = [r["metrics"]["calibrated"]["brier"] for r in runs if r["overrides"]["calibrator"] == best["overrides"]["calibrator"]]
    res = stats.ttest_ind(x, y, equal_var=False)
    ci = res.confidence_interval(level)
    assert other["difference_interval"] == pytest.approx([ci.low, ci.high], rel=1e-12)
    assert other["p_value"] == pytest.approx(res.pvalue, rel=1e-10)
    assert other["method"].startswith("Welch t over")


def test_holm_over_the_configurations_of_a_metric():
    rng = np.random.default_rng(3)
    seeds = range(4)
    vals = _sweep_values(rng, {"a": 0.020, "b": 0.022, "c": 0.030, "d": 0.021}, seeds)
    runs = [_run({"calibrator": c}, s, {"calibrated": {"ece": v[s]}}) for c, v in vals.items() for s in seeds]
    block = _block(compare_configurations(runs, ["calibrated.ece"]), "calibrated.ece")
    best = block["rows"][0]["overrides"]["calibrator"]
    others = block["rows"][1:]
    raw = [stats.ttest_rel([vals[r["overrides"]["calibrator"]][s] for s in seeds],
                           [vals[best][s] for s in seeds]).pvalue for r in others]
    expected = holm_adjust(np.array(raw))
    assert [r["p_holm"] for r in others] == pytest.approx(list(expected), rel=1e-9)
    assert [r["distinguishable_holm"] for r in others] == [bool(p < 0.05) for p in expected]
    assert block["rows"][0]["p_holm"] is None


# --- the one-seed rule: coverage by simulation --------------------------------------------------------------

def _one_seed_coverage(rng, n_sim, rho, run_level):
    """Coverage of the true difference by the one-seed interval, estimates normal with known se."""
    mu = np.array([0.020, 0.023])
    se = np.array([0.002, 0.003])
    cov = np.array([[se[0] ** 2, rho * se[0] * se[1]], [rho * se[0] * se[1], se[1] ** 2]])
    draws = rng.multivariate_normal(mu, cov, size=n_sim)
    half = stats.norm.ppf(0.5 + run_level / 2) * se
    covered = 0
    for a, b in draws:
        runs = [_run({"calibrator": name}, 0, {"calibrated": {"ece": v}}, ci_level=run_level,
                     ci={"ece": [v - h, v + h]}) for name, v, h in (("a", a, half[0]), ("b", b, half[1]))]
        row = _block(compare_configurations(runs, ["calibrated.ece"]), "calibrated.ece")["rows"][1]
        true = mu[0] - mu[1] if row["overrides"]["calibrator"] == "a" else mu[1] - mu[0]
        lo, hi = row["difference_interval"]
        covered += lo <= true <= hi
    return covered


@pytest.mark.parametrize("run_level", [0.95, 0.9])
def test_one_seed_rule_covers_at_the_level_for_independent_estimates(run_level):
    n = 2000
    k = _one_seed_coverage(np.random.default_rng(10), n, 0.0, run_level)
    p_two_sided = min(1.0, 2 * min(binom_less_pvalue(k, n, 0.95), binom_greater_pvalue(k, n, 0.95)))
    assert p_two_sided > 1e-3, (k, n)


def test_one_seed_rule_is_conservative_for_positively_correlated_estimates():
    n = 2000
    k = _one_seed_coverage(np.random.default_rng(11), n, 0.6, 0.95)
    assert binom_less_pvalue(k, n, 0.95) > 1e-3, (k, n)  # H0 coverage >= 0.95 not rejected
    assert binom_greater_pvalue(k, n, 0.95) < 1e-3, (k, n)  # and it is above 0.95: the interval is wider


def test_one_seed_rule_formula_and_method_text():
    runs = [_run({"calibrator": "ts"}, 0, {"calibrated": {"ece": 0.012}}, ci={"ece": [0.010, 0.016]}),
            _run({"calibrator": "iso"}, 0, {"calibrated": {"ece": 0.020}}, ci={"ece": [0.017, 0.025]})]
    row = _block(compare_configurations(runs, ["calibrated.ece"]), "calibrated.ece")["rows"][1]
    z = stats.norm.ppf(0.975)
    se = np.hypot(0.006 / (2 * z), 0.008 / (2 * z))
    assert row["difference"] == pytest.approx(0.008)
    assert row["difference_interval"] == pytest.approx([0.008 - z * se, 0.008 + z * se], rel=1e-12)
    assert row["interval"] == [0.017, 0.025]  # the run's own bootstrap interval
    assert "conservative" in row["method"] and "seed 0" in row["method"]


def test_policy_interval_level_read_from_ci_method():
    policy = lambda v: {"policy": {"automation_rate": v}}
    runs = [_run({"calibrator": "ts"}, 0, policy(0.30), policy_ci={"automation_rate": [0.28, 0.32]}, policy_level=0.9),
            _run({"calibrator": "iso"}, 0, policy(0.20), policy_ci={"automation_rate": [0.18, 0.22]}, policy_level=0.9)]
    block = _block(compare_configurations(runs, ["policy.automation_rate"]), "policy.automation_rate")
    row = block["rows"][1]
    se = 0.04 / (2 * stats.norm.ppf(0.95))
    d = 0.20 - 0.30
    q = stats.norm.ppf(0.975)
    assert row["difference_interval"] == pytest.approx([d - q * np.sqrt(2) * se, d + q * np.sqrt(2) * se], rel=1e-12)


# --- direction ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric,best", [("calibrated.ece", "b"), ("calibrated.nll", "b"),
                                         ("calibrated.accuracy", "a"), ("policy.automation_rate", "a"),
                                         ("policy.escalation_rate", "b"), ("policy.task_completion_rate", "a")])
def test_direction_picks_the_best(metric, best):
    section, name = metric.split(".")
    value = {"a": [0.9, 0.91], "b": [0.1, 0.12], "c": [0.5, 0.52]}
    runs = [_run({"calibrator": c}, s, {section: {name: v[s]}}) for c, v in value.items() for s in (0, 1)]
    block = _block(compare_configurations(runs, [metric]), metric)
    assert block["direction"] == DIRECTIONS[metric]
    assert block["best"] == f"calibrator={best}"
    diffs = [r["difference"] for r in block["rows"][1:]]
    assert all(d > 0 for d in diffs) if block["direction"] == "lower" else all(d < 0 for d in diffs)
    assert [r["mean"] for r in block["rows"]] == sorted((r["mean"] for r in block["rows"]),
                                                         reverse=block["direction"] == "higher")


def test_directions_table_covers_the_default_metrics():
    assert set(DEFAULT_METRICS) == set(DIRECTIONS)
    assert set(DIRECTIONS.values()) == {"lower", "higher"}
    assert DIRECTIONS["calibrated.accuracy"] == "higher" and DIRECTIONS["policy.escalation_rate"] == "lower"


# --- missing intervals and values ---------------------------------------------------------------------------

def test_missing_intervals_give_none_with_the_reason():
    runs = [_run({"calibrator": "ts"}, 0, {"calibrated": {"ece": 0.01}, "conformal": {"coverage": 0.9}}),
            _run({"calibrator": "iso"}, 0, {"calibrated": {"ece": 0.02}, "conformal": {"coverage": 0.91}})]
    out = compare_configurations(runs)
    assert [b["metric"] for b in out] == ["calibrated.ece", "conformal.coverage"]  # only metrics present
    for block in out:
        row = block["rows"][1]
        assert row["difference_interval"] is None and row["distinguishable"] is None and row["p_holm"] is None
        assert row["interval"] is None and row["difference"] is not None
    assert "eval.calibration_bootstrap=0" in _block(out, "calibrated.ece")["rows"][1]["method"]
    assert "no interval" in _block(out, "conformal.coverage")["rows"][1]["method"]
    assert "≈ best" not in comparison_markdown(out) and "no interval" in comparison_markdown(out)


def test_policy_interval_none_and_null_values():
    runs = [_run({"calibrator": "ts"}, 0, {"policy": {"selective_risk": 0.01}}, policy_ci={"selective_risk": None}),
            _run({"calibrator": "iso"}, 0, {"policy": {"selective_risk": 0.02}},
                 policy_ci={"selective_risk": [0.01, 0.03]}),
            _run({"calibrator": "vs"}, 0, {"policy": {"selective_risk": None}})]  # null in metrics.json: skipped
    block = _block(compare_configurations(runs, ["policy.selective_risk"]), "policy.selective_risk")
    assert [r["config"] for r in block["rows"]] == ["calibrator=ts", "calibrator=iso"]
    row = block["rows"][1]
    assert row["difference_interval"] is None and "the best" in row["method"]


def test_one_seed_against_several_without_shared_seed_is_not_compared():
    runs = [_run({"calibrator": "ts"}, s, {"calibrated": {"ece": 0.01 + s * 1e-3}}, ci={"ece": [0.0, 0.03]})
            for s in (0, 1, 2)]
    runs.append(_run({"calibrator": "iso"}, 7, {"calibrated": {"ece": 0.02}}, ci={"ece": [0.01, 0.03]}))
    row = _block(compare_configurations(runs, ["calibrated.ece"]), "calibrated.ece")["rows"][1]
    assert row["difference_interval"] is None and row["distinguishable"] is None
    assert row["method"].startswith("not compared")


def test_one_seed_each_on_different_seeds_says_splits_differ():
    runs = [_run({"calibrator": "ts"}, 0, {"calibrated": {"ece": 0.012}}, ci={"ece": [0.010, 0.016]}),
            _run({"calibrator": "iso"}, 1, {"calibrated": {"ece": 0.020}}, ci={"ece": [0.017, 0.025]})]
    row = _block(compare_configurations(runs, ["calibrated.ece"]), "calibrated.ece")["rows"][1]
    assert row["difference_interval"] is not None
    assert "different splits" in row["method"] and "conservative" not in row["method"]


def test_repeated_seed_is_averaged_as_one_seed():
    runs = [_run({"calibrator": "ts"}, s, {"calibrated": {"ece": v}}) for s, v in ((0, 0.01), (0, 0.03), (1, 0.02))]
    runs += [_run({"calibrator": "iso"}, s, {"calibrated": {"ece": v}}) for s, v in ((0, 0.05), (1, 0.06))]
    block = _block(compare_configurations(runs, ["calibrated.ece"]), "calibrated.ece")
    ts = _row(block, "calibrator=ts")
    assert ts["n_seeds"] == 2 and ts["mean"] == pytest.approx(0.02)
    iso = _row(block, "calibrator=iso")
    ci = stats.ttest_rel([0.05, 0.06], [0.02, 0.02]).confidence_interval(0.95)
    assert iso["difference_interval"] == pytest.approx([ci.low, ci.high])


def test_labels_drop_fixed_overrides_like_results():
    runs = [_run({"calibrator": c, "policy": "risk_control"}, 0, {"calibrated": {"ece": e}})
            for c, e in (("ts", 0.01), ("iso", 0.02))]
    block = compare_configurations(runs, ["calibrated.ece"])[0]
    assert [r["config"] for r in block["rows"]] == ["calibrator=ts", "calibrator=iso"]
    assert block["rows"][0]["overrides"] == {"calibrator": "ts", "policy": "risk_control"}


def test_markdown_marks_not_distinguishable():
    rng = np.random.default_rng(4)
    seeds = range(6)
    vals = _sweep_values(rng, {"ts": 0.020, "near": 0.0201, "far": 0.040}, seeds, sd=0.001)
    runs = [_run({"calibrator": c}, s, {"calibrated": {"ece": v[s]}}) for c, v in vals.items() for s in seeds]
    out = compare_configurations(runs, ["calibrated.ece"])
    rows = {r["config"]: r for r in out[0]["rows"]}
    assert rows["calibrator=far"]["distinguishable"] is True
    text = comparison_markdown(out)
    far_line = next(line for line in text.splitlines() if line.startswith("| calibrator=far"))
    assert "differs" in far_line
    for label, row in rows.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label} "))
        assert ("≈ best (not distinguishable)" in line) == (row["distinguishable"] is False)


# --- bad inputs -----------------------------------------------------------------------------------------------

def test_bad_inputs_name_the_argument():
    good = [_run({"calibrator": "ts"}, 0, {"calibrated": {"ece": 0.01}})]
    with pytest.raises(ValueError, match="runs.*empty"):
        compare_configurations([])
    with pytest.raises(TypeError, match="runs"):
        compare_configurations({"run": "x"})
    with pytest.raises(TypeError, match=r"runs\[0\]"):
        compare_configurations(["not a run"])
    with pytest.raises(ValueError, match=r"runs\[0\]"):
        compare_configurations([{"run": "x", "overrides": {}}])
    with pytest.raises(ValueError, match="metrics.*'calibrated.eec'"):
        compare_configurations(good, ["calibrated.eec"])
    with pytest.raises(ValueError, match="metrics"):
        compare_configurations(good, [])
    for level in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="level"):
            compare_configurations(good, level=level)
    with pytest.raises(TypeError, match="level"):
        compare_configurations(good, level="0.95")
    with pytest.raises(TypeError, match="result"):
        comparison_markdown({"metric": "x"})


# --- a real sweep ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_sweep_matches_metrics_json_and_scipy(tmp_path):
    """Two calibrators x three seeds on an embedded model; the comparison is recomputed from metrics.json."""
    out = tmp_path / "sweep"
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MPLBACKEND": "Agg", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": pythonpath}
    proc = subprocess.run([sys.executable, "experiments/calibrate.py", "-m", "experiment=model_comparison",
                           "data=builtin_c10lt_densenet40", "seed=0,1,2", "calibrator=temperature,isotonic",
                           "policy=risk_control", "policy.target_risk=0.02", f"hydra.sweep.dir={out}"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    run_dirs = results.find_runs(out)
    assert len(run_dirs) == 6, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [results.load_run(d, out) for d in run_dirs]
    comparison = compare_configurations(runs)
    raw = {}
    for d in run_dirs:
        m = json.loads((d / "metrics.json").read_text())
        cal = d.parent.name.split(",")[0].split("=")[1]
        raw.setdefault(cal, {})[d.name.split("=")[1]] = m
    assert {b["metric"] for b in comparison} >= {"calibrated.ece", "calibrated.nll", "policy.automation_rate"}
    for block in comparison:
        section, name = block["metric"].split(".")
        means = {c: np.mean([raw[c][s][section][name] for s in "012"]) for c in raw}
        pick = min if block["direction"] == "lower" else max
        assert block["rows"][0]["mean"] == pytest.approx(pick(means.values()), rel=1e-12)
        best = block["rows"][0]["overrides"]["calibrator"]
        other = block["rows"][1]
        c = other["overrides"]["calibrator"]
        x = [raw[c][s][section][name] for s in "012"]
        y = [raw[best][s][section][name] for s in "012"]
        if np.ptp(np.subtract(x, y)) == 0:  # e.g. fallback_rate 0 everywhere: a degenerate interval at the value
            assert other["difference_interval"] == pytest.approx([x[0] - y[0]] * 2)
            continue
        ci = stats.ttest_rel(x, y).confidence_interval(0.95)
        assert other["difference_interval"] == pytest.approx([ci.low, ci.high], rel=1e-10, abs=1e-15)
