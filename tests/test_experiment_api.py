"""calib.experiment: compose (Hydra's compose API over conf/) and fit give what calibrate.py writes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calib.experiment import CONFIG_DIR, compose, fit, run

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["data=synthetic", "data.n=3000", "conformal=lac", "policy=threshold", "eval.n_bootstrap=100",
             "eval.calibration_bootstrap=50", "seed=3"]


def test_fit_equals_the_command_line_run(tmp_path):
    """The notebook path (compose + fit) and the command line (calibrate.py) give the same metrics.json."""
    res = subprocess.run([sys.executable, str(REPO / "experiments" / "calibrate.py"), *OVERRIDES,
                          f"hydra.run.dir={tmp_path / 'cli'}"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    on_disk = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    result = fit(compose(OVERRIDES))
    from calib._json import to_json

    in_memory = json.loads(json.dumps(to_json(result.metrics)))
    on_disk.pop("artifact_id")
    assert in_memory == on_disk
    # the parts are the run's split: sizes as in metrics.json, and the test labels are the result's
    assert (result.cal.n_samples, result.test.n_samples) == (on_disk["n_cal"], on_disk["n_test"])
    np.testing.assert_array_equal(result.test.labels, result.test_labels)
    assert (tmp_path / "cli" / "report.html").is_file()  # calibrate.py writes the report too


def test_run_writes_the_folder(tmp_path):
    metrics = run(compose(["data=synthetic", "data.n=2000", "eval.n_bootstrap=50", "eval.calibration_bootstrap=0"]),
                  tmp_path / "r")
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"metrics.json", "timings.json", "report.html", "reliability.png", "artifact"} <= names
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["artifact_id"] == metrics["artifact_id"]


def test_compose_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match=r"list of 'key=value' strings, got the string 'seed=1'"):
        compose("seed=1")
    with pytest.raises(TypeError, match=r"got 3 \(int\)"):
        compose(["seed=1", 3])
    with pytest.raises(FileNotFoundError, match=r"config_dir as a folder holding config\.yaml"):
        compose([], config_dir=tmp_path)
    with pytest.raises(ValueError, match=r"did you mean 'calibrator\.log_t_bounds'"):
        compose(["calibrator.log_t_bound=[0,1]"])
    assert (CONFIG_DIR / "config.yaml").is_file()
