"""Registry-wide tests of every calibrator on real logits (the embedded long-tailed CIFAR-10 set).

Each REGISTRY entry: fits, rows sum to 1, calibration NLL not above identity (for NLL minimisers),
bit-exact artifact round trip, numpy == torch input, a class absent from the calibration split (works,
warns), bad hyper-parameters rejected at construction, and its conf/calibrator/*.yaml options compose.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from calib import datasets
from calib.artifacts import load_artifact, save_artifact
from calib.calibrators import REGISTRY, IdentityCalibrator
from calib.metrics import negative_log_likelihood

CONF = Path(__file__).resolve().parents[1] / "conf" / "calibrator"

BINARY = {"platt", "beta"}
#: methods whose fit minimises the calibration NLL over a family that contains the identity map
NLL_MINIMISERS = {"temperature", "vector_scaling", "matrix_scaling", "dirichlet", "ensemble_temperature",
                  "platt", "beta"}
#: cheap constructor kwargs for the registry-wide run
FAST_KWARGS = {"netcal": {"method": "HistogramBinning", "method_kwargs": {"bins": 10}}}

BAD_KWARGS = {
    "identity": [{"foo": 1}],
    "temperature": [{"log_t_bounds": (1.0, -1.0)}, {"log_t_bounds": "ab"}],
    "vector_scaling": [{"reg_mu": -1.0}, {"cv_folds": 1}, {"max_iter": 0}, {"reg_lambda": 0.1}],
    "matrix_scaling": [{"reg_lambda": -0.1}, {"reg_mu": float("nan")}, {"cv_folds": 1.5}, {"cv_lambdas": [-1]},
                       {"cv_mus": "abc"}],
    "dirichlet": [{"matrix": "dense"}, {"reg_lambda": "x"}, {"cv_folds": True}, {"cv_mus": []}],
    "ensemble_temperature": [{"log_t_bounds": (2.0, 1.0)}],
    "isotonic": [{"multiclass": "ova"}],
    "histogram_binning": [{"n_bins": 1}, {"n_bins": 2.5}, {"multiclass": "top"}],
    "platt": [{"prior_correction": "yes"}],
    "beta": [{"parameters": "ab"}],
    "netcal": [{"method": "Platt"}, {"method_kwargs": [1, 2]}, {"method_kwargs": {"bins": object()}}],
}


@pytest.fixture(scope="module")
def real():
    d = datasets.load()
    cal, test = d.split == 0, d.split == 1
    # every 3rd row keeps the default run fast (3,406 calibration rows, 3,334 test rows, all 10 classes)
    return d.logits[cal][::3], d.labels[cal][::3], d.logits[test][::3], d.labels[test][::3]


def _data(real, name):
    xc, yc, xt, yt = real
    if name in BINARY:  # two-class slice: classes 0 and 1, their two logit columns
        mc, mt = yc < 2, yt < 2
        return (np.ascontiguousarray(xc[mc][:, :2]), yc[mc], np.ascontiguousarray(xt[mt][:, :2]), yt[mt])
    return xc, yc, xt, yt


def _make(name):
    return REGISTRY[name](**FAST_KWARGS.get(name, {}))


def test_every_registry_entry_has_bad_kwargs_listed():
    assert set(BAD_KWARGS) == set(REGISTRY)


@pytest.fixture(scope="module")
def fitted(real):
    out = {}
    for name in REGISTRY:
        xc, yc, xt, yt = _data(real, name)
        out[name] = _make(name).fit(xc, yc)
    return out


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_rows_sum_to_one_and_cal_nll(name, real, fitted):
    xc, yc, xt, yt = _data(real, name)
    cal = fitted[name]
    for x in (xc, xt):
        p = cal.predict_proba(x)
        assert p.shape == x.shape
        assert np.isfinite(p).all() and p.min() >= 0
        np.testing.assert_allclose(p.sum(axis=1, dtype=np.float64), 1.0, atol=1e-5)
    if name in NLL_MINIMISERS:
        nll = negative_log_likelihood(cal.predict_proba(xc), yc)
        base = negative_log_likelihood(IdentityCalibrator().fit(xc, yc).predict_proba(xc), yc)
        assert nll <= base + 1e-6, (nll, base)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_artifact_round_trip_bit_exact(name, real, fitted, tmp_path):
    xc, yc, xt, yt = _data(real, name)
    cal = fitted[name]
    path = save_artifact(cal, tmp_path / "a")
    back = load_artifact(path)
    assert type(back) is type(cal) and back.get_params() == cal.get_params()
    s1, a1 = cal.get_state()
    s2, a2 = back.get_state()
    assert s1 == s2 and sorted(a1) == sorted(a2)
    for key in a1:
        assert np.array_equal(np.asarray(a1[key]), np.asarray(a2[key]), equal_nan=True), key
    assert np.array_equal(cal.predict_proba(xt), back.predict_proba(xt))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_torch_input_equals_numpy(name, real, fitted):
    torch = pytest.importorskip("torch")
    xc, yc, xt, yt = _data(real, name)
    cal = fitted[name]
    np.testing.assert_array_equal(cal.predict_proba(torch.from_numpy(xt[:500])), cal.predict_proba(xt[:500]))
    again = _make(name).fit(torch.from_numpy(xc), torch.from_numpy(yc))
    np.testing.assert_array_equal(again.predict_proba(xt[:500]), cal.predict_proba(xt[:500]))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_class_absent_from_calibration_split(name, real):
    xc, yc, xt, yt = _data(real, name)
    missing = 1
    keep = yc != missing
    if name in BINARY:  # a binary calibrator needs both labels: drop all but a handful of class-1 rows
        keep = (yc != missing) | (np.cumsum(yc == missing) <= 3)
        missing = None
    cal = _make(name)
    if missing is None:
        cal.fit(xc[keep], yc[keep])
    else:
        with pytest.warns(UserWarning, match="never occur"):
            cal.fit(xc[keep], yc[keep])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # all-zero one-vs-rest rows -> uniform, by design
        p = cal.predict_proba(xt)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1, dtype=np.float64), 1.0, atol=1e-5)


@pytest.mark.parametrize("name,kwargs", [(n, kw) for n, kws in sorted(BAD_KWARGS.items()) for kw in kws])
def test_bad_hyper_parameters_rejected_at_construction(name, kwargs):
    with pytest.raises((ValueError, TypeError)):
        REGISTRY[name](**kwargs)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_methods_reject_other_class_counts(name, real):
    xc, yc, _, _ = real
    with pytest.raises(ValueError, match="2 classes"):
        REGISTRY[name]().fit(xc, yc)


def test_not_fitted_message():
    from calib.calibrators import NotFittedError

    for name in REGISTRY:
        with pytest.raises(NotFittedError, match="not fitted"):
            REGISTRY[name]().predict_proba(np.zeros((2, 3), np.float32))


MY_OPTIONS = sorted(p.stem for p in CONF.glob("*.yaml") if p.stem not in ("identity", "temperature"))


@pytest.fixture(scope="module")
def compose():
    pytest.importorskip("hydra")
    from hydra import compose as _compose
    from hydra import initialize_config_dir

    from calib.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        yield lambda overrides: _compose("config", overrides=list(overrides))


@pytest.mark.parametrize("option", MY_OPTIONS)
def test_yaml_option_composes_and_instantiates(compose, option):
    from omegaconf import OmegaConf

    from calib._hydra import instantiate

    cfg = compose([f"calibrator={option}"])
    obj = instantiate(cfg.calibrator)
    assert obj.kind in REGISTRY and type(obj) is REGISTRY[obj.kind]
    declared = {k: v for k, v in OmegaConf.to_container(cfg.calibrator).items() if not k.startswith("_")}
    params = obj.get_params()
    assert set(declared) == set(params), "the yaml must list every constructor argument"
    for key, value in declared.items():
        assert params[key] == (list(value) if isinstance(value, tuple) else value), key
