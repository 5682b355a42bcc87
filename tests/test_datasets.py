"""calib.datasets: the embedded sets (files, one-line descriptions, licenses, reference numbers), the opt-in sets'
errors, and the conf/data options that name them.

Independent references: the arrays are read with ``np.load(allow_pickle=False)`` (not calib's loader); the split
conventions are rebuilt from the documented seed; temperatures are fitted with scipy; the reference numbers are
those computed when the files were collected (calib/data/README.md, from the ../shared READMEs).
"""

from __future__ import annotations

import fnmatch
import re
from importlib import resources

import numpy as np
import pytest
import tomllib
from conftest import REPO, SHARED_DATA

from calib import datasets

DATA = REPO / "calib" / "data"
NETCAL_KUMAR = ["netcal_cifar10_wrn16_4", "netcal_cifar100_wrn16_4", "netcal_cifar100_densenet_bc100",
                "c10_vgg16_kumar"]
C10LT = ["c10lt_densenet40", "c10lt_resnet110", "c10lt_resnet110_sd", "c10lt_wrn28"]
LICENSES = {"MIT": ("LICENSE", "LICENSE-kumar-MIT"), "Apache-2.0": ("LICENSE-netcal-Apache-2.0",)}
# Embedded name -> the file in ../shared/data it was copied from.
ORIGIN = {**{f"c10lt_{m}": f"c10lt_sctl/{m}.npz" for m in ("densenet40", "resnet110", "resnet110_sd", "wrn28")},
          **{f"netcal_{m}": f"cifar_netcal/{m}.npz" for m in ("cifar10_wrn16_4", "cifar100_wrn16_4",
                                                              "cifar100_densenet_bc100")},
          "c10_vgg16_kumar": "c10_vgg16_kumar/logits.npz"}


def _raw(name):
    with np.load(DATA / datasets.BUILTIN[name], allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def test_available_lists_every_embedded_set_with_a_line_that_matches_its_file():
    lines = datasets.available()
    assert list(lines) == list(datasets.BUILTIN) == C10LT + NETCAL_KUMAR
    for name, line in lines.items():
        raw = _raw(name)
        n, k = raw["logits"].shape
        m = re.search(r"(\d+) classes, ([\d,]+) rows", line)
        assert m, f"{name}: {line!r} names no classes/rows"
        assert (int(m.group(1)), int(m.group(2).replace(",", ""))) == (k, n), name
        license_name = line.rsplit("; ", 1)[-1]
        assert license_name in LICENSES, f"{name}: license {license_name!r}"
        for file in LICENSES[license_name]:
            assert (DATA / file).stat().st_size > 500
        assert raw["logits"].dtype == np.float32 and raw["labels"].dtype == np.int64 and raw["split"].dtype == np.int8
        assert raw["labels"].min() == 0 and raw["labels"].max() == k - 1
        counts = np.bincount(raw["split"])
        assert counts.tolist() == ([10216, 10000] if name in C10LT else [5000, 5000]), name


@pytest.mark.parametrize("name", C10LT + NETCAL_KUMAR)
def test_load_returns_the_file_arrays_bit_for_bit(name):
    raw, data = _raw(name), datasets.load(name)
    np.testing.assert_array_equal(data.logits, raw["logits"])
    np.testing.assert_array_equal(data.labels, raw["labels"])
    np.testing.assert_array_equal(data.split, raw["split"])


@pytest.mark.parametrize("name", NETCAL_KUMAR)
def test_netcal_and_kumar_files_follow_the_documented_conventions(name):
    raw = _raw(name)
    # logits = log(probs) of the published softmax outputs (computed in float64, stored as float32)
    np.testing.assert_array_equal(raw["logits"], np.log(raw["probs"].astype(np.float64)).astype(np.float32))
    assert np.isfinite(raw["logits"]).all()
    assert np.abs(raw["probs"].astype(np.float64).sum(axis=1) - 1).max() < 1e-6
    # split: perm = default_rng(0).permutation(10000); perm[:5000] -> 0
    perm = np.random.default_rng(0).permutation(10000)
    expected = np.ones(10000, np.int8)
    expected[perm[:5000]] = 0
    np.testing.assert_array_equal(raw["split"], expected)


@pytest.mark.parametrize("name", list(ORIGIN))
def test_embedded_files_are_the_shared_originals(name):
    origin = SHARED_DATA / ORIGIN[name]
    if not origin.is_file():
        pytest.skip(f"{origin} is absent (set CALIB_SHARED_DATA)")
    assert (DATA / datasets.BUILTIN[name]).read_bytes() == origin.read_bytes()


# Reference numbers of calib/data/README.md: accuracy % (all rows), T, test ECE15 % uncal / TS, test NLL uncal / TS.
REFERENCE = {
    "netcal_cifar10_wrn16_4": (91.09, 2.067, 5.12, 0.94, 0.3571, 0.2603),
    "netcal_cifar100_wrn16_4": (75.43, 1.123, 5.65, 4.25, 0.9576, 0.9509),
    "netcal_cifar100_densenet_bc100": (75.41, 2.118, 13.99, 1.39, 1.2263, 0.8756),
    "c10_vgg16_kumar": (93.59, 1.723, 3.68, 1.53, 0.2294, 0.1825),
}


def _ece15(probs, labels):
    """Top-label ECE, 15 equal-width bins (lo, hi]: the definition of the reference numbers (numpy only)."""
    conf, hit = probs.max(axis=1), probs.argmax(axis=1) == labels
    bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
    total = 0.0
    for b in range(15):
        m = bins == b
        if m.any():
            total += abs(conf[m].mean() - hit[m].mean()) * m.mean()
    return total


@pytest.mark.parametrize("name", list(REFERENCE))
def test_reference_numbers_are_reproduced(name):
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax, softmax

    from calib.calibrators import TemperatureScaling
    from calib.metrics import expected_calibration_error, negative_log_likelihood

    acc, t_ref, ece_u, ece_ts, nll_u, nll_ts = REFERENCE[name]
    data = datasets.load(name)
    cal, test = data.split_cal_test()
    assert round(100 * float((data.logits.argmax(1) == data.labels).mean()), 2) == acc
    z = cal.logits.astype(np.float64)
    res = minimize_scalar(lambda t: -log_softmax(z / t, axis=1)[np.arange(len(z)), cal.labels].mean(),
                          bounds=(0.05, 20), method="bounded", options={"xatol": 1e-8})
    assert round(res.x, 3) == t_ref  # scipy, independent of calib
    ts = TemperatureScaling().fit(cal.logits, cal.labels)
    assert abs(ts.temperature_ - res.x) < 1e-4
    zt = test.logits.astype(np.float64)
    for probs, ece_ref, nll_ref in ((softmax(zt, axis=1), ece_u, nll_u), (softmax(zt / res.x, axis=1), ece_ts, nll_ts)):
        assert round(100 * _ece15(probs, test.labels), 2) == ece_ref
        assert abs(100 * expected_calibration_error(probs, test.labels, n_bins=15) - ece_ref) < 0.006
        assert round(negative_log_likelihood(probs, test.labels), 4) == nll_ref


def test_an_unknown_name_lists_the_embedded_ones_and_an_opt_in_name_says_where_it_comes_from():
    with pytest.raises(ValueError) as err:
        datasets.load("cifar10_wrn")
    assert all(name in str(err.value) for name in datasets.BUILTIN)
    with pytest.raises(ValueError, match=r"opt-in set, not embedded.*github.com/chenyaofo/pytorch-cifar-models"):
        datasets.load("cifar10_resnet56")
    with pytest.raises(TypeError, match="Expected a builtin dataset name as a str"):
        datasets.load(3)


def test_an_absent_opt_in_file_says_where_the_set_comes_from(tmp_path):
    for source in datasets.OPT_IN:
        with pytest.raises(FileNotFoundError) as err:
            datasets.load_opt_in(tmp_path / "absent.npz", source=source)
        message = str(err.value)
        assert "absent.npz" in message and "https://github.com/" in message
        assert "CALIB_SHARED_DATA" in message and "data.path=" in message
    with pytest.raises(ValueError, match=r"Expected source as one of \["):
        datasets.load_opt_in(tmp_path / "x.npz", source="nowhere")
    path = tmp_path / "mine.npz"
    np.savez(path, logits=np.zeros((4, 3), np.float32), labels=np.array([0, 1, 2, 0]))
    assert datasets.load_opt_in(path, source="cifar_chenyaofo").logits.shape == (4, 3)


def test_conf_data_options_name_the_embedded_sets_and_the_opt_in_ones():
    from omegaconf import OmegaConf

    for name in datasets.BUILTIN:
        node = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
        assert (node._target_, node.name) == ("calib.datasets.load", name)
    opt_in = 0
    for path in sorted((REPO / "conf" / "data").glob("*.yaml")):
        text = path.read_text()
        if "shared/data" in text:
            node = OmegaConf.load(path)
            assert node._target_ == "calib.datasets.load_opt_in" and node.source in datasets.OPT_IN, path.name
            assert f"/{node.source}/" in text
            opt_in += 1
    assert opt_in == 18  # 16 chenyaofo + 2 Kull


def test_data_option_instantiates_an_embedded_set_and_refuses_an_absent_opt_in_one(monkeypatch, tmp_path):
    from hydra import compose, initialize_config_dir

    from calib._hydra import instantiate
    from calib.config import register_configs

    register_configs()
    monkeypatch.setenv("CALIB_SHARED_DATA", str(tmp_path))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        embedded = compose(config_name="config", overrides=["data=netcal_cifar100_wrn16_4"])
        opt_in = compose(config_name="config", overrides=["data=cifar10_resnet56"])
    data = instantiate(embedded.data)
    assert (data.n_samples, data.n_classes) == (10000, 100)
    with pytest.raises(Exception, match="not part of calib"):
        instantiate(opt_in.data)


def test_package_data_ships_every_file_of_calib_data():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["calib"]
    files = [p.name for p in DATA.iterdir() if p.is_file()]
    for required in ("README.md", "NOTICE", "LICENSE", "LICENSE-kumar-MIT", "LICENSE-netcal-Apache-2.0",
                     *datasets.BUILTIN.values()):
        assert required in files
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f"data/{f}", pat) for pat in patterns)]
    assert not unshipped, f"calib/data files that a wheel would leave out: {unshipped}"
    assert resources.files("calib").joinpath("data", "NOTICE").is_file()
