"""Regenerate the README's screenshot of report.html (docs/img/report.png): ``python docs/img/make_report_screenshot.py``.

Runs the quick start with routing and prediction sets (``python experiments/calibrate.py conformal=lac
policy=risk_control policy.target_risk=0.02``, through :func:`calib.experiment.run`) into a temporary folder and takes
the top of its ``report.html`` (the decision, what a product owner reads first) in headless chromium
(``apt-get install -y chromium``), the same browser CI checks the page with. About 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "report.png"), help="PNG to write (default docs/img/report.png)")
    parser.add_argument("--height", type=int, default=1250, help="pixels of the page's top to keep (default 1250)")
    args = parser.parse_args(argv)
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if binary is None:
        print("make_report_screenshot.py: chromium not found (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from calib.experiment import compose, run

    with tempfile.TemporaryDirectory() as tmp:
        run(compose(["conformal=lac", "policy=risk_control", "policy.target_risk=0.02"]), Path(tmp) / "run")
        page = (Path(tmp) / "run" / "report.html").as_uri()
        res = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                              f"--user-data-dir={Path(tmp) / 'profile'}", "--force-device-scale-factor=1",
                              f"--window-size=1100,{args.height}", f"--screenshot={args.out}", page],
                             capture_output=True, text=True, timeout=120)
    if res.returncode != 0 or not Path(args.out).is_file():
        print(f"make_report_screenshot.py: chromium failed: {res.stderr[-1000:]}", file=sys.stderr)
        return 1
    print(f"{args.out}: {Path(args.out).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
