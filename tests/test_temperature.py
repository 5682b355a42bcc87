"""Temperature scaling: published numbers, an independent optimiser, the known truth, properties, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from calib import metrics as M
from calib.calibrators import REGISTRY, IdentityCalibrator, NotFittedError, TemperatureScaling, softmax
from calib.calibrators.temperature import nll_derivatives

from conftest import load_shared

# Kull et al. 2019 (values in ../shared/data/<set>/README.md): T, and test ECE / NLL before and after TS.
KULL = {
    "c10_densenet40_kangsepp/logits.npz": dict(T=2.8825, ece=(0.055003, 0.009464), nll=(0.428207, 0.225086)),
    "c10_convnet_kull/logits.npz": dict(T=3.1414, ece=(0.047603, 0.010651), nll=(0.390977, 0.194969)),
}


@pytest.mark.parametrize("relpath", sorted(KULL))
def test_reproduces_kull_2019(relpath):
    ref = KULL[relpath]
    d = load_shared(relpath)
    cal, test = d.split_cal_test()
    ts = TemperatureScaling().fit(cal.logits, cal.labels)
    # Agreement to 4 significant digits: within half a unit of the 4th digit (0.0005 for T ~ 3).
    assert abs(ts.temperature_ - ref["T"]) < 0.5e-3
    before, after = softmax(test.logits), ts.predict_proba(test.logits)
    # Published to 6 decimals; their T came from scipy BFGS (maxiter 50), ours is the exact optimum, which
    # moves the 7th decimal: |ours - published| <= 1e-6 is agreement to the printed precision.
    assert abs(M.expected_calibration_error(before, test.labels) - ref["ece"][0]) <= 1e-6
    assert abs(M.expected_calibration_error(after, test.labels) - ref["ece"][1]) <= 1e-6
    assert abs(M.negative_log_likelihood(before, test.labels) - ref["nll"][0]) <= 1e-6
    assert abs(M.negative_log_likelihood(after, test.labels) - ref["nll"][1]) <= 1e-6


def test_reproduces_sctl_on_embedded_data():
    """SCTL repository logs (calib/data/README.md): uncalibrated ECE 19.14 %, exact-optimum TS 5.90 %."""
    from calib.datasets import load

    cal, test = load().split_cal_test()
    ts = TemperatureScaling().fit(cal.logits, cal.labels)
    assert round(ts.temperature_, 3) == 3.445
    assert round(100 * M.expected_calibration_error(softmax(test.logits), test.labels), 2) == 19.14
    assert round(100 * M.expected_calibration_error(ts.predict_proba(test.logits), test.labels), 2) == 5.90


def _scipy_temperature(logits, labels):
    """Independent optimiser: bounded Brent on log T of the float64 NLL (scipy)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    x = np.asarray(logits, dtype=np.float64)
    idx = np.arange(len(labels))
    res = minimize_scalar(lambda lt: -log_softmax(x / math.exp(lt), axis=1)[idx, labels].mean(),
                          bounds=(-3, 3), method="bounded", options={"xatol": 1e-10})
    return math.exp(res.x)


@pytest.mark.parametrize("relpath", ["c10_densenet40_kangsepp/logits.npz", "cifar_chenyaofo/cifar100_resnet20.npz"])
def test_agrees_with_independent_optimiser(relpath):
    d = load_shared(relpath)
    cal, _ = d.split_cal_test()
    ours = TemperatureScaling().fit(cal.logits, cal.labels).temperature_
    assert ours == pytest.approx(_scipy_temperature(cal.logits, cal.labels), rel=1e-6)


def test_recovers_true_temperature(synthetic_data):
    """n = 20,000, true T = 2: within 2 % and within 4 standard errors of the MLE (Fisher information)."""
    ts = TemperatureScaling().fit(synthetic_data.logits, synthetic_data.labels)
    assert abs(ts.temperature_ - 2.0) / 2.0 < 0.02
    beta = 1 / ts.temperature_
    _, _, info, _ = nll_derivatives(synthetic_data.logits, synthetic_data.labels, beta)
    se_t = (1 / math.sqrt(len(synthetic_data.labels) * info)) / beta**2  # delta method: T = 1 / beta
    assert abs(ts.temperature_ - 2.0) < 4 * se_t


def test_float32_and_float64_inputs_agree(synthetic_data):
    x32 = synthetic_data.logits
    t32 = TemperatureScaling().fit(x32, synthetic_data.labels).temperature_
    t64 = TemperatureScaling().fit(x32.astype(np.float64), synthetic_data.labels).temperature_
    assert t32 != 1.0 and t32 == pytest.approx(t64, rel=1e-6)


def test_torch_input_equals_numpy(synthetic_data):
    a = TemperatureScaling().fit(synthetic_data.logits, synthetic_data.labels)
    b = TemperatureScaling().fit(torch.from_numpy(synthetic_data.logits), torch.from_numpy(synthetic_data.labels))
    assert a.temperature_ == b.temperature_
    assert np.array_equal(a.predict_proba(synthetic_data.logits),
                          b.predict_proba(torch.from_numpy(synthetic_data.logits)))


def test_properties(synthetic_data):
    x, y = synthetic_data.logits, synthetic_data.labels
    ts = TemperatureScaling().fit(x, y)
    p = ts.predict_proba(x)
    assert p.dtype == np.float32
    assert np.allclose(p.sum(1, dtype=np.float64), 1.0, atol=1e-5)
    assert np.array_equal(p.argmax(1), x.argmax(1))  # accuracy unchanged
    p0 = IdentityCalibrator().fit(x, y).predict_proba(x)
    assert M.negative_log_likelihood(p.astype(np.float64), y) <= M.negative_log_likelihood(p0.astype(np.float64), y)
    # NLL derivative vanishes at the optimum.
    _, grad, hess, _ = nll_derivatives(x.astype(np.float64), y, 1 / ts.temperature_)
    assert abs(grad) < 1e-6 * hess


def test_chunking_does_not_change_the_sums(synthetic_data):
    x, y = synthetic_data.logits.astype(np.float64), synthetic_data.labels
    a = nll_derivatives(x, y, 0.7, chunk_rows=97)
    b = nll_derivatives(x, y, 0.7, chunk_rows=100000)
    assert np.allclose(a, b, rtol=1e-12)


def test_optimum_outside_bounds_fails_loudly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    separable = x.argmax(1)  # NLL keeps falling as T -> 0
    with pytest.raises(ValueError, match="optimum below T = .*log_t_bounds"):
        TemperatureScaling().fit(x, separable)
    with pytest.raises(ValueError, match="inside log_t_bounds"):
        TemperatureScaling(log_t_bounds=(-0.1, 0.1)).fit(5 * x, separable)


@pytest.mark.parametrize("bounds, err", [((1.0, 0.0), ValueError), ((0.0, float("nan")), ValueError),
                                         (("a", 1.0), TypeError), (3.0, TypeError)])
def test_bad_constructor_arguments(bounds, err):
    with pytest.raises(err, match="log_t_bounds"):
        TemperatureScaling(log_t_bounds=bounds)


def test_not_fitted_and_class_mismatch(synthetic_data):
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        TemperatureScaling().predict_proba(synthetic_data.logits)
    ts = TemperatureScaling().fit(synthetic_data.logits, synthetic_data.labels)
    with pytest.raises(ValueError, match="10 classes .as at fit., got 3 columns"):
        ts.predict_proba(np.zeros((2, 3)))


def test_missing_class_warns_and_works(synthetic_data):
    keep = synthetic_data.labels != 3
    with pytest.warns(UserWarning, match="never occur in labels"):
        ts = TemperatureScaling().fit(synthetic_data.logits[keep], synthetic_data.labels[keep])
    assert np.isfinite(ts.temperature_)


def test_registry_has_baselines():
    assert REGISTRY["identity"] is IdentityCalibrator and REGISTRY["temperature"] is TemperatureScaling


def test_netcal_float32_trap_is_real_and_avoided():
    """netcal's TemperatureScaling keeps T = 1 on float32 input; ours does not (documented trap)."""
    from netcal.scaling import TemperatureScaling as NetcalTS

    d = load_shared("c10_densenet40_kangsepp/logits.npz")
    cal, _ = d.split_cal_test()
    p32 = softmax(cal.logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n32 = NetcalTS().fit(p32, cal.labels)
        n64 = NetcalTS().fit(p32.astype(np.float64), cal.labels)
    assert float(np.ravel(n32.temperature)[0]) == 1.0
    netcal_t = 1 / float(np.ravel(n64.temperature)[0])  # netcal's .temperature holds 1 / T
    assert netcal_t == pytest.approx(TemperatureScaling().fit(cal.logits, cal.labels).temperature_, rel=1e-3)


def test_float64_fit_converges_when_the_bracket_collapses():
    """A float64 fit whose bracket around the root shrinks to adjacent floats has converged; it once raised
    "optimum below T = 2.19" (an out-of-bounds diagnosis) at an interior optimum. The temperature is checked
    against scipy's bounded scalar minimiser of the NLL (an independent optimiser)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    d = load_shared("cifar_netcal/cifar10_wrn16_4.npz")
    z, y = d.logits, d.labels
    rng = np.random.default_rng(0)
    for _ in range(12):  # the 13th subsample is the one that raised
        rng.permutation(y.size)
    idx = rng.permutation(y.size)[:2000]
    z64, yy = z[idx].astype(np.float64), y[idx]
    t = TemperatureScaling().fit(z64, yy).temperature_

    def nll(log_t):
        s = z64 / np.exp(log_t)
        return float(np.mean(logsumexp(s, axis=1) - s[np.arange(yy.size), yy]))

    ref = float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded", options={"xatol": 1e-10}).x))
    assert t == pytest.approx(ref, rel=1e-6)
