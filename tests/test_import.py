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


DOCUMENTED = ("datasets", "io", "metrics", "selective", "stats", "calibrators", "conformal", "policy", "shift",
              "artifacts", "deploy", "runtime", "evaluation", "plotting", "config")


def test_bare_import_calib_reaches_the_documented_submodules_lazily():
    code = (
        "import sys, calib\n"
        f"documented = {DOCUMENTED!r}\n"
        "print(sorted(n for n in documented if n not in calib.SUBMODULES))\n"
        "print(sorted(n for n in calib.SUBMODULES if n != 'io' and f'calib.{n}' in sys.modules))\n"  # nothing eager
        "mods = {n: getattr(calib, n) for n in calib.SUBMODULES}\n"
        "print(sorted(n for n, m in mods.items() if m is not sys.modules[f'calib.{n}']))\n"
        "print(callable(calib.datasets.load), callable(calib.metrics.expected_calibration_error), set(calib.SUBMODULES) <= set(dir(calib)))\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "try:\n    calib.no_such_module\nexcept AttributeError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "[]", "[]", "True True True", "[]",
                                       "module 'calib' has no attribute 'no_such_module'"], out.stdout + out.stderr
