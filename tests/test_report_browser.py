"""report.html in a real browser (Debian's headless chromium; .ci/run installs it and sets CALIB_REQUIRE_BROWSER=1,
so CI fails instead of skipping when it is missing): a screenshot is taken, the page makes no network request and
logs nothing to the console, and the numbers it renders are metrics.json's. The checks are shown to catch what
they look for on pages that do request and log (so a silent harness cannot pass)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from _browser import find_chromium, open_page
from test_report import lookup, parse, shown_matches

REQUIRED = os.environ.get("CALIB_REQUIRE_BROWSER", "") not in ("", "0")
if find_chromium() is None:
    if REQUIRED:
        raise RuntimeError("CALIB_REQUIRE_BROWSER=1 but no chromium found (apt-get install -y chromium)")
    pytest.skip("chromium not installed (apt-get install -y chromium); CI installs it", allow_module_level=True)

#: where CI keeps the screenshots (optional)
SHOTS = os.environ.get("CALIB_REPORT_SCREENSHOTS")


def _keep(page, name):
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page.screenshot, Path(SHOTS) / name)


def _screenshot_ok(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 1000 and img.shape[1] >= 1000
    gray = img[..., :3].mean(axis=2)
    assert gray.std() > 0.05  # not a blank page
    assert (gray < 0.5).mean() > 0.01  # text and figures drawn


@pytest.fixture(scope="module")
def full_run(report_run):  # tests/conftest.py: the embedded data, LAC, risk control, the monitor
    return report_run


def test_run_report_in_chromium(full_run, tmp_path):
    page = open_page(full_run / "report.html", tmp_path)
    _keep(page, "run_report.png")
    _screenshot_ok(page.screenshot)
    assert page.requests == []
    assert page.console == []
    metrics = json.loads((full_run / "metrics.json").read_text())
    rendered = parse(page.dom)
    shown = {n["data-metric"] for n in rendered.numbers}
    assert {"policy.automation_rate", "policy.escalation_rate", "policy.fallback_rate", "policy.task_completion_rate",
            "policy.silent_failure_rate", "policy.expected_cost", "policy.expected_time"} <= shown
    for n in rendered.numbers:
        value = lookup(metrics, n["data-metric"])
        assert json.loads(n["data-value"]) == value and shown_matches(n["text"], value), n
    assert len(rendered.imgs) == 11 and all(s.startswith("data:image/png;base64,") for s in rendered.imgs)


def test_the_checks_see_requests_and_console_messages(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body><p>x</p>'
                   '<img src="http://127.0.0.1:9/pixel.png"><script>console.error("boom")</script></body></html>')
    page = open_page(bad, tmp_path)
    assert page.requests == ["http://127.0.0.1:9/pixel.png"]
    assert any("boom" in m for m in page.console)


def test_the_report_policy_blocks_an_injected_request(full_run, tmp_path):
    """Defence in depth: markup that slipped into a report could not reach the network (the page's
    Content-Security-Policy blocks it, and the block is logged, which the console check would catch)."""
    html = (full_run / "report.html").read_text(encoding="utf-8")
    injected = tmp_path / "injected.html"
    injected.write_text(html.replace("<main>", '<main><img src="http://127.0.0.1:9/pixel.png">', 1), encoding="utf-8")
    page = open_page(injected, tmp_path)
    assert page.requests == []
    assert any("Content Security Policy" in m for m in page.console)
