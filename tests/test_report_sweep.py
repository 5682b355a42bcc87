"""The sweep's report.html (aggregate.py, calib report SWEEP_DIR): every configuration's mean is the mean of its
runs' metrics.json, the difference from the best and its interval are the paired t interval that scipy computes from
those files, and "not distinguishable" is shown exactly when that interval contains zero. In a real browser when
chromium is installed (CI)."""

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    cmd = [sys.executable, str(REPO / "experiments" / "calibrate.py"), "-m", "data=synthetic", "data.n=3000",
           "calibrator=temperature,isotonic", f"seed={','.join(map(str, SEEDS))}", "eval.n_bootstrap=100",
           "eval.calibration_bootstrap=100", f"hydra.sweep.dir={out}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    (out / "broken" / "seed=9" / ".hydra").mkdir(parents=True)  # a job that died before writing metrics.json
    (out / "broken" / "seed=9" / ".hydra" / "overrides.yaml").write_text("- calibrator=broken\n- seed=9\n")
    res = subprocess.run([sys.executable, str(REPO / "experiments" / "aggregate.py"), str(out)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


class Rows(HTMLParser):
    """(metric, config, data-value, text) of every number cell, and each table row's cells and tag."""

    def __init__(self):
        super().__init__()
        self.table, self.rows, self.row, self.cell, self.tags = None, [], None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("data-metric-block")
        elif tag == "tr":
            self.row = {"metric": self.table, "cells": [], "attrs": {}}
        elif tag == "td" and self.row is not None:
            self.cell = ""
        elif tag == "span" and self.row is not None and "data-metric" in a:
            self.row["attrs"] = a

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self.row is not None and self.cell is not None:
            self.row["cells"].append(self.cell.strip())
            self.cell = None
        elif tag == "tr" and self.row is not None:
            if self.row["attrs"]:
                self.rows.append(self.row)
            self.row = None


def _runs(sweep):
    out = {}
    for path in sweep.glob("*/seed=*/metrics.json"):
        metrics = json.loads(path.read_text())
        out[(metrics["calibrator"]["kind"], int(path.parent.name.split("=", 1)[1]))] = metrics
    return out


def test_sweep_report_numbers_and_marks(sweep):
    from scipy import stats

    html = (sweep / "report.html").read_text(encoding="utf-8")
    runs = _runs(sweep)
    assert len(runs) == 6
    parser = Rows()
    parser.feed(html)
    by = {(r["metric"], r["attrs"]["data-config"]): r for r in parser.rows}
    for metric, lower in (("calibrated.ece", True), ("calibrated.nll", True), ("calibrated.accuracy", False)):
        section, key = metric.split(".")
        values = {cal: np.array([runs[(cal, s)][section][key] for s in SEEDS]) for cal in ("temperature", "isotonic")}
        means = {cal: v.mean() for cal, v in values.items()}
        best = (min if lower else max)(means, key=means.get)
        other = "isotonic" if best == "temperature" else "temperature"
        for cal in values:
            row = by[(metric, f"calibrator={cal}")]
            assert json.loads(row["attrs"]["data-value"]) == pytest.approx(means[cal], rel=1e-12, abs=1e-15)
        row = by[(metric, f"calibrator={other}")]
        ci = stats.ttest_rel(values[other], values[best]).confidence_interval(0.95)
        scale = 100 if "%" in row["cells"][5] else 1  # rates and accuracy are shown in percent
        lo, hi = (float(x) / scale for x in re.findall(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", row["cells"][5]))
        # shown with 4 decimals (2 in percent), or 3 significant digits when tiny
        assert lo == pytest.approx(ci.low, rel=5e-3, abs=5e-5) and hi == pytest.approx(ci.high, rel=5e-3, abs=5e-5)
        tag = row["cells"][6]
        if ci.low <= 0 <= ci.high:
            assert tag == "not distinguishable"
        else:
            assert tag == "worse"
        assert by[(metric, f"calibrator={best}")]["cells"][6] == "best"
    assert "1 jobs failed or are incomplete" in html and "broken/seed=9" in html
    assert html.count('href="calibrator=') == 6  # each job's own report, linked relatively


def test_calib_report_rewrites_the_sweep_page(sweep, tmp_path):
    out = tmp_path / "again.html"
    res = subprocess.run([sys.executable, "-m", "calib", "report", str(sweep), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "sweep report" in res.stdout
    strip = re.compile(r'<figure><img src="data:image/png;base64,[^"]+"')  # summary.png: only beside SWEEP_DIR
    assert strip.sub("", out.read_text(encoding="utf-8")) == strip.sub("", (sweep / "report.html").read_text("utf-8"))


def test_sweep_report_in_chromium(sweep, tmp_path):
    from _browser import find_chromium, open_page

    if find_chromium() is None:
        import os

        if os.environ.get("CALIB_REQUIRE_BROWSER", "") not in ("", "0"):
            raise RuntimeError("CALIB_REQUIRE_BROWSER=1 but no chromium found")
        pytest.skip("chromium not installed (apt-get install -y chromium); CI installs it")
    page = open_page(sweep / "report.html", tmp_path)
    assert page.requests == [] and page.console == []
    parser = Rows()
    parser.feed(page.dom)
    assert {r["metric"] for r in parser.rows} >= {"calibrated.ece", "calibrated.nll"}
    import matplotlib.image as mpimg

    img = mpimg.imread(page.screenshot)
    assert img[..., :3].mean(axis=2).std() > 0.05


def test_a_metric_equal_everywhere_is_one_sentence():
    from calib.evaluation.report import _sweep_block

    def row(config, mean, iv):
        return {"config": config, "mean": mean, "interval": iv, "difference": 0.0, "difference_interval": [0.0, 0.0],
                "distinguishable": False, "method": "paired t over 3 shared seeds", "n_seeds": 3}

    block = {"metric": "policy.fallback_rate", "direction": "lower", "best": "a",
             "rows": [row("a", 0.0, [0.0, 0.0]), row("b", 0.0, [0.0, 0.0])]}
    out = _sweep_block(block)
    assert out["constant"] and out["sentence"] == "0.00% in every configuration and every run."
    block["rows"][1] = row("b", 0.0, [-0.01, 0.01])  # equal means, but the runs vary: keep the table
    assert not _sweep_block(block)["constant"]
