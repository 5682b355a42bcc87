"""Defaults that do not mislead (issue 16): the quick start's conformal and risk-control commands meet their
targets on the default data (an exchangeable split of the embedded set), and a run whose test part significantly
violates a coverage or risk target says so in one WARNING line, naming a label shift when the class priors of the
two parts differ (data=builtin_shifted: the embedded file's own long-tailed / balanced split).

"Meets its target" is the exact test already in metrics.json, at its level 0.05, one fixed seed (seed=0):
conformal ``coverage_test`` (H0 coverage >= 1 - alpha; the Beta-binomial law of split-conformal coverage given
the calibration size, calib.stats.betabinom_less_pvalue) must not reject, and the policy's ``test_risk_test``
(H0 selective risk <= target; exact binomial, calib.stats.binom_greater_pvalue) must not reject. No tolerance.

The four calibrate.py runs are marked slow (about 40 s on an idle core; CI runs them); the function behind the
WARNING line is tested directly in the fast tests below them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

SCRIPT = REPO / "experiments" / "calibrate.py"
N_ROWS = 20216  # the embedded c10lt_resnet110: 10,216 long-tailed validation rows + 10,000 balanced test rows


def _run(tmp_path, *overrides):
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, MPLBACKEND="Agg", HYDRA_FULL_ERROR="1", PYTHONPATH=pythonpath)
    proc = subprocess.run([sys.executable, str(SCRIPT), *overrides, f"hydra.run.dir={tmp_path}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"calibrate.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    log = proc.stdout + proc.stderr
    return json.loads((Path(tmp_path) / "metrics.json").read_text()), log


def _warning_lines(log):
    return [line for line in log.splitlines() if "[WARNING]" in line and "exchangeable" in line]


def _check_default_split(m):
    # resplit: the pooled rows, split stratified in halves (not the file's 10,216 / 10,000)
    assert m["n_cal"] + m["n_test"] == N_ROWS and m["n_cal"] != 10216
    assert abs(m["n_cal"] - m["n_test"]) <= 10  # one row per class at most from the stratified halves


@pytest.mark.slow  # a calibrate.py run: ~10 s on an idle core
@pytest.mark.parametrize("score", ["lac", "aps"])
def test_quick_start_conformal_meets_its_target(tmp_path, score):
    m, log = _run(tmp_path, f"conformal={score}")
    _check_default_split(m)
    t = m["conformal"]["coverage_test"]
    assert t["alpha"] == 0.1 and t["law"] == "beta_binomial" and t["n"] == m["n_test"]
    assert t["rejected"] is False and t["p_value"] > t["level"] == 0.05, t
    assert m["warnings"] == [] and _warning_lines(log) == []


@pytest.mark.slow  # a calibrate.py run: ~10 s on an idle core
def test_quick_start_risk_control_meets_its_target(tmp_path):
    m, log = _run(tmp_path, "policy=risk_control", "policy.target_risk=0.02")
    _check_default_split(m)
    g, t = m["policy"]["guarantee"], m["policy"]["test_risk_test"]
    assert g["target_risk"] == 0.02 and g["certified"] is True
    assert t["n_answered"] > 0 and t["exceeds"] is False and t["p_value"] > t["level"] == 0.05, t
    assert m["warnings"] == [] and _warning_lines(log) == []


@pytest.mark.slow  # a calibrate.py run: ~10 s on an idle core
def test_warning_fires_on_the_shifted_example(tmp_path):
    m, log = _run(tmp_path, "data=builtin_shifted", "conformal=lac", "policy=risk_control",
                  "policy.target_risk=0.02")
    assert (m["n_cal"], m["n_test"]) == (10216, 10000)  # the file's own split
    # SCTL logs (calib/data/README.md): 19.14 % uncalibrated, 5.90 % with the exact TS optimum (on this split)
    assert round(100 * m["uncalibrated"]["ece"], 2) == 19.14
    assert round(100 * m["calibrated"]["ece"], 2) == 5.90
    assert m["conformal"]["coverage_test"]["rejected"] is True and m["policy"]["test_risk_test"]["exceeds"] is True
    lines = _warning_lines(log)
    assert len(lines) == 2 and len(m["warnings"]) == 2, log
    cov, risk = lines
    assert "test coverage 0.8635 < 0.9 at alpha=0.1" in cov and "8635 of 10000" in cov
    assert "test selective risk 0.05664 > target 0.02" in risk and "certified" in risk
    for line, stored in zip(lines, m["warnings"]):
        assert line.endswith(stored)  # the log line is the metrics.json entry
        assert "class priors of the calibration and test parts differ" in line and "label shift" in line
        assert "docs/shift.md" in line


# --- the function behind the line, directly -------------------------------------------------------------------


def _coverage_block(covered, n, alpha=0.1, n_cal=1000):
    from calib.evaluation.set_metrics import marginal_coverage_test

    sets = np.zeros((n, 2), bool)
    sets[:covered, 0] = True
    sets[covered:, 1] = True
    return marginal_coverage_test(sets, np.zeros(n, np.int64), alpha, n_calibration=n_cal)


def _policy_block(n_errors, n_answered, target=0.05, certified=True):
    from calib.evaluation.routing import test_risk_test

    return {"kind": "risk_control", "guarantee": {"target_risk": target, "certified": certified},
            "test_risk_test": test_risk_test(n_errors, n_answered, target)}


def test_no_violation_no_warning():
    from calib.evaluation.pipeline import guarantee_warnings

    ok = {"conformal": {"kind": "split", "score": "lac", "coverage_test": _coverage_block(900, 1000)},
          "policy": _policy_block(50, 1000)}
    assert ok["conformal"]["coverage_test"]["rejected"] is False and ok["policy"]["test_risk_test"]["exceeds"] is False
    assert guarantee_warnings(ok, [500, 500], [100, 900]) == []  # priors differ, but nothing is violated
    assert guarantee_warnings({"calibrated": {"ece": 0.1}}) == []


def test_violations_name_the_test_and_the_label_shift():
    from scipy.stats import binom

    from calib.evaluation.pipeline import guarantee_warnings

    bad = {"conformal": {"kind": "split", "score": "aps", "coverage_test": _coverage_block(850, 1000)},
           "policy": _policy_block(80, 1000)}
    # independent reference of the risk test: P(Binomial(1000, 0.05) >= 80)
    p_risk = binom.sf(79, 1000, 0.05)
    assert bad["policy"]["test_risk_test"]["p_value"] == pytest.approx(p_risk, rel=1e-9)
    cal, test = np.array([700, 300]), np.array([500, 500])
    lines = guarantee_warnings(bad, cal, test)
    assert len(lines) == 2
    assert lines[0].startswith("conformal split/aps: test coverage 0.85 < 0.9 at alpha=0.1")
    assert f"p={bad['conformal']['coverage_test']['p_value']:.2g}" in lines[0]
    assert lines[1].startswith("policy risk_control: test selective risk 0.08 > target 0.05")
    assert f"p={p_risk:.2g}" in lines[1] and "certified" in lines[1]
    # chi-square of the 2 x 2 table by hand: expected = row total x column share
    table = np.stack([cal, test]).astype(float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    for line in lines:
        assert f"chi-square {stat:.1f} on 1 dof" in line and "label shift; see docs/shift.md" in line
    # same priors: the cause is not a label shift
    same = guarantee_warnings(bad, np.array([500, 500]), np.array([250, 250]))
    assert all("priors of the two parts agree (chi-square p=1)" in line and "label shift" not in line
               for line in same)
    # without label counts: the assumption only
    assert all(line.endswith("exchangeable") for line in guarantee_warnings(bad))


def test_one_line_per_violated_alpha():
    from calib.evaluation.pipeline import guarantee_warnings

    blocks = [_coverage_block(850, 1000, alpha=0.1), _coverage_block(850, 1000, alpha=0.2)]
    m = {"conformal": {"kind": "split", "score": "lac", "coverage_test": blocks}}
    lines = guarantee_warnings(m)
    assert [b["rejected"] for b in blocks] == [True, False] and len(lines) == 1 and "alpha=0.1" in lines[0]


def test_label_prior_test_matches_scipy_and_refuses_bad_counts():
    from scipy.stats import chi2

    from calib.evaluation.pipeline import guarantee_warnings, label_prior_test

    cal, test = np.array([30, 0, 50, 20]), np.array([25, 0, 25, 50])
    r = label_prior_test(cal, test)
    t = np.stack([cal, test])[:, [0, 2, 3]].astype(float)  # the class absent from both parts is dropped
    e = t.sum(1, keepdims=True) * t.sum(0, keepdims=True) / t.sum()
    stat = ((t - e) ** 2 / e).sum()
    assert r["dof"] == 2 and r["statistic"] == pytest.approx(stat, rel=1e-12)
    assert r["p_value"] == pytest.approx(chi2.sf(stat, 2), rel=1e-9)
    assert label_prior_test([5, 0], [7, 0]) is None  # one class: nothing to compare
    with pytest.raises(ValueError, match="cal_counts and test_counts of the same length"):
        label_prior_test([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="Expected test_counts as a 1-D array of label counts"):
        label_prior_test([1, 2], [1.5, 2])
    with pytest.raises(ValueError, match="sum of cal_counts"):
        label_prior_test([0, 0], [1, 2])
    with pytest.raises(ValueError, match="cal_counts and test_counts together"):
        guarantee_warnings({}, [1, 2])
    with pytest.raises(TypeError, match="Expected metrics as a dict"):
        guarantee_warnings([])


def test_streaming_run_warns_like_the_in_memory_run(tmp_path):
    """The out-of-core pipeline (calib.evaluation.streaming) ends with the same call: the shifted embedded set
    written as .npy with labels and split beside it gives the in-memory run's warnings."""
    from calib.calibrators import TemperatureScaling
    from calib.conformal import SplitConformal
    from calib.datasets import load
    from calib.evaluation.pipeline import fit_and_evaluate
    from calib.evaluation.streaming import fit_and_evaluate_streaming
    from calib.io import load_logits

    d = load("c10lt_resnet110")
    np.save(tmp_path / "logits.npy", d.logits)
    np.save(tmp_path / "labels.npy", d.labels)
    np.save(tmp_path / "split.npy", d.split)
    kw = dict(calibration_bootstrap=0, n_bootstrap=100)
    stream = fit_and_evaluate_streaming(load_logits(tmp_path / "logits.npy", mmap=True), TemperatureScaling(),
                                        conformal=SplitConformal(score="lac", alpha=0.1), **kw)
    cal, test = d.split_cal_test()
    mem = fit_and_evaluate(cal, test, TemperatureScaling(), conformal=SplitConformal(score="lac", alpha=0.1), **kw)
    assert len(mem.metrics["warnings"]) == 1 and "label shift" in mem.metrics["warnings"][0]
    assert stream.metrics["warnings"] == mem.metrics["warnings"]
