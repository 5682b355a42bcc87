"""report.html of a run (calib.evaluation.report): written by every run, its numbers are metrics.json's, it is
self-contained and escapes what it shows; bad folders and files fail with one clear error and write nothing.
(The page in a real browser: tests/test_report_browser.py; the sweep report: tests/test_report_sweep.py.)"""

import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from calib.evaluation.report import fmt_num, fmt_pct, render_run_report, report_kind, write_report
from calib.experiment import compose, run

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data=synthetic", "data.n=4000", "eval.n_bootstrap=200", "eval.calibration_bootstrap=100"]


class Numbers(HTMLParser):
    """Every element with data-metric (its attributes and text), data-ci, data-proc-ci, <img> sources and <a>
    targets."""

    def __init__(self):
        super().__init__()
        self.numbers, self.cis, self.procs, self.imgs, self.links, self._open = [], [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-metric" in a:
            self._open = {**a, "text": ""}
        if "data-ci-of" in a:
            self.cis.append(a)
        if "data-proc-ci-of" in a:
            self.procs.append(a)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("a", "link", "script", "iframe", "object", "embed"):
            self.links.append((tag, a))

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag):
        if self._open is not None and tag == "span":
            self.numbers.append(self._open)
            self._open = None


def parse(html):
    p = Numbers()
    p.feed(html)
    return p


def lookup(metrics, path):
    node = metrics
    for part in path.split("."):
        node = node[part]
    return node


def shown_matches(text, value):
    """The text shows ``value`` rounded to the digits it prints (percent or plain); independent of the report's
    own formatter."""
    t = text.strip().replace("\u2212", "-")
    if t == "n/a":
        return value is None
    pct = t.endswith("%")
    t = t.rstrip("%")
    shown = float(t) / (100 if pct else 1)
    decimals = len(t.split(".")[1]) if "." in t and "e" not in t else None
    if decimals is None:
        return abs(shown - value) <= 5e-3 * abs(value)  # 3 significant digits
    half = 0.5 * 10 ** -decimals / (100 if pct else 1)
    return abs(shown - value) <= half * (1 + 1e-9) + 1e-15


@pytest.fixture(scope="module")
def full_run(report_run):  # tests/conftest.py: the embedded data, LAC, risk control, the monitor
    return report_run


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "bare"
    run(compose([*SMALL, "conformal=none", "policy=none"]), out)
    return out


def test_every_run_writes_its_report_and_its_numbers_are_metrics_json(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((full_run / "metrics.json").read_text())
    page = parse(html)
    paths = {n["data-metric"] for n in page.numbers}
    for key in ("policy.automation_rate", "policy.escalation_rate", "policy.fallback_rate",
                "policy.task_completion_rate", "policy.silent_failure_rate", "policy.selective_risk",
                "policy.expected_cost", "policy.expected_time", "conformal.coverage", "calibrated.ece",
                "calibrated.nll", "uncalibrated.ece"):
        assert key in paths, key
    for n in page.numbers:
        value = lookup(metrics, n["data-metric"])
        assert json.loads(n["data-value"]) == value, n  # the exact JSON number, not a re-computation
        assert shown_matches(n["text"], value), n
    assert page.cis
    for c in page.cis:  # every interval shown is metrics.json's
        path = c["data-ci-of"]
        section, key = path.rsplit(".", 1)
        ci_path = f"{section}.ci.{key}" if section == "policy" else f"calibration_ci.{path}"
        assert json.loads(c["data-ci"]) == lookup(metrics, ci_path), path


def test_the_decision_comes_first_with_plain_sentences(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", " ", html)
    order = [text.index(s) for s in ("The decision", "Answered by the model", "Task completion", "Silent failures",
                                     "Expected cost per item", "Where silent failures concentrate",
                                     "For the specialist: calibration", "For the specialist: prediction sets",
                                     "Shift monitor", "Run details")]
    assert order == sorted(order)
    assert re.search(r"Of every 100 items, the model answers about\s+\d+\s+on its own", text)
    assert "in 10,000" in text
    metrics = json.loads((full_run / "metrics.json").read_text())
    test = metrics["policy"]["test_risk_test"]
    assert f"wrong on {test['n_errors']}" in text and f"answered {test['n_answered']} items" in text
    # the slices where silent failures concentrate: metrics.json's top slices, in its order
    top = metrics["policy"]["slices"]["top"]
    assert top and all(f"class {r['slice']}" in text for r in top)


def test_self_contained_no_script_no_remote_reference(full_run):
    html = (full_run / "report.html").read_text(encoding="utf-8")
    page = parse(html)
    assert "default-src 'none'" in html and 'http-equiv="Content-Security-Policy"' in html
    assert not re.search(r"<script|<link|<iframe|<object|<embed|@import|url\(", html, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    names = {"reliability.png", "conformal_coverage.png", "set_size_histogram.png", "class_coverage.png",
             "risk_coverage.png", "completion_frontier.png", "silent_failure_slices.png"}
    assert len(page.imgs) == len(names) + 4  # + the monitor's four figures
    on_disk = {base64.b64encode((full_run / n).read_bytes()).decode() for n in names}
    on_disk |= {base64.b64encode(p.read_bytes()).decode() for p in (full_run / "monitor").glob("*.png")}
    assert {src.split(",", 1)[1] for src in page.imgs} == on_disk  # the run's own figures, byte for byte
    assert all(src.startswith("data:image/png;base64,") for src in page.imgs)


def test_run_without_policy_says_so_and_shows_no_decision_numbers(bare_run):
    html = (bare_run / "report.html").read_text(encoding="utf-8")
    assert "routes nothing" in html and "policy=risk_control" in html
    paths = {n["data-metric"] for n in parse(html).numbers}
    assert not any(p.startswith(("policy.", "conformal.")) for p in paths)
    assert {"calibrated.accuracy", "calibrated.ece"} <= paths


def test_markup_in_names_and_warnings_is_escaped(full_run, tmp_path):
    run_dir = tmp_path / "x"
    run_dir.mkdir()
    metrics = json.loads((full_run / "metrics.json").read_text())
    metrics["warnings"] = ["<script>alert(1)</script> coverage below target"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("data:\n  name: <img src=x onerror=alert(2)>\nseed: 0\n")
    html = render_run_report(run_dir)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; coverage below target" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html


def test_rerun_replaces_the_report_and_a_failed_render_keeps_the_old_one(full_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(full_run, run_dir)
    before = (run_dir / "report.html").read_bytes()
    (run_dir / "reliability.png").write_bytes(b"GIF89a not a png")
    with pytest.raises(ValueError, match=r"reliability\.png.*as a PNG file"):
        write_report(run_dir)
    assert (run_dir / "report.html").read_bytes() == before
    assert not list(run_dir.glob(".report.html*"))  # no temporary left behind


@pytest.mark.parametrize("content, match", [
    (b"{not json", r"metrics\.json.*invalid JSON"),
    (b"[1, 2]", r"metrics\.json.*JSON object, got list"),
])
def test_bad_metrics_json(tmp_path, content, match):
    (tmp_path / "metrics.json").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_not_a_run_or_sweep(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        report_kind(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        report_kind(tmp_path / "file")
    with pytest.raises(ValueError, match="holding neither"):
        report_kind(tmp_path)


def test_out_must_be_a_file(full_run, tmp_path):
    with pytest.raises(ValueError, match="Expected --out as a file name"):
        write_report(full_run, out=tmp_path)


def test_cli_report(full_run, tmp_path):
    out = tmp_path / "page.html"
    res = subprocess.run([sys.executable, "-m", "calib", "report", str(full_run), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "run report" in res.stdout and out.is_file()
    assert out.read_text(encoding="utf-8") == (full_run / "report.html").read_text(encoding="utf-8")
    res = subprocess.run([sys.executable, "-m", "calib", "report", str(tmp_path / "nope")], capture_output=True,
                         text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "calib report: error: Expected a run folder" in res.stderr


def test_formatters():
    assert (fmt_pct(0.14235), fmt_pct(0.0007914, 2), fmt_pct(float("nan")), fmt_pct(True)) == \
        ("14.2%", "0.08%", "n/a", "n/a")
    assert (fmt_num(51.459, 1), fmt_num(-0.0012345, 4), fmt_num(2.5e7), fmt_num(None)) == \
        ("51.5", "-0.0012", "2.5e+07", "n/a")


def test_a_run_folder_of_an_older_calib_still_renders(full_run, tmp_path):
    """metrics.json without the slice table, the calibration intervals or warnings (older calib, or
    eval.calibration_bootstrap=0): the page says what is missing instead of failing or inventing it."""
    metrics = json.loads((full_run / "metrics.json").read_text())
    metrics["policy"]["slices"].pop("top")
    for key in ("calibration_ci", "warnings"):
        metrics.pop(key)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    html = render_run_report(tmp_path)
    assert "written by an older calib" in html
    assert "No intervals (eval.calibration_bootstrap=0)" in html
    page = parse(html)
    assert not [c for c in page.cis if c["data-ci-of"].startswith(("calibrated.", "uncalibrated."))]
    for n in page.numbers:
        assert json.loads(n["data-value"]) == lookup(metrics, n["data-metric"])


def test_the_refitting_interval_is_shown_when_the_run_has_one(full_run, bare_run):
    """eval.procedure_resamples > 0: each decision card also shows the interval that refits everything (wider: a new
    calibration set moves the threshold), equal to metrics.json's procedure_ci; without it, the page says how to get
    one."""
    metrics = json.loads((full_run / "metrics.json").read_text())
    html = (full_run / "report.html").read_text(encoding="utf-8")
    procs = parse(html).procs
    assert {p["data-proc-ci-of"] for p in procs} >= {"automation_rate", "escalation_rate", "task_completion_rate",
                                                      "expected_cost"}
    for p in procs:
        assert json.loads(p["data-proc-ci"]) == metrics["procedure_ci"]["ci"][p["data-proc-ci-of"]]
    lo, hi = metrics["procedure_ci"]["ci"]["automation_rate"]
    clo, chi = metrics["policy"]["ci"]["automation_rate"]
    assert hi - lo > chi - clo  # the refitted interval is the wider one here (20 resamples)
    assert "this is the interval to plan with" in html
    bare = json.loads((bare_run / "metrics.json").read_text())
    assert "procedure_ci" not in bare
