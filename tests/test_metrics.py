"""Metrics against independent references: netcal, scikit-learn, loop implementations, published tables."""

from __future__ import annotations

import numpy as np
import pytest

from calib import metrics as M
from calib.calibrators import softmax

from conftest import load_shared


@pytest.fixture(scope="module")
def probs_labels():
    rng = np.random.default_rng(7)
    logits = rng.normal(scale=3.0, size=(3000, 6))
    labels = np.argmax(logits / 2 + rng.gumbel(size=logits.shape), axis=1)
    return softmax(logits), labels


def _loop_ece(conf, hit, edges):
    """Textbook ECE with (lo, hi] bins, written as an explicit loop."""
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            total += abs(hit[in_bin].mean() - conf[in_bin].mean()) * in_bin.sum()
    return total / len(conf)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ece_equals_netcal(probs_labels, dtype):
    from netcal.metrics import ECE

    p, y = probs_labels
    p = p.astype(dtype)
    assert M.expected_calibration_error(p, y, n_bins=15) == pytest.approx(ECE(15).measure(p, y), abs=1e-12)


def test_ece_equals_netcal_on_real_logits():
    from netcal.metrics import ECE

    d = load_shared("c10_densenet40_kangsepp/logits.npz")
    p = softmax(d.logits.astype(np.float64))
    assert M.expected_calibration_error(p, d.labels) == pytest.approx(ECE(15).measure(p, d.labels), abs=1e-12)


def test_ece_equals_loop_reference(probs_labels):
    p, y = probs_labels
    conf, hit = p.max(1), (p.argmax(1) == y).astype(float)
    for n_bins in (1, 10, 15, 20):
        ref = _loop_ece(conf, hit, np.linspace(0, 1, n_bins + 1))
        assert M.expected_calibration_error(p, y, n_bins=n_bins) == pytest.approx(ref, abs=1e-12)


def test_equal_mass_bins_hold_equal_counts(probs_labels):
    p, y = probs_labels
    conf, hit = p.max(1), p.argmax(1) == y
    count, _, _ = M.calibration_bins(conf, hit, n_bins=7, binning="mass")
    assert count.max() - count.min() <= 1 and count.sum() == len(y)
    order = np.argsort(conf, kind="stable")
    bounds = (np.arange(8) * len(y)) // 7
    ref = sum(abs(hit[order[a:b]].mean() - conf[order[a:b]].mean()) * (b - a) for a, b in zip(bounds[:-1], bounds[1:])) / len(y)
    assert M.expected_calibration_error(p, y, n_bins=7, binning="mass") == pytest.approx(ref, abs=1e-12)


def test_mce_is_max_gap_and_bounds_ece(probs_labels):
    p, y = probs_labels
    assert M.maximum_calibration_error(p, y) >= M.expected_calibration_error(p, y)


def test_nll_and_brier_equal_sklearn(probs_labels):
    from sklearn.metrics import brier_score_loss, log_loss

    p, y = probs_labels
    assert M.negative_log_likelihood(p, y) == pytest.approx(log_loss(y, p, labels=range(6)), rel=1e-12)
    # sklearn's multiclass Brier is the mean over samples of the sum over classes unless scale_by_half.
    assert M.brier_score(p, y) == pytest.approx(brier_score_loss(y, p, labels=range(6), scale_by_half=False),
                                                rel=1e-12)


def test_accuracy(probs_labels):
    p, y = probs_labels
    assert M.accuracy(p, y) == np.mean(p.argmax(1) == y)


def test_classwise_ece_equals_loop_reference(probs_labels):
    p, y = probs_labels
    edges = np.linspace(0, 1, 16)
    per_class = [_loop_ece(p[:, c], (y == c).astype(float), edges) for c in range(p.shape[1])]
    assert M.classwise_ece(p, y) == pytest.approx(np.mean(per_class), abs=1e-12)
    assert M.classwise_ece(p, y, reduction="sum") == pytest.approx(np.sum(per_class), abs=1e-12)
    mass = [M.expected_calibration_error_binary(p[:, c], y == c, binning="mass") for c in range(p.shape[1])]
    assert M.classwise_ece(p, y, binning="mass") == pytest.approx(np.mean(mass), abs=1e-12)


@pytest.mark.parametrize("relpath, published", [
    ("c10_densenet40_kangsepp/logits.npz", 0.114303),
    ("c10_convnet_kull/logits.npz", 0.103751),
])
def test_classwise_ece_reproduces_kull_tabulation(relpath, published):
    """Kull et al. 2019 tabulate the SUM over classes with np.digitize bins (README of the dataset)."""
    d = load_shared(relpath)
    test = d.split == 1
    p = softmax(d.logits[test])
    got = M.classwise_ece(p, d.labels[test], binning="digitize", reduction="sum")
    assert abs(got - published) <= 5e-7  # published to 6 decimals


def test_chunked_metrics_equal_unchunked(monkeypatch, probs_labels):
    p, y = probs_labels
    full = M.summary(p, y)
    monkeypatch.setattr(M, "_chunks", lambda n, k, target=None: (range(0, n, 7), 7))
    chunked = M.summary(p, y)
    for key in full:
        assert chunked[key] == pytest.approx(full[key], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("bad, match", [
    (np.array([[0.7, 0.7], [0.5, 0.5]]), "summing to 1"),
    (np.array([[1.2, -0.2], [0.5, 0.5]]), r"in \[0, 1\]"),
    (np.array([[np.nan, 0.5], [0.5, 0.5]]), "finite probs"),
])
def test_bad_probabilities(bad, match):
    with pytest.raises(ValueError, match=match):
        M.expected_calibration_error(bad, np.array([0, 1]))


def test_bad_options(probs_labels):
    p, y = probs_labels
    with pytest.raises(ValueError, match="n_bins >= 1, got 0"):
        M.expected_calibration_error(p, y, n_bins=0)
    with pytest.raises(ValueError, match="Unknown binning 'quantile'; valid options"):
        M.expected_calibration_error(p, y, binning="quantile")
    with pytest.raises(ValueError, match="Unknown reduction 'max'"):
        M.classwise_ece(p, y, reduction="max")
    with pytest.raises(ValueError, match="length 3000"):
        M.brier_score(p, y[:-1])
