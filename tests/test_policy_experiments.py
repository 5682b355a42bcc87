"""Entry points of the routing issue: compare.py (Hydra), shift_report.py, audit_policy.py --quick."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import REPO, shared_npz


def test_compare_two_models_one_table(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from hydra import compose, initialize_config_dir

    folder = shared_npz("cifar_chenyaofo/cifar10_resnet20.npz").parent
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import compare
    finally:
        sys.path.remove(str(REPO / "experiments"))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="compare", overrides=[f"data_dir={folder}", "part=null",
                                                        "pattern='cifar10_resnet[25]*.npz'", "n_resamples=200",
                                                        "paired_resamples=50"])
    result = compare.run(cfg, tmp_path)
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["cifar10_resnet20", "cifar10_resnet56"]
    # ECE after temperature scaling on split==1 as published in the dataset README (0.74 %, 0.78 %)
    assert [round(100 * r["ece"], 2) for r in rows] == [0.74, 0.78]
    for r in rows:
        assert r["policies"]["risk_control"]["guarantee"]["certified"]
        assert set(r["policies"]) == {"risk_control", "cost"}
    table = (tmp_path / "compare.md").read_text()
    # two models x (3 budget + 1 target-risk tables of the matched comparison + 2 policy tables)
    assert table.count("\n| cifar10_") == 2 * (3 + 1 + 2)
    assert (tmp_path / "compare.png").is_file()


def test_compare_refuses_files_with_different_test_sets(tmp_path):
    from omegaconf import OmegaConf

    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import compare
    finally:
        sys.path.remove(str(REPO / "experiments"))
    rng = np.random.default_rng(0)
    for i in range(2):
        np.savez(tmp_path / f"m{i}.npz", logits=rng.normal(size=(40, 3)).astype(np.float32),
                 labels=rng.integers(0, 3, 40), split=np.r_[np.zeros(20), np.ones(20)].astype(np.int8))
    cfg = OmegaConf.create({"data_dir": str(tmp_path), "pattern": "m*.npz", "seed": 0, "n_bins": 15,
                            "n_resamples": 10, "calibrator": {"_target_": "calib.calibrators.IdentityCalibrator"},
                            "policies": {}})
    with pytest.raises(ValueError, match="share one test set"):
        compare.compare(cfg)


def test_shift_report_breaks_under_label_shift_only():
    import warnings

    from calib import load_logits
    from calib.calibrators import TemperatureScaling
    from calib.policy import RiskControlPolicy
    from calib.policy.shift import shift_report

    data = load_logits(shared_npz("c10lt_sctl/resnet110.npz"))
    cal, test = data.split_cal_test()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rep = shift_report(cal.logits, cal.labels, test.logits, test.labels, calibrator=TemperatureScaling(),
                           policy=RiskControlPolicy(target_risk=0.05, delta=0.1), n_resamples=200)
    assert rep["guarantee"]["certified"] and rep["broken"]
    assert round(100 * rep["test_ece"], 2) == 5.90  # TS test ECE of the dataset README
    broken = {c["class"] for c in rep["classes"] if c["broken"]}
    assert "9" in broken and "0" not in broken  # the rarest validation class breaks, the most frequent holds


def test_audit_quick_command_runs(capsys):
    # The default data are embedded (no ../shared): --quick audits the first, netcal_cifar10_wrn16_4.
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import audit_policy
    finally:
        sys.path.remove(str(REPO / "experiments"))
    assert audit_policy.main(["--quick", "--n-splits", "100"]) == 0
    out = capsys.readouterr().out
    assert "violations" in out and "netcal_cifar10_wrn16_4" in out


# --- calib.policy.compare: the library side of compare.py ---------------------------------------------------
def _two_models():
    from calib.datasets import synthetic
    from calib.io import LogitsData

    a = synthetic(n=4000, n_classes=5, temperature=2.0, seed=3)
    rng = np.random.default_rng(1)
    # a weaker model on the same rows and labels: noisier logits
    b = LogitsData(logits=(a.logits + rng.normal(scale=4.0, size=a.logits.shape)).astype(np.float32),
                   labels=a.labels, split=a.split)
    return [("model_a", a), ("model_b", b)]


def test_compare_models_rows_and_table():
    from calib.calibrators import TemperatureScaling
    from calib.policy import ThresholdPolicy
    from calib.policy.compare import compare_models, markdown_table

    models = _two_models()
    result = compare_models(models, TemperatureScaling, {"half": lambda: ThresholdPolicy(target_coverage=0.5)},
                            n_resamples=50)
    assert [r["model"] for r in result["rows"]] == ["model_a", "model_b"] and set(result["curves"]) == {"model_a", "model_b"}
    for (name, data), row in zip(models, result["rows"]):
        test = data.split == 1
        # temperature scaling keeps the argmax: accuracy is that of the raw logits
        assert row["accuracy"] == np.mean(data.logits[test].argmax(1) == data.labels[test])
        assert row["n_test"] == int(test.sum())
        rate = row["policies"]["half"]["automation_rate"]
        lo, hi = row["policies"]["half"]["ci"]["automation_rate"]
        assert lo <= rate <= hi
    table = markdown_table(result["rows"], "half", calibrator="TemperatureScaling")
    body = [line for line in table.splitlines() if line.startswith("| model_")]
    accs = [float(line.split("|")[2]) for line in body]
    assert len(body) == 2 and accs == sorted(accs, reverse=True)  # best accuracy first
    assert "ECE after TemperatureScaling (15 bins)" in table


def test_compare_models_bad_input():
    from calib.calibrators import TemperatureScaling
    from calib.io import LogitsData
    from calib.policy.compare import compare_models, markdown_table

    models = _two_models()
    with pytest.raises(TypeError, match="make_calibrator as a callable"):
        compare_models(models, TemperatureScaling(), {})
    with pytest.raises(TypeError, match=r"not callable: \['bad'\]"):
        compare_models(models, TemperatureScaling, {"bad": 3})
    with pytest.raises(ValueError, match="at least one"):
        compare_models([], TemperatureScaling, {})
    name, a = models[0]
    shuffled = LogitsData(logits=a.logits, labels=np.roll(a.labels, 1), split=a.split)
    with pytest.raises(ValueError, match="'other' has test labels different from 'model_a'"):
        compare_models([models[0], ("other", shuffled)], TemperatureScaling, {})
    rows = compare_models(models, TemperatureScaling, {})["rows"]
    with pytest.raises(ValueError, match="Unknown policy 'cost'"):
        markdown_table(rows, "cost")
    from calib.policy.plots import plot_comparison

    with pytest.raises(ValueError, match=r"Unknown policy 'cost' for models \['model_a', 'model_b'\]"):
        plot_comparison({"rows": rows, "curves": {}}, "cost")


def test_plot_comparison_short_names():
    from calib.policy.plots import _short_names

    assert _short_names(["cifar10_resnet20", "cifar10_vgg11_bn"]) == {"cifar10_resnet20": "resnet20",
                                                                     "cifar10_vgg11_bn": "vgg11_bn"}
    assert _short_names(["only_one"]) == {"only_one": "only_one"}
