"""Shared fixtures: real logits from ../shared/data (skipped with a reason when absent) and synthetic logits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from calib.datasets import synthetic

#: fixture folders hold data and the scripts that wrote them once against an older calib: never collected
collect_ignore_glob = ["fixtures/*"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CALIB_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_npz(relpath):
    """Path of a file in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relpath
    if not path.is_file():
        pytest.skip(f"real logits {relpath} not available: {SHARED_DATA} is absent (set CALIB_SHARED_DATA)")
    return path


def load_shared(relpath):
    from calib import load_logits

    return load_logits(shared_npz(relpath))


@pytest.fixture(scope="session")
def synthetic_data():
    """20,000 x 10 synthetic logits with true temperature 2.0 (first half calibration)."""
    return synthetic(n=20000, n_classes=10, temperature=2.0, seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def report_run(tmp_path_factory):
    """A complete run folder on the embedded real data (the quick start's, where the policy certifies and answers
    some items): LAC sets, risk control at 0.02, 20 refitting resamples, the shift monitor on its test part; its report.html is what
    tests/test_report.py and tests/test_report_browser.py read."""
    from calib.experiment import compose, run

    out = tmp_path_factory.mktemp("report") / "run"
    run(compose(["eval.n_bootstrap=500", "eval.calibration_bootstrap=100", "eval.procedure_resamples=20",
                 "conformal=lac", "policy=risk_control", "policy.target_risk=0.02", "monitor.target=test"]), out)
    return out
