"""A real browser for the report checks: Debian's headless ``chromium`` (installed by .ci/run), no Playwright.

:func:`open_page` loads a local HTML file twice (screenshot + net log + console log, then the DOM after load)
and returns what a reviewer of a self-contained page cares about: the screenshot, every network request the
*page* started (read from chromium's net log, the browser's own background traffic — component updates, time
checks, marked ``initiator: not an origin`` — set aside), every console message, and the rendered DOM.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

#: binaries tried in order
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--hide-scrollbars", "--force-device-scale-factor=1")
_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?(?::\d+)?\]\s*(.*)")


def find_chromium():
    """Path of a chromium binary, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclasses.dataclass
class Page:
    screenshot: Path
    requests: list  # URLs the page itself requested (any scheme but file: and data:)
    console: list  # console messages (any level: a page without script should log none)
    dom: str


def _page_requests(netlog_path):
    log = json.loads(Path(netlog_path).read_text(encoding="utf-8", errors="replace"))
    types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if types.get(event.get("type")) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        if params.get("initiator") == "not an origin":  # the browser's own traffic, not the page's
            continue
        if not params["url"].startswith(("file:", "data:")):
            urls.append(params["url"])
    return urls


def open_page(html, workdir, *, width=1200, height=2400, timeout=90):
    """Load the local file ``html`` in headless chromium; write the screenshot into ``workdir``."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium not found (apt-get install -y chromium)")
    html, workdir = Path(html).resolve(), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shot, netlog = workdir / f"{html.stem}.png", workdir / f"{html.stem}.netlog.json"
    env = {**os.environ, "HOME": str(workdir)}  # a fresh profile: no user state, no cached pages
    common = [binary, *FLAGS, f"--user-data-dir={workdir / 'profile'}"]
    first = subprocess.run([*common, "--enable-logging=stderr", "--v=0", f"--log-net-log={netlog}",
                            f"--window-size={width},{height}", f"--screenshot={shot}", html.as_uri()],
                           capture_output=True, text=True, timeout=timeout, env=env)
    if not shot.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {first.returncode}): {first.stderr[-2000:]}")
    console = [m.group(1) for line in first.stderr.splitlines() if (m := _CONSOLE.search(line))]
    second = subprocess.run([*common, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                            timeout=timeout, env=env)
    if second.returncode != 0 or "<html" not in second.stdout:
        raise RuntimeError(f"chromium --dump-dom failed (exit {second.returncode}): {second.stderr[-2000:]}")
    return Page(screenshot=shot, requests=_page_requests(netlog), console=console, dom=second.stdout)


def main(argv=None):
    """``python tests/_browser.py RUN_DIR [SHOT_DIR]``: the CI check of one run's report.html, printed."""
    import sys
    import tempfile

    from test_report import lookup, parse, shown_matches

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python tests/_browser.py RUN_DIR [SCREENSHOT_DIR]", file=sys.stderr)
        return 2
    run_dir = Path(args[0])
    shots = Path(args[1]) if len(args) > 1 else Path(tempfile.mkdtemp(prefix="calib_report_check_"))
    page = open_page(run_dir / "report.html", shots)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    numbers = parse(page.dom).numbers
    equal = [n for n in numbers if json.loads(n["data-value"]) == lookup(metrics, n["data-metric"])
             and shown_matches(n["text"], lookup(metrics, n["data-metric"]))]
    print(f"screenshot: {page.screenshot}")
    print(f"requests by the page: {len(page.requests)} {page.requests}")
    print(f"console messages: {len(page.console)} {page.console}")
    print(f"key numbers rendered: {len(numbers)}; equal to metrics.json (value and as shown): {len(equal)}")
    for n in numbers[:8]:
        print(f"  {n['data-metric']}: shown {n['text'].strip()!r}, metrics.json {lookup(metrics, n['data-metric'])!r}")
    return 0 if not page.requests and not page.console and len(equal) == len(numbers) else 1


if __name__ == "__main__":
    raise SystemExit(main())
