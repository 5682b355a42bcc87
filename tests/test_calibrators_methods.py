"""Per-method checks against references: scikit-learn isotonic and logistic regression, netcal called
directly, and a hand-written histogram-binning reference; properties of ensemble TS and top-label maps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from calib import datasets
from calib.artifacts import save_artifact
from calib.calibrators import (BetaCalibration, EnsembleTemperatureScaling, HistogramBinning, IsotonicCalibration,
                               NetcalCalibrator, PlattScaling, TemperatureScaling, softmax)
from calib.metrics import negative_log_likelihood

from conftest import load_shared


def _sklearn_ovr(p_fit, y_fit, p_eval):
    from sklearn.isotonic import IsotonicRegression

    k = p_fit.shape[1]
    q = np.column_stack([
        IsotonicRegression(out_of_bounds="clip").fit(p_fit[:, c], (y_fit == c).astype(float)).predict(p_eval[:, c])
        for c in range(k)
    ])
    s = q.sum(axis=1, keepdims=True)
    return np.where(s > 0, q / np.where(s > 0, s, 1.0), 1.0 / k)


@pytest.fixture(scope="module")
def builtin():
    d = datasets.load()
    return d.logits[d.split == 0], d.labels[d.split == 0], d.logits[d.split == 1], d.labels[d.split == 1]


def test_isotonic_ovr_equals_sklearn_on_real_logits(builtin):
    pytest.importorskip("sklearn")
    xc, yc, xt, yt = builtin
    iso = IsotonicCalibration().fit(xc, yc)
    ref = _sklearn_ovr(softmax(xc).astype(np.float64), yc, softmax(xt).astype(np.float64))
    assert np.abs(iso.predict_proba(xt) - ref).max() <= 1e-6


def test_isotonic_ovr_equals_sklearn_with_ties_and_many_classes():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(3)
    n, k = 3000, 100
    x = (rng.normal(size=(n, k)) * 2).astype(np.float32)
    x[: n // 2, 5] = np.round(x[: n // 2, 5])  # many exact ties in class 5
    x[100:200] = x[0]  # duplicate rows
    y = rng.integers(0, k, n)
    iso = IsotonicCalibration().fit(x[:2000], y[:2000])
    ref = _sklearn_ovr(softmax(x[:2000]).astype(np.float64), y[:2000], softmax(x[2000:]).astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        got = iso.predict_proba(x[2000:])
    assert np.abs(got - ref).max() <= 1e-6


def test_isotonic_top_label_matches_sklearn_on_confidence(builtin):
    pytest.importorskip("sklearn")
    from sklearn.isotonic import IsotonicRegression

    xc, yc, xt, yt = builtin
    iso = IsotonicCalibration(multiclass="top_label").fit(xc, yc)
    pc, pt = softmax(xc).astype(np.float64), softmax(xt).astype(np.float64)
    ref = IsotonicRegression(out_of_bounds="clip").fit(pc.max(1), pc.argmax(1) == yc).predict(pt.max(1))
    q = iso.predict_proba(xt)
    top = pt.argmax(1)
    rows = np.arange(len(top))
    assert (q[rows, top] >= q.max(1) - 1e-7).all()  # the top class stays a maximiser (ties at the floor)
    got = q[np.arange(len(top)), top]
    floor = got > ref + 1e-6  # only where the argmax-keeping floor lifted the value
    assert np.abs(got[~floor] - ref[~floor]).max() <= 1e-6
    # others keep their proportions
    rest = pt.copy()
    rest[np.arange(len(top)), top] = 0
    qr = q.astype(np.float64).copy()
    qr[np.arange(len(top)), top] = 0
    ok = rest.sum(1) > 1e-3
    np.testing.assert_allclose(qr[ok] / qr[ok].sum(1, keepdims=True), rest[ok] / rest[ok].sum(1, keepdims=True),
                               atol=1e-5)


def test_isotonic_all_zero_rows_fall_back_to_uniform():
    # each class's map is 0 on [min, 0.45] and only rises towards 0.9: the query row is 0 everywhere
    p = np.array([[0.9, 0.03, 0.03, 0.04], [0.03, 0.9, 0.03, 0.04], [0.03, 0.03, 0.9, 0.04],
                  [0.45, 0.45, 0.05, 0.05], [0.05, 0.05, 0.45, 0.45]])
    y = np.array([0, 1, 2, 3, 3])
    iso = IsotonicCalibration().fit(np.log(p).astype(np.float32), y)
    with pytest.warns(UserWarning, match="1 rows had all one-vs-rest probabilities 0"):
        q = iso.predict_proba(np.log(np.array([[0.33, 0.33, 0.33, 0.01]], np.float32)))
    np.testing.assert_allclose(q, 0.25, atol=1e-7)
    assert not hasattr(iso, "n_zero_rows_")  # prediction leaves the fitted object as it was


def _histogram_reference(values, targets, n_bins):
    """Straightforward per-class loop: sort, cut into equal-count groups, edges at midpoints."""
    s = np.sort(values)
    n = len(s)
    cuts = [max(1, min(n - 1, (b * n) // n_bins)) for b in range(1, n_bins)]
    edges = np.array([(s[c - 1] + s[c]) / 2 for c in cuts])
    idx = np.searchsorted(edges, values, side="right")
    return edges, np.array([targets[idx == b].mean() for b in range(n_bins)])


def test_histogram_binning_equals_reference_loop(builtin):
    xc, yc, xt, yt = builtin
    hb = HistogramBinning(n_bins=12).fit(xc, yc)
    p = softmax(xc).astype(np.float64)
    for c in range(p.shape[1]):
        edges, freq = _histogram_reference(p[:, c], (yc == c).astype(float), 12)
        np.testing.assert_allclose(hb.bin_edges_[c], edges, rtol=0, atol=1e-12)
        np.testing.assert_allclose(hb.bin_frequencies_[c], freq, rtol=0, atol=1e-12)
    tie_free = [c for c in range(p.shape[1]) if np.unique(p[:, c]).size == p.shape[0]]
    for c in tie_free:  # equal mass wherever the values have no ties
        counts = np.bincount(np.searchsorted(hb.bin_edges_[c], p[:, c], side="right"), minlength=12)
        assert counts.max() - counts.min() <= 1


def test_histogram_top_label_keeps_argmax(builtin):
    xc, yc, xt, yt = builtin
    q = HistogramBinning(multiclass="top_label").fit(xc, yc).predict_proba(xt)
    top = xt.argmax(1)
    assert (q[np.arange(len(top)), top] >= q.max(1) - 1e-7).all()


def test_ensemble_ts_weights_on_simplex_and_not_worse_than_ts(builtin):
    xc, yc, xt, yt = builtin
    ets = EnsembleTemperatureScaling().fit(xc, yc)
    ts = TemperatureScaling().fit(xc, yc)
    assert ets.temperature_ == pytest.approx(ts.temperature_)
    assert (ets.weights_ >= 0).all() and ets.weights_.sum() == pytest.approx(1.0)
    assert negative_log_likelihood(ets.predict_proba(xc), yc) <= negative_log_likelihood(ts.predict_proba(xc), yc) + 1e-7


def test_ensemble_ts_uses_uniform_component_when_labels_are_noisy():
    # 30% of labels replaced uniformly at random: the optimal mixture puts weight on the uniform part
    rng = np.random.default_rng(0)
    d = datasets.synthetic(n=20000, n_classes=10, temperature=1.0, seed=1)
    y = d.labels.copy()
    flip = rng.random(len(y)) < 0.3
    y[flip] = rng.integers(0, 10, flip.sum())
    ets = EnsembleTemperatureScaling().fit(d.logits, y)
    assert ets.weights_[2] > 0.05


def _binary(builtin):
    xc, yc, xt, yt = builtin
    mc = yc < 2
    return np.ascontiguousarray(xc[mc][:, :2]), yc[mc]


def test_platt_equals_unpenalised_logistic_regression(builtin):
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    x, y = _binary(builtin)
    s = (x[:, 1].astype(np.float64) - x[:, 0])[:, None]
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(s, y)
    pl = PlattScaling().fit(x, y)
    assert pl.slope_ == pytest.approx(lr.coef_[0, 0], rel=1e-4)
    assert pl.intercept_ == pytest.approx(lr.intercept_[0], rel=1e-4, abs=1e-5)


def test_beta_calibration_equals_constrained_logistic_regression(builtin):
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    x, y = _binary(builtin)
    z = x.astype(np.float64)
    lp = z - np.logaddexp(z[:, :1], z[:, 1:])
    feats = np.column_stack([lp[:, 1], -lp[:, 0]])
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(feats, y)
    bc = BetaCalibration().fit(x, y)
    if (lr.coef_ >= 0).all():  # the constraint is inactive: same optimum as the unconstrained fit
        np.testing.assert_allclose([bc.a_, bc.b_, bc.c_], [*lr.coef_[0], lr.intercept_[0]], rtol=1e-3, atol=1e-4)
    assert bc.a_ >= 0 and bc.b_ >= 0


# --- netcal adapter --------------------------------------------------------------------------------
NETCAL_CASES = [("HistogramBinning", {"bins": 10}), ("BBQ", {}), ("ENIR", {}), ("IsotonicRegression", {}),
                ("TemperatureScaling", {})]


@pytest.mark.parametrize("method,kwargs", NETCAL_CASES)
def test_netcal_adapter_equals_netcal_on_float64_probs(method, kwargs, builtin, capsys):
    netcal = pytest.importorskip("netcal")  # noqa: F841
    import importlib

    from calib.calibrators.netcal_adapter import NETCAL_METHODS

    xc, yc, xt, yt = builtin
    xc, yc, xt = xc[:3000], yc[:3000], xt[:2000]
    ad = NetcalCalibrator(method=method, method_kwargs=kwargs).fit(xc, yc)
    got = ad.predict_proba(xt)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # netcal's progress bars went to logging
    ref_model = getattr(importlib.import_module(NETCAL_METHODS[method]), method)(**kwargs)
    ref_model.fit(softmax(xc.astype(np.float64)), yc)
    capsys.readouterr()
    ref = np.asarray(ref_model.transform(softmax(xt.astype(np.float64))), dtype=np.float64)
    ref = ref / ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_netcal_binary_uses_positive_class_probability(builtin):
    pytest.importorskip("netcal")
    from netcal.binning import HistogramBinning as NHB

    x, y = _binary(builtin)
    got = NetcalCalibrator(method="HistogramBinning", method_kwargs={"bins": 8}).fit(x, y).predict_proba(x)
    p1 = softmax(x.astype(np.float64))[:, 1]
    ref = np.asarray(NHB(bins=8).fit(p1, y).transform(p1), dtype=np.float64).ravel()
    np.testing.assert_allclose(got[:, 1], ref, atol=1e-12)


def test_netcal_unstorable_method_refuses_to_save(builtin, tmp_path):
    pytest.importorskip("netcal")
    xc, yc, _, _ = builtin
    ad = NetcalCalibrator(method="TemperatureScaling").fit(xc[:2000], yc[:2000])
    with pytest.raises(ValueError, match="cannot be stored without pickle"):
        ad.get_state()
    with pytest.raises(ValueError, match="cannot be stored without pickle"):
        save_artifact(ad, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_netcal_temperature_is_a_no_op_on_float32_but_not_in_the_adapter(builtin):
    """Why the adapter casts to float64: netcal's TS silently leaves float32 probabilities unchanged."""
    pytest.importorskip("netcal")
    from netcal.scaling import TemperatureScaling as NTS

    xc, yc, _, _ = builtin
    xc, yc = xc[:3000], yc[:3000]
    p32 = softmax(xc)
    ad = NetcalCalibrator(method="TemperatureScaling").fit(xc, yc)
    assert np.abs(ad.predict_proba(xc) - p32).max() > 1e-3
    m = NTS()
    try:
        m.fit(p32, yc)
        out32 = np.asarray(m.transform(p32))
    except Exception:  # newer netcal may reject float32 outright; either way the adapter is needed
        return
    assert np.abs(out32 - p32).max() < np.abs(ad.predict_proba(xc) - p32).max()


# --- vector scaling vs netcal LogisticCalibration ---------------------------------------------------
def test_diagonal_dirichlet_not_worse_than_netcal_logistic_calibration():
    """netcal's multiclass LogisticCalibration (temperature_only=False) scales log-probabilities per class:
    the model family of DirichletCalibration(matrix="diagonal"). Same family, so the NLL optimum we reach
    must not be worse than netcal's on the data both were fitted to."""
    pytest.importorskip("netcal")
    import contextlib
    import io

    from netcal.scaling import LogisticCalibration

    from calib.calibrators import DirichletCalibration

    d = load_shared("c10_convnet_kull/logits.npz")
    x, y = d.logits[d.split == 0][:2000], d.labels[d.split == 0][:2000]
    dd = DirichletCalibration(matrix="diagonal").fit(x, y)
    nc = LogisticCalibration(temperature_only=False, method="mle")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        nc.fit(softmax(x.astype(np.float64)), y)
        ref = np.asarray(nc.transform(softmax(x.astype(np.float64))), dtype=np.float64)
    assert negative_log_likelihood(dd.predict_proba(x), y) <= negative_log_likelihood(ref, y) + 1e-4


@pytest.mark.parametrize("cls", [IsotonicCalibration, HistogramBinning])
def test_top_label_rows_sum_to_one_when_top_probability_rounds_to_one(cls):
    """float32 softmax rows with max ~ 1 - 1e-7: the others' mass must be summed, not taken as 1 - max."""
    d = load_shared("c10_convnet_kull/logits.npz")
    cal, test = d.split_cal_test()
    q = cls(multiclass="top_label").fit(cal.logits, cal.labels).predict_proba(test.logits)
    assert (softmax(test.logits).max(1) > 1 - 1e-6).any()
    np.testing.assert_allclose(q.sum(axis=1, dtype=np.float64), 1.0, atol=1e-6)


def test_netcal_rows_mapped_to_zero_become_uniform():
    """netcal's ENIR can map every class of a row to 0 (seen on c10_convnet_kull): uniform, with a warning."""
    from calib.calibrators.netcal_adapter import NetcalCalibrator

    q = np.array([[0.0, 0.0, 0.0], [0.2, 0.2, 0.6]])
    with pytest.warns(UserWarning, match="1 rows were mapped to all-zero"):
        out = NetcalCalibrator._output(q, 3)
    assert np.array_equal(out[0], np.full(3, 1 / 3)) and np.allclose(out[1], [0.2, 0.2, 0.6])


def test_isotonic_output_does_not_depend_on_thread_count(monkeypatch):
    from calib.calibrators import IsotonicCalibration
    from calib.datasets import synthetic

    d = synthetic(n=3000, n_classes=200, temperature=2.0, seed=5)
    out = []
    for threads in ("1", "4"):
        monkeypatch.setenv("CALIB_NUM_THREADS", threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # some of the 200 classes are absent: expected
            out.append(IsotonicCalibration().fit(d.logits, d.labels).predict_proba(d.logits))
    assert np.array_equal(out[0], out[1])
