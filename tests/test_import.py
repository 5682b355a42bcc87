"""`import calib` stays light: no netcal, hydra, matplotlib or torch until a function needs them."""

import subprocess
import sys

HEAVY = ("netcal", "hydra", "matplotlib", "torch", "scipy", "sklearn", "omegaconf")


def test_import_calib_does_not_pull_heavy_dependencies():
    code = (
        "import sys, calib, calib.calibrators, calib.metrics, calib.artifacts, calib.io, calib.datasets, "
        "calib.plots, calib.conformal, calib.policy, calib.selective, calib.pipeline, calib.results, calib.config, "
        "calib.evaluation, calib.evaluation.pipeline, calib.evaluation.conformal, calib.evaluation.routing, "
        "calib.evaluation.compare, calib.evaluation.results, calib.plotting, calib.plotting.reliability, "
        "calib.plotting.conformal, calib.plotting.routing, calib.plotting.results\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
