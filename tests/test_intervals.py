"""Intervals that say what they cover: the calibration-metric bootstrap (against calib.metrics on the
materialised resamples, and its coverage on data with a known truth), the procedure-level bootstrap (its
resampling, its bookkeeping, the pipeline's refits), the conditional policy CI's label, and (slow) the re-split
coverage study of bench/interval_coverage.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import REPO

from calib import metrics
from calib.calibrators import TemperatureScaling
from calib.calibrators.base import softmax
from calib.evaluation import intervals
from calib.evaluation.intervals import (
    CI_METRICS,
    calibration_bootstrap,
    procedure_bootstrap,
)
from calib.stats import binom_less_pvalue

REFERENCE = {
    "accuracy": metrics.accuracy,
    "nll": metrics.negative_log_likelihood,
    "brier": metrics.brier_score,
    "ece": lambda p, y: metrics.expected_calibration_error(p, y, n_bins=15),
    "classwise_ece": lambda p, y: metrics.classwise_ece(p, y, n_bins=15),
    "ece_debiased": lambda p, y: metrics.debiased_ece(p, y, n_bins=15),
    "smece": metrics.smooth_ece,
}


def _data(n, k, seed, temperature=2.5, dtype=np.float32):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * 2.0
    y = np.argmax(z + rng.gumbel(size=(n, k)), axis=1)
    return softmax((temperature * z).astype(dtype)), y


@pytest.mark.parametrize("n, k", [(3000, 10), (1500, 100), (200, 3)])
def test_resample_metrics_equal_calib_metrics_on_the_materialised_resample(n, k):
    p, y = _data(n, k, seed=k)
    block = intervals._Block(p, y, 15, CI_METRICS)
    rng = np.random.default_rng(1)
    idx = [rng.integers(0, n, n) for _ in range(3)]
    w = np.vstack([np.ones(n)] + [np.bincount(i, minlength=n) for i in idx]).astype(np.float64)
    got = block.metrics(w)
    for name, ref in REFERENCE.items():
        expected = [ref(p, y)] + [ref(p[i], y[i]) for i in idx]
        np.testing.assert_allclose(got[name], expected, rtol=0, atol=1e-12, err_msg=name)


def test_calibration_bootstrap_layout_difference_and_seed():
    p, y = _data(1000, 10, seed=0)
    q = softmax(np.log(p) / 2.0)
    out = calibration_bootstrap({"uncalibrated": p, "calibrated": q}, y, difference=("calibrated", "uncalibrated"),
                                n_resamples=100, seed=3)
    assert out["level"] == 0.95 and out["n_resamples"] == 100 and out["seed"] == 3
    assert "fitted calibrator held fixed" in out["method"] and out["difference_of"] == ["calibrated", "uncalibrated"]
    for block in ("uncalibrated", "calibrated", "difference"):
        assert set(out[block]) == set(CI_METRICS)
        for lo, hi in out[block].values():
            assert lo <= hi
    assert out["difference"]["accuracy"] == [0.0, 0.0]  # the same resampled items on both sides: argmax unchanged
    assert json.loads(json.dumps(out)) == out
    again = calibration_bootstrap({"uncalibrated": p, "calibrated": q}, y, difference=("calibrated", "uncalibrated"),
                                  n_resamples=100, seed=3)
    assert again == out
    same = calibration_bootstrap({"a": p, "b": p}, y, difference=("a", "b"), n_resamples=50, metrics=("nll", "ece"))
    assert same["difference"] == {"nll": [0.0, 0.0], "ece": [0.0, 0.0]}


def test_calibration_bootstrap_percentiles_are_those_of_the_resampled_metric():
    # The interval is the 2.5 / 97.5 % quantiles of the metric over resamples drawn with the documented RNG use.
    p, y = _data(300, 4, seed=2)
    out = calibration_bootstrap({"m": p}, y, n_resamples=40, seed=5, metrics=("nll", "ece"))
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 300, size=(40, 300))
    for name in ("nll", "ece"):
        vals = [REFERENCE[name](p[i], y[i]) for i in idx]
        assert out["m"][name] == pytest.approx([np.quantile(vals, 0.025), np.quantile(vals, 0.975)], abs=1e-12)


def test_calibration_bootstrap_covers_the_population_accuracy_and_nll():
    # Rows drawn from a fixed law, labels from the rows' own softmax: the population accuracy E[max p] and NLL
    # E[entropy] are known (Monte Carlo over 10^6 rows, standard error < 5e-4, against intervals ~0.09 wide).
    # Over 200 datasets of 400 rows the 95 % interval must not contain the truth significantly less than 90 %
    # of the time (exact one-sided binomial test at 1 %; the percentile bootstrap runs slightly short at n = 400).
    rng = np.random.default_rng(0)
    k = 5

    def draw(n):
        p = softmax(rng.standard_normal((n, k)) * 1.5)
        y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1).clip(0, k - 1)
        return p, y

    big = softmax(np.random.default_rng(99).standard_normal((10**6, k)) * 1.5)
    truth = {"accuracy": float(np.mean(big.max(axis=1))),
             "nll": float(np.mean(-(big * np.log(big)).sum(axis=1)))}
    hits = {m: 0 for m in truth}
    for s in range(200):
        p, y = draw(400)
        out = calibration_bootstrap({"m": p}, y, n_resamples=200, seed=s, metrics=tuple(truth))
        for m, t in truth.items():
            lo, hi = out["m"][m]
            hits[m] += lo <= t <= hi
    print(hits)
    for m, k_hit in hits.items():
        assert binom_less_pvalue(k_hit, 200, 0.90) >= 0.01, (m, k_hit)


@pytest.mark.parametrize("call, match", [
    (lambda p, y: calibration_bootstrap(p, y), "dict"),
    (lambda p, y: calibration_bootstrap({"a": p}, y, metrics=("mce",)), "metrics"),
    (lambda p, y: calibration_bootstrap({"a": p}, y, difference=("a", "b")), "difference"),
    (lambda p, y: calibration_bootstrap({"a": p}, y, n_resamples=0), "n_resamples"),
    (lambda p, y: calibration_bootstrap({"a": p}, y, confidence_level=95), "confidence_level"),
    (lambda p, y: calibration_bootstrap({"a": p}, y, seed=-1), "seed"),
    (lambda p, y: calibration_bootstrap({"a": p}, y[:-1]), "labels"),
])
def test_calibration_bootstrap_bad_input(call, match):
    p, y = _data(50, 3, seed=0)
    with pytest.raises((TypeError, ValueError), match=match):
        call(p, y)


def test_procedure_bootstrap_resamples_both_parts_and_reports_percentiles():
    seen = []

    def fit_and_score(cal_idx, test_idx):
        seen.append((cal_idx.copy(), test_idx.copy()))
        return {"a": float(cal_idx.mean()), "b": float(test_idx.mean())}

    out = procedure_bootstrap(fit_and_score, 30, 50, n_resamples=60, confidence_level=0.9, seed=4)
    rng = np.random.default_rng(4)
    for cal_idx, test_idx in seen:  # one draw for the calibration part, then one for the test part, per resample
        np.testing.assert_array_equal(cal_idx, rng.integers(0, 30, 30))
        np.testing.assert_array_equal(test_idx, rng.integers(0, 50, 50))
    a = [c.mean() for c, _ in seen]
    b = [t.mean() for _, t in seen]
    assert out["ci"]["a"] == pytest.approx([np.quantile(a, 0.05), np.quantile(a, 0.95)])
    assert out["ci"]["b"] == pytest.approx([np.quantile(b, 0.05), np.quantile(b, 0.95)])
    assert out["level"] == 0.9 and out["n_resamples"] == 60 and "refitted" in out["method"]
    assert out["n_undefined"] == {} and out["n_warned"] == 0


def test_procedure_bootstrap_counts_undefined_values_and_warnings():
    calls = iter(range(100))

    def fit_and_score(cal_idx, test_idx):
        i = next(calls)
        if i % 4 == 0:
            warnings.warn("nothing certified", UserWarning)
        return {"x": None if i % 5 == 0 else float(i), "y": float("nan") if i < 10 else 1.0}

    out = procedure_bootstrap(fit_and_score, 5, 5, n_resamples=20, seed=0)
    assert out["n_undefined"] == {"x": 4, "y": 10} and out["n_warned"] == 5
    assert out["ci"]["y"] == [1.0, 1.0]
    assert procedure_bootstrap(lambda c, t: {"z": None}, 3, 3, n_resamples=4)["ci"] == {"z": None}


@pytest.mark.parametrize("scorer, match", [
    ("not callable", "callable"),
    (lambda c, t: [1.0], "dict"),
])
def test_procedure_bootstrap_bad_input(scorer, match):
    with pytest.raises(TypeError, match=match):
        procedure_bootstrap(scorer, 5, 5, n_resamples=3)
    keys = iter([{"a": 1.0}, {"b": 1.0}])
    with pytest.raises(ValueError, match="same keys"):
        procedure_bootstrap(lambda c, t: next(keys), 5, 5, n_resamples=2)
    with pytest.raises(ValueError, match="n_cal"):
        procedure_bootstrap(lambda c, t: {}, 0, 5)


def _logits_data(n, k, seed):
    from calib.io import LogitsData

    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * 2.0
    y = np.argmax(z + rng.gumbel(size=(n, k)), axis=1)
    return LogitsData((2.5 * z).astype(np.float32), y)


def test_pipeline_writes_the_three_intervals_and_refits_only_clones():
    from calib.conformal import SplitConformal
    from calib.evaluation.pipeline import CALIBRATION_CI_KEYS, fit_and_evaluate
    from calib.policy import ThresholdPolicy

    cal, test = _logits_data(1500, 5, 0), _logits_data(1500, 5, 1)
    calibrator, conformal = TemperatureScaling(), SplitConformal(score="lac", alpha=0.1)
    policy = ThresholdPolicy(target_coverage=0.8)
    r = fit_and_evaluate(cal, test, calibrator, conformal=conformal, policy=policy, n_bootstrap=200,
                         calibration_bootstrap=100, procedure_resamples=8)
    m = r.metrics
    assert "conditional on the calibration split" in m["policy"]["ci_method"]
    ci = m["calibration_ci"]
    assert ci["n_resamples"] == 100 and set(ci["calibrated"]) == set(CALIBRATION_CI_KEYS)
    proc = m["procedure_ci"]
    assert proc["n_resamples"] == 8 and "refitted" in proc["method"]
    assert {"ece", "nll", "coverage", "mean_set_size", "automation_rate", "selective_risk",
            "task_completion_rate", "expected_cost"} <= set(proc["ci"])
    # The fitted components are the pipeline's, not a resample's: refitting them on the full parts agrees.
    assert r.calibrator.temperature_ == TemperatureScaling().fit(cal.logits, cal.labels).temperature_
    assert r.policy.threshold_ == ThresholdPolicy(target_coverage=0.8).fit(
        r.calibrator.predict_proba(cal.logits), cal.labels).threshold_
    # The interval of the automation rate reflects the refitted threshold: it is not the fixed-policy one.
    assert proc["ci"]["automation_rate"] != m["policy"]["ci"]["automation_rate"]
    none = fit_and_evaluate(cal, test, TemperatureScaling(), calibration_bootstrap=0)
    assert "calibration_ci" not in none.metrics and "procedure_ci" not in none.metrics
    with pytest.raises(ValueError, match="procedure_resamples"):
        fit_and_evaluate(cal, test, TemperatureScaling(), procedure_resamples=-1)


@pytest.mark.slow
def test_resplit_coverage_of_the_procedure_interval():
    """bench/interval_coverage.py, smaller: 200 stratified re-splits of 4,000 rows of cifar10_wrn16_4, 100
    resamples per interval, level 0.90. The procedure-level interval must pass the exact binomial test of
    H0 'contains the mean over re-splits in >= 85 % of re-splits' (p >= 0.05); the conditional interval's rate is
    printed (it is expected to fall short)."""
    from conftest import shared_npz

    path = shared_npz("cifar_netcal/cifar10_wrn16_4.npz")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "interval_coverage.py"), "--data", str(path),
                           "--splits", "200", "--resamples", "100", "--n-max", "4000"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    m = re.search(r"automation_rate\s+procedure-level \(refit\)\s+contains the mean in\s+(\d+)/(\d+)", done.stdout)
    k, n = int(m.group(1)), int(m.group(2))
    assert n == 200 and binom_less_pvalue(k, n, 0.85) >= 0.05


@pytest.mark.parametrize("key", ["calibration_bootstrap", "procedure_resamples"])
def test_eval_keys_are_validated_before_any_work(key):
    from omegaconf import OmegaConf

    from calib.config import EvalConfig, validate_root

    cfg = OmegaConf.create({"eval": {**EvalConfig().__dict__, key: -1}})
    with pytest.raises(ValueError, match=f"eval.{key}"):
        validate_root(cfg)
    validate_root(OmegaConf.create({"eval": EvalConfig().__dict__}))
    assert EvalConfig().procedure_resamples == 0 and EvalConfig().calibration_bootstrap == 500
