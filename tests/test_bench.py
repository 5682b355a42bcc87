"""The benchmark scripts still run (``--quick``) and their peers still agree with calib on the same inputs.

Timings are printed by the scripts and never asserted here: speed is measured in bench/, not in tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_conformal_quick_sets_agree_with_peers():
    pytest.importorskip("mapie")
    out = _run("bench_conformal.py", "--peers", "calib", "torchcp", "mapie")
    rows = {tuple(line.split()[:2]): line.split() for line in out.splitlines() if re.match(r"^(lac|aps|raps)\w* ", line)}
    assert ("lac", "calib") in rows and ("lac", "floor") in rows
    assert rows[("lac", "mapie")][-1] == "1.0000"  # identical LAC sets, row for row
    if ("lac", "torchcp") in rows:  # TorchCP is installed with --no-deps by .ci/run; skipped and named otherwise
        for method in ("lac", "aps", "raps"):
            assert rows[(method, "torchcp")][-1] == "1.0000", rows[(method, "torchcp")]


def test_bench_temperature_quick_ece_equals_netcal():
    pytest.importorskip("netcal")
    out = _run("bench_temperature.py")
    ece = dict(re.findall(r"^ECE\(15\): (calib|netcal)\s*\|\s*[\d.]+\s*\|\s*([\d.]+)", out, flags=re.M))
    assert set(ece) == {"calib", "netcal"} and ece["calib"] == ece["netcal"]


def test_bench_calibrators_quick_matches_peers():
    pytest.importorskip("netcal")
    pytest.importorskip("sklearn")
    out = _run("bench_calibrators.py")
    iso = re.findall(r"^\| isotonic \(ovr\) \|[^|]*\|[^|]*\|[^|]*\|[^|]*\| ([\d.e+-]+) \|", out, flags=re.M)
    assert len(iso) == 4  # sklearn and netcal, two sizes
    assert max(float(d) for d in iso) < 1e-6  # same isotonic fit up to float32 rounding of the output
