"""Debiased ECE (Kumar, Liang & Ma 2019) and smooth ECE (Blasiok & Nakkiran 2023) against their authors'
packages: ``uncertainty-calibration`` (``import calibration``) and ``relplot``, on real logits and synthetic
data (ties, small n, extreme confidences)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_npz

from calib import metrics
from calib.calibrators.base import softmax

calibration = pytest.importorskip("calibration")
relplot = pytest.importorskip("relplot")

TOL = 1e-12  # both sides are float64 sums of the same terms in another order


def _real(path, temperature=1.0):
    with np.load(shared_npz(path), allow_pickle=False) as f:
        z, y = f["logits"].astype(np.float64), f["labels"].astype(np.int64)
    return softmax(z / temperature), y


REAL = [("c10lt_sctl/resnet110.npz", 1.0), ("c10lt_sctl/resnet110.npz", 2.5), ("cifar_netcal/cifar10_wrn16_4.npz", 1.0),
        ("cifar_netcal/cifar100_wrn16_4.npz", 1.0), ("cifar_netcal/cifar100_wrn16_4.npz", 1.6)]


def _synthetic(n, k, seed, temperature=2.5, decimals=None):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * 2.0
    y = np.argmax(z + rng.gumbel(size=(n, k)), axis=1)
    p = softmax(temperature * z)
    if decimals is not None:  # many tied confidences
        p = np.round(p, decimals)
        p = p / p.sum(axis=1, keepdims=True)
    return p, y


SYNTHETIC = [(5000, 10, 0, 2.5, None), (3000, 3, 1, 0.5, None), (2000, 5, 2, 4.0, 2), (40, 4, 3, 1.0, None),
             (12, 3, 4, 2.0, 1), (800, 100, 5, 3.0, None)]


def _top(p, y):
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _kumar_squared(conf, hit, n_bins, scheme):
    data = list(zip(conf, hit))
    return calibration.unbiased_square_ce(calibration.bin(data, scheme(conf, num_bins=n_bins)))


# The package's marginal mode bins Python lists class by class: ~30 s on a 100-class set, so that case is slow.
_MARGINAL = [pytest.param(path, t, "marginal", marks=[pytest.mark.slow] if "cifar100" in path else [])
             for path, t in REAL if not (t != 1.0 and "cifar100" in path)]


@pytest.mark.parametrize("path, temperature, mode", [(path, t, "top-label") for path, t in REAL] + _MARGINAL)
def test_debiased_ece_equals_uncertainty_calibration_on_real_logits(path, temperature, mode):
    p, y = _real(path, temperature)
    ours = metrics.debiased_ece(p, y, mode=mode)
    theirs = calibration.get_calibration_error(p, y, p=2, debias=True, mode=mode)
    assert abs(ours - theirs) <= TOL
    assert ours == pytest.approx(calibration.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=15, mode=mode),
                                 abs=TOL)


@pytest.mark.parametrize("n, k, seed, temperature, decimals", SYNTHETIC)
@pytest.mark.parametrize("n_bins", [15, 4, 30])
def test_debiased_ece_equals_uncertainty_calibration_on_synthetic(n, k, seed, temperature, decimals, n_bins):
    p, y = _synthetic(n, k, seed, temperature, decimals)
    theirs = calibration.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=n_bins, mode="top-label")
    assert abs(metrics.debiased_ece(p, y, n_bins=n_bins) - theirs) <= TOL
    conf, hit = _top(p, y)
    for binning, scheme in (("mass", calibration.get_equal_bins), ("width", calibration.get_equal_prob_bins)):
        sq = _kumar_squared(conf, hit, n_bins, scheme)
        assert abs(metrics.debiased_ece(p, y, n_bins=n_bins, binning=binning, squared=True) - sq) <= TOL
        assert abs(metrics.debiased_ece(p, y, n_bins=n_bins, binning=binning) - np.sqrt(max(sq, 0.0))) <= TOL


def test_debiased_ece_marginal_squared_is_mean_of_unbiased_class_terms():
    p, y = _synthetic(3000, 4, 7)
    terms = [_kumar_squared(p[:, c], (y == c).astype(np.float64), 15, calibration.get_equal_bins) for c in range(4)]
    assert abs(metrics.debiased_ece(p, y, mode="marginal", squared=True) - np.mean(terms)) <= TOL


def test_plugin_ece_is_biased_up_and_debiased_is_not_on_calibrated_data():
    # Labels drawn from the model's own probabilities: the true calibration error is exactly 0. The plug-in l2
    # error is positive by construction; the debiased squared error averages to ~0 over datasets (its mean over
    # 200 datasets within 4 standard errors of 0, the standard error taken from the same 200 values).
    rng = np.random.default_rng(0)
    plugin, debiased = [], []
    for _ in range(200):
        z = rng.standard_normal((500, 5)) * 2.0
        p = softmax(z)
        y = (rng.random((500, 1)) > np.cumsum(p, axis=1)).sum(axis=1).clip(0, 4)
        conf, hit = _top(p, y)
        plugin.append(calibration.plugin_ce(calibration.bin(list(zip(conf, hit)),
                                                            calibration.get_equal_bins(conf, num_bins=15))) ** 2)
        debiased.append(metrics.debiased_ece(p, y, squared=True))
    debiased = np.asarray(debiased)
    assert min(plugin) > 0
    assert abs(debiased.mean()) <= 4 * debiased.std(ddof=1) / np.sqrt(debiased.size)
    assert np.mean(plugin) > debiased.mean() + 4 * debiased.std(ddof=1) / np.sqrt(debiased.size)


@pytest.mark.parametrize("path, temperature", REAL)
def test_smooth_ece_equals_relplot_on_real_logits(path, temperature):
    p, y = _real(path, temperature)
    conf, hit = _top(p, y)
    value, sigma = metrics.smooth_ece(p, y, return_sigma=True)
    ref, ref_sigma = relplot.smECE(conf, hit, return_width=True)
    assert sigma == ref_sigma
    assert abs(value - ref) <= 1e-10
    for s in (0.003, 0.02, 0.1, 0.7):
        assert abs(metrics.smooth_ece(p, y, sigma=s) - relplot.smECE_sigma(conf, hit, s)) <= 1e-10


@pytest.mark.parametrize("n, k, seed, temperature, decimals", SYNTHETIC)
def test_smooth_ece_equals_relplot_on_synthetic(n, k, seed, temperature, decimals):
    p, y = _synthetic(n, k, seed, temperature, decimals)
    conf, hit = _top(p, y)
    value, sigma = metrics.smooth_ece(p, y, return_sigma=True)
    ref, ref_sigma = relplot.smECE(conf, hit, return_width=True)
    assert sigma == ref_sigma and abs(value - ref) <= 1e-10


def test_smooth_ece_extremes():
    y = np.zeros(50, dtype=np.int64)
    always_right = np.tile([1.0, 0.0], (50, 1))  # confidence 1, always right: no calibration error
    value = metrics.smooth_ece(always_right, y)
    assert value == pytest.approx(0.0, abs=1e-12)
    ref = relplot.smECE(np.ones(50), np.ones(50))
    assert value == pytest.approx(ref, abs=1e-12)
    always_wrong = np.tile([0.0, 1.0], (50, 1))  # confidence 1, always wrong: error 1 at any bandwidth
    assert metrics.smooth_ece(always_wrong, y, sigma=0.05) == pytest.approx(
        relplot.smECE_sigma(np.ones(50), np.zeros(50), 0.05), abs=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_bins": 0}, "n_bins"), ({"binning": "digitize"}, "binning"), ({"mode": "classwise"}, "mode"),
    ({"squared": 1}, "squared"),
])
def test_debiased_ece_bad_arguments(kwargs, match):
    p, y = _synthetic(50, 3, 0)
    with pytest.raises((ValueError, TypeError), match=match):
        metrics.debiased_ece(p, y, **kwargs)


@pytest.mark.parametrize("sigma", [0, -0.1, 1.5, float("nan"), True, "auto"])
def test_smooth_ece_bad_sigma(sigma):
    p, y = _synthetic(50, 3, 0)
    with pytest.raises(ValueError, match="sigma"):
        metrics.smooth_ece(p, y, sigma=sigma)


def test_estimators_refuse_bad_probabilities():
    with pytest.raises(ValueError, match="probs"):
        metrics.debiased_ece(np.array([[0.5, 0.6]]), np.array([0]))
    with pytest.raises(ValueError, match="labels"):
        metrics.smooth_ece(np.array([[0.5, 0.5]]), np.array([2]))
