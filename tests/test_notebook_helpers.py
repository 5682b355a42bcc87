"""calib.evaluation.notebook: the tables the notebooks share, checked against hand-written numbers (runs built as
``calib.evaluation.results.load_run`` returns them, flattened by the real ``tidy_rows``) and one real fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calib.evaluation import notebook as nbh
from calib.evaluation.results import tidy_rows
from calib.plotting.results import plot_interval_table


def _run(calibrator, data, seed, ece, ece_ci, before, before_ci, diff_ci, nll=0.5):
    metrics = {
        "n_test": 100,
        "calibrated": {"ece": ece, "nll": nll},
        "uncalibrated": {"ece": before, "nll": 1.0},
        "calibration_ci": {"level": 0.95, "calibrated": {"ece": list(ece_ci)},
                           "uncalibrated": {"ece": list(before_ci)},
                           "difference_of": ["calibrated", "uncalibrated"], "difference": {"ece": list(diff_ci)}},
    }
    return {"run": f"calibrator={calibrator},data={data}/seed={seed}",
            "overrides": {"calibrator": calibrator, "data": data, "seed": str(seed)}, "choices": {}, "config": {},
            "seed": str(seed), "metrics": metrics}


def _sweep():
    return [
        _run("ts", "m1", 0, 0.02, (0.01, 0.03), 0.15, (0.14, 0.16), (-0.14, -0.12)),
        _run("iso", "m1", 0, 0.04, (0.03, 0.05), 0.15, (0.14, 0.16), (-0.12, -0.10)),
        _run("ts", "m2", 0, 0.05, (0.04, 0.06), 0.06, (0.05, 0.07), (-0.02, 0.005)),
        # iso on m2 is missing; seed 1 must not leak into the seed-0 table
        _run("ts", "m1", 1, 0.9, (0.8, 0.95), 0.9, (0.8, 0.95), (-0.1, 0.1)),
    ]


def test_interval_table_reads_each_runs_numbers():
    _, rows = tidy_rows(_sweep())
    t = nbh.prepare_interval_table(rows, row_key="calibrator", col_key="data", metric="ece")
    assert (t.rows, t.cols, t.seed, t.metric) == (("iso", "ts"), ("m1", "m2"), "0", "ece")
    nan = math.nan
    np.testing.assert_array_equal(t.point, [[0.04, nan], [0.02, 0.05]])
    np.testing.assert_array_equal(t.low, [[0.03, nan], [0.01, 0.04]])
    np.testing.assert_array_equal(t.high, [[0.05, nan], [0.03, 0.06]])
    np.testing.assert_array_equal(t.before, [[0.15, nan], [0.15, 0.06]])
    np.testing.assert_array_equal(t.before_low, [[0.14, nan], [0.14, 0.05]])
    np.testing.assert_array_equal(t.diff_low, [[-0.12, nan], [-0.14, -0.02]])
    np.testing.assert_array_equal(t.diff_high, [[-0.10, nan], [-0.12, 0.005]])
    np.testing.assert_allclose(t.diff, [[-0.11, nan], [-0.13, -0.01]], rtol=0, atol=1e-15)
    seed1 = nbh.prepare_interval_table(rows, row_key="calibrator", col_key="data", seed=1)
    assert seed1.seed == "1" and seed1.point.tolist() == [[0.9]]


def test_interval_table_matches_a_real_runs_metrics_json():
    from calib.experiment import compose, fit

    res = fit(compose(["eval.calibration_bootstrap=50"]))
    m = res.metrics
    run = {"run": "r/seed=0", "overrides": {"calibrator": "temperature", "data": "builtin"}, "choices": {},
           "config": {}, "seed": "0", "metrics": m}
    _, rows = tidy_rows([run])
    t = nbh.prepare_interval_table(rows, row_key="calibrator", col_key="data", metric="nll")
    ci = m["calibration_ci"]
    assert t.point[0, 0] == m["calibrated"]["nll"] and t.before[0, 0] == m["uncalibrated"]["nll"]
    assert [t.low[0, 0], t.high[0, 0]] == ci["calibrated"]["nll"]
    assert [t.before_low[0, 0], t.before_high[0, 0]] == ci["uncalibrated"]["nll"]
    assert [t.diff_low[0, 0], t.diff_high[0, 0]] == ci["difference"]["nll"]


def test_interval_markdown_exact_text():
    _, rows = tidy_rows(_sweep())
    t = nbh.prepare_interval_table(rows, row_key="calibrator", col_key="data")
    assert nbh.interval_markdown(t) == "\n".join([
        "ece (calibrated, test part) [95% bootstrap interval], seed 0", "",
        "| calibrator | m1 | m2 |", "|---|---|---|",
        "| uncalibrated | 0.1500 [0.1400, 0.1600] | 0.0600 [0.0500, 0.0700] |",
        "| iso | 0.0400 [0.0300, 0.0500] | - |",
        "| ts | 0.0200 [0.0100, 0.0300] | 0.0500 [0.0400, 0.0600] |"])
    diff = nbh.interval_markdown(t, which="difference")
    assert diff.splitlines()[-2:] == ["| iso | -0.1100 [-0.1200, -0.1000] | - |",
                                      "| ts | -0.1300 [-0.1400, -0.1200] | -0.0100 [-0.0200, 0.0050] (contains 0) |"]
    assert nbh.interval_markdown(t, decimals=2).splitlines()[-1] == "| ts | 0.02 [0.01, 0.03] | 0.05 [0.04, 0.06] |"


def test_interval_markdown_drops_the_uncalibrated_row_when_runs_disagree():
    runs = _sweep()[:2]
    runs[1]["metrics"]["uncalibrated"]["ece"] = 0.2  # another split: "uncalibrated" is not one number per model
    _, rows = tidy_rows(runs)
    text = nbh.interval_markdown(nbh.prepare_interval_table(rows, row_key="calibrator", col_key="data"))
    assert "uncalibrated |" not in text and "| iso | 0.0400 [0.0300, 0.0500] |" in text


def test_summary_lines():
    _, rows = tidy_rows(_sweep())
    lines = nbh.prepare_interval_table(rows, row_key="calibrator", col_key="data").summary_lines()
    assert lines == [
        ("m1: lowest calibrated ece (point estimate) with ts (0.0200 [0.0100, 0.0300]; uncalibrated 0.1500); the 95% "
        "interval of the change lies below 0 for 2 of 2 calibrator values, above 0 for 0, and contains 0 for 0."),
        ("m2: calibrated ece with ts (0.0500 [0.0400, 0.0600]; uncalibrated 0.0600); the 95% "
        "interval of the change lies below 0 for 0 of 1 calibrator values, above 0 for 0, and contains 0 for 1.")]


def test_plot_interval_table_draws_each_row_with_its_interval():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, rows = tidy_rows(_sweep())
    t = nbh.prepare_interval_table(rows, row_key="calibrator", col_key="data")
    for which, point, low, high in (("calibrated", t.point, t.low, t.high),
                                    ("difference", t.diff, t.diff_low, t.diff_high)):
        ax = plot_interval_table(t, which=which)
        bars = ax.containers
        assert len(bars) == 2 and [c.get_label() for c in bars] == ["iso", "ts"]
        for i, container in enumerate(bars):
            np.testing.assert_array_equal(container.lines[0].get_ydata(), point[i])
            segments = container.lines[2][0].get_segments()
            finite = np.isfinite(point[i])
            np.testing.assert_allclose([s[0][1] for s in np.asarray(segments, dtype=object)[finite]], low[i][finite],
                                       rtol=0, atol=1e-15)
            np.testing.assert_allclose([s[1][1] for s in np.asarray(segments, dtype=object)[finite]],
                                       high[i][finite], rtol=0, atol=1e-15)
        plt.close(ax.figure)


@pytest.mark.parametrize("kwargs, match", [
    ({"row_key": "calibratr", "col_key": "data"}, r"row_key as an override key of the sweep.*'calibratr'"),
    ({"row_key": "calibrator", "col_key": "dat"}, r"col_key as an override key"),
    ({"row_key": "calibrator", "col_key": "data", "metric": "ecee"}, r"metric as a calibrated metric.*'ecee'"),
    ({"row_key": "calibrator", "col_key": "data", "seed": 7}, r"seed as one of the sweep's seeds \['0', '1'\], got 7"),
])
def test_interval_table_bad_arguments(kwargs, match):
    _, rows = tidy_rows(_sweep())
    with pytest.raises(ValueError, match=match):
        nbh.prepare_interval_table(rows, **kwargs)


def test_interval_table_refusals():
    runs = _sweep()
    for run in runs:
        del run["metrics"]["calibration_ci"]
    _, rows = tidy_rows(runs)
    with pytest.raises(ValueError, match=r"calibration_ci.*eval.calibration_bootstrap > 0"):
        nbh.prepare_interval_table(rows, row_key="calibrator", col_key="data")
    dup = _sweep()[:1] * 2
    dup[1] = {**dup[1], "run": "other/seed=0"}
    _, rows = tidy_rows(dup)
    with pytest.raises(ValueError, match=r"one run per \(calibrator, data\) cell for seed 0, got 2"):
        nbh.prepare_interval_table(rows, row_key="calibrator", col_key="data")
    with pytest.raises(ValueError, match="got none"):
        nbh.prepare_interval_table([], row_key="calibrator", col_key="data")
    with pytest.raises(TypeError, match="row_key as a non-empty str"):
        nbh.prepare_interval_table(rows, row_key=None, col_key="data")
    with pytest.raises(TypeError, match="table as an IntervalTable"):
        nbh.interval_markdown(rows)
    t = nbh.prepare_interval_table(tidy_rows(_sweep())[1], row_key="calibrator", col_key="data")
    with pytest.raises(ValueError, match="which"):
        nbh.interval_markdown(t, which="both")


def test_metrics_table_formats_each_kind():
    named = {"lac": {"conformal": {"coverage": 0.8983, "covered": 9081, "rejected": False, "flagged": [5, 3],
                                   "qhat": None}},
             "aps": {"conformal": {"coverage": 0.9331, "covered": 9432, "rejected": True, "flagged": []}}}
    cols = [("coverage", "conformal.coverage"), ("covered", "conformal.covered"), ("rejected", "conformal.rejected"),
            ("flagged", "conformal.flagged"), ("qhat", "conformal.qhat")]
    assert nbh.metrics_table(named, cols, first="score") == "\n".join([
        "| score | coverage | covered | rejected | flagged | qhat |", "|---|---|---|---|---|---|",
        "| lac | 0.8983 | 9081 | no | 5, 3 | null |",
        "| aps | 0.9331 | 9432 | yes | (none) | - |"])


def test_metrics_table_refusals():
    with pytest.raises(ValueError, match=r"'conformal.covrage' \(column 'c'\) in none of \['a'\]"):
        nbh.metrics_table({"a": {"conformal": {"coverage": 0.9}}}, [("c", "conformal.covrage")])
    with pytest.raises(TypeError, match="named_metrics as a non-empty dict"):
        nbh.metrics_table([], [("c", "x")])
    with pytest.raises(TypeError, match="metrics dicts, got list for 'a'"):
        nbh.metrics_table({"a": []}, [("c", "x")])
    with pytest.raises(ValueError, match="columns as a non-empty list"):
        nbh.metrics_table({"a": {"x": 1}}, ["x"])


def _job(sweep, name, overrides, choices, seed, metrics):
    import json

    hydra = sweep / name / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (hydra / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n"
                                      + "".join(f"      {k}: {v}\n" for k, v in choices.items()))
    (hydra / "config.yaml").write_text(f"seed: {seed}\n")
    if metrics is not None:
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))


def test_load_sweep_fills_keys_the_sweep_did_not_override(tmp_path):
    """A model_comparison sweep overrides data and seed only: the calibrator column comes from Hydra's choices."""
    runs = _sweep()
    _job(tmp_path, "data=m1/seed=0", ["data=m1", "seed=0"], {"calibrator": "temperature", "data": "m1"}, 0,
         runs[0]["metrics"])
    _job(tmp_path, "data=m2/seed=0", ["data=m2", "seed=0"], {"calibrator": "temperature", "data": "m2"}, 0,
         runs[2]["metrics"])
    _job(tmp_path, "data=m3/seed=0", ["data=m3", "seed=0"], {"calibrator": "temperature", "data": "m3"}, 0, None)
    sw = nbh.load_sweep(tmp_path, keys=("calibrator", "data"))
    assert sw.n_runs == 2 and [f["run"] for f in sw.failed] == ["data=m3/seed=0"]
    assert sw.header == ["run", "data", "calibrator", "seed", "split", "metric", "value"]
    assert {r["calibrator"] for r in sw.rows} == {"temperature"}
    t = nbh.prepare_interval_table(sw.rows, row_key="calibrator", col_key="data")
    assert t.rows == ("temperature",) and t.cols == ("m1", "m2")
    np.testing.assert_array_equal(t.point, [[0.02, 0.05]])
    np.testing.assert_array_equal(t.high, [[0.03, 0.06]])
    assert t.summary_lines()[0].startswith("m1: calibrated ece with temperature (0.0200 [0.0100, 0.0300];")
    with pytest.raises(TypeError, match="keys as a list of config keys"):
        nbh.load_sweep(tmp_path, keys="calibrator")
    with pytest.raises(FileNotFoundError, match="sweep folder"):
        nbh.load_sweep(tmp_path / "nope")
    empty = tmp_path / "empty"
    _job(empty, "a/seed=0", ["data=m1"], {"data": "m1"}, 0, None)
    with pytest.raises(ValueError, match=r"at least one complete run.*\(1 failed or incomplete"):
        nbh.load_sweep(empty)
