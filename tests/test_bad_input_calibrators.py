"""Nothing silent, calibrators: every refusal is a ValueError/TypeError (or a calib subclass) whose message
names the argument, and no fit returns a start value as an answer.

Table-driven over every entry of calib.calibrators.REGISTRY: bad constructor arguments, bad fit and predict
inputs, tampered state through ``from_state``; then the optimiser faults (extreme logits -> FitError, the
iteration limit -> ConvergenceWarning, CV folds > rows, NaN CV scores), the warnings (probabilities passed as
logits, ill-posed unregularised fits) and the inputs that must work (float16, int, Fortran order, strided
views, memmaps, torch float32/bfloat16 tensors give the plain float32 result bit for bit).
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest

from calib.base import ConvergenceWarning, FitError, StateError
from calib.calibrators import REGISTRY, softmax
from calib.datasets import synthetic

BINARY = {"platt", "beta"}
K = 4  # classes of the multiclass data

#: cheap constructor arguments for the registry-wide runs
FAST = {"netcal": {"method": "HistogramBinning", "method_kwargs": {"bins": 5}}}


def _make(name, **kw):
    return REGISTRY[name](**{**FAST.get(name, {}), **kw})


@pytest.fixture(scope="module")
def data():
    """(x_cal, y_cal, x_test) per data kind: 4-class and binary synthetic logits (true T = 2)."""
    multi = synthetic(n=600, n_classes=K, temperature=2.0, seed=0)
    binary = synthetic(n=600, n_classes=2, temperature=2.0, seed=1)
    return {
        "multi": (multi.logits[:400], multi.labels[:400], multi.logits[400:]),
        "binary": (binary.logits[:400], binary.labels[:400], binary.logits[400:]),
    }


def _data(data, name):
    return data["binary" if name in BINARY else "multi"]


@pytest.fixture(scope="module")
def fitted(data):
    out = {}
    for name in REGISTRY:
        x, y, _ = _data(data, name)
        out[name] = _make(name).fit(x, y)
    out["vector_scaling_cv"] = REGISTRY["vector_scaling"](cv_folds=2, cv_mus=[0.01, 1.0]).fit(*_data(data, "multi")[:2])
    out["isotonic_top_label"] = REGISTRY["isotonic"](multiclass="top_label").fit(*_data(data, "multi")[:2])
    return out


def test_every_registry_entry_is_covered_by_every_table():
    for table in (BAD_CONSTRUCTOR, TAMPERED_STATE):
        assert set(REGISTRY) <= {case[0] for case in table}


# --- 1. bad constructor arguments ----------------------------------------------------------------------
BAD_CONSTRUCTOR = [
    ("identity", {"foo": 1}, TypeError, "foo"),
    ("temperature", {"log_t_bounds": "12"}, TypeError, r"Expected log_t_bounds as a pair of numbers .*'12'"),
    ("temperature", {"log_t_bounds": (1.0,)}, TypeError, "log_t_bounds as a pair"),
    ("temperature", {"log_t_bounds": (True, 2.0)}, TypeError, "log_t_bounds as a pair"),
    ("temperature", {"log_t_bounds": None}, TypeError, "log_t_bounds as a pair"),
    ("temperature", {"log_t_bounds": np.zeros((2, 2))}, TypeError, "log_t_bounds as a pair"),
    ("temperature", {"log_t_bounds": (1.0, -1.0)}, ValueError, "log_t_bounds .*low < high"),
    ("temperature", {"log_t_bounds": (0.0, math.nan)}, ValueError, "log_t_bounds as finite"),
    ("temperature", {"log_t_bounds": (-100.0, 1.0)}, ValueError, r"log_t_bounds within \[-80, 80\]"),
    ("temperature", {"log_t_bounds": (0, 10**400)}, ValueError, "log_t_bounds within .*too large for a float"),
    ("ensemble_temperature", {"log_t_bounds": "12"}, TypeError, "log_t_bounds as a pair"),
    ("ensemble_temperature", {"log_t_bounds": (-1e3, 1e3)}, ValueError, r"log_t_bounds within \[-80, 80\]"),
    ("vector_scaling", {"reg_mu": -1.0}, ValueError, r"reg_mu as a finite number in \[0, 1e\+12\], got -1.0"),
    ("vector_scaling", {"reg_mu": 10**400}, ValueError, "reg_mu as a finite number"),
    ("vector_scaling", {"reg_mu": True}, TypeError, "reg_mu as a real number"),
    ("vector_scaling", {"reg_lambda": 0.1}, TypeError, "reg_lambda"),
    ("vector_scaling", {"cv_folds": 1}, ValueError, "cv_folds as None or an integer >= 2, got 1"),
    ("vector_scaling", {"cv_folds": 2.0}, TypeError, "cv_folds as None or an integer"),
    ("vector_scaling", {"cv_mus": [1.0, -1.0]}, ValueError, "cv_mus entries"),
    ("vector_scaling", {"cv_mus": "1e-3"}, TypeError, "cv_mus as a list"),
    ("vector_scaling", {"cv_seed": -1}, ValueError, r"cv_seed as an integer in \[0, 4294967295\], got -1"),
    ("vector_scaling", {"cv_seed": 2**32}, ValueError, "cv_seed as an integer in"),
    ("vector_scaling", {"cv_seed": "15"}, TypeError, "cv_seed as an integer"),
    ("vector_scaling", {"max_iter": 0}, ValueError, "max_iter as an integer >= 1, got 0"),
    ("vector_scaling", {"max_iter": 1.5}, TypeError, "max_iter as an integer"),
    ("matrix_scaling", {"reg_lambda": 1e300}, ValueError, "reg_lambda as a finite number .*1e\\+300"),
    ("matrix_scaling", {"reg_lambda": math.inf}, ValueError, "reg_lambda as a finite number"),
    ("matrix_scaling", {"reg_mu": math.nan}, ValueError, "reg_mu as a finite number"),
    ("matrix_scaling", {"cv_lambdas": []}, ValueError, "cv_lambdas with at least one value"),
    ("matrix_scaling", {"cv_lambdas": {"a": 1.0}}, TypeError, "cv_lambdas as a list"),
    ("matrix_scaling", {"cv_lambdas": [[1.0, 2.0]]}, TypeError, "cv_lambdas entries"),
    ("matrix_scaling", {"cv_mus": np.ones((2, 2))}, TypeError, "cv_mus as a list"),
    ("matrix_scaling", {"max_iter": True}, TypeError, "max_iter as an integer"),
    ("dirichlet", {"matrix": "dense"}, ValueError, r"Expected matrix as one of \['full', 'diagonal'\], got 'dense'"),
    ("dirichlet", {"matrix": None}, TypeError, r"Expected matrix as one of .*got NoneType None"),
    ("dirichlet", {"reg_lambda": "x"}, TypeError, "reg_lambda as a real number"),
    ("dirichlet", {"cv_folds": True}, TypeError, "cv_folds"),
    ("dirichlet", {"cv_mus": []}, ValueError, "cv_mus with at least one value"),
    ("isotonic", {"multiclass": "ova"}, ValueError, r"Expected multiclass as one of \['ovr', 'top_label'\], got 'ova'"),
    ("isotonic", {"multiclass": ["ovr"]}, TypeError, r"Expected multiclass as one of .*got list"),
    ("histogram_binning", {"n_bins": 1}, ValueError, "n_bins >= 2"),
    ("histogram_binning", {"n_bins": 2.5}, TypeError, "n_bins as an integer"),
    ("histogram_binning", {"n_bins": True}, TypeError, "n_bins as an integer"),
    ("histogram_binning", {"multiclass": "top"}, ValueError, "Expected multiclass as one of .*got 'top'"),
    ("platt", {"prior_correction": "yes"}, TypeError, "prior_correction as a bool"),
    ("platt", {"prior_correction": 1}, TypeError, "prior_correction as a bool"),
    ("beta", {"parameters": "ab"}, TypeError, "parameters"),
    ("netcal", {"method": "Platt"}, ValueError, r"Expected method as one of \['BBQ', .*got 'Platt'"),
    ("netcal", {"method": 3}, TypeError, "method as a string"),
    ("netcal", {"method_kwargs": [1, 2]}, TypeError, "method_kwargs as a dict"),
    ("netcal", {"method_kwargs": {"bins": object()}}, TypeError, "method_kwargs with JSON-serialisable values"),
    ("netcal", {"method_kwargs": {"bins": math.nan}}, TypeError, "method_kwargs with JSON-serialisable values"),
    ("netcal", {"method_kwargs": {"binz": 3}}, TypeError,
     r"method_kwargs accepted by netcal's HistogramBinning \(\['bins', .*got unknown keys \['binz'\]"),
    ("netcal", {"method": "TemperatureScaling", "method_kwargs": {"methd": "mle"}}, TypeError,
     r"accepted by netcal's TemperatureScaling \(.*'method'.*'momentum_epochs'.*unknown keys \['methd'\]"),
]


@pytest.mark.parametrize("name,kwargs,exc,match", BAD_CONSTRUCTOR,
                         ids=[f"{c[0]}-{min(c[1])}-{i}" for i, c in enumerate(BAD_CONSTRUCTOR)])
def test_bad_constructor_argument(name, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        REGISTRY[name](**kwargs)


def test_netcal_accepts_the_keywords_of_its_base_classes():
    nc = REGISTRY["netcal"](method="TemperatureScaling", method_kwargs={"method": "mle", "momentum_epochs": 5})
    assert nc.method_kwargs == {"method": "mle", "momentum_epochs": 5}


# --- 2. bad fit inputs ----------------------------------------------------------------------------------
def _nan_row(x):
    x = x.copy()
    x[3, 1] = np.nan
    return x


BAD_FIT = [
    # (name, how the logits/labels are spoilt, exception, message fragment)
    *[(n, "nan_logits", ValueError, "finite logits") for n in sorted(REGISTRY)],
    *[(n, "label_out_of_range", ValueError, r"labels in \[0, ") for n in sorted(REGISTRY)],
    ("temperature", "labels_too_short", ValueError, "labels of length"),
    ("matrix_scaling", "one_d_logits", ValueError, "logits of shape"),
    ("isotonic", "string_logits", TypeError, "logits with a real floating dtype"),
    ("platt", "three_classes", ValueError, "logits with 2 classes for PlattScaling, got 3 columns"),
    ("beta", "three_classes", ValueError, "logits with 2 classes for BetaCalibration, got 3 columns"),
    ("histogram_binning", "fewer_rows_than_bins", ValueError, r"at least n_bins=15 calibration rows, got 10"),
]


def _spoil(how, x, y):
    if how == "nan_logits":
        return _nan_row(x), y
    if how == "label_out_of_range":
        y = y.copy()
        y[0] = x.shape[1]
        return x, y
    if how == "labels_too_short":
        return x, y[:-1]
    if how == "one_d_logits":
        return x[:, 0], y
    if how == "string_logits":
        return x.astype(str), y
    if how == "three_classes":
        return np.column_stack([x, x[:, :1]]), y
    if how == "fewer_rows_than_bins":
        return x[:10], y[:10]
    raise AssertionError(how)


@pytest.mark.filterwarnings("ignore:1 of 3 classes never occur")
@pytest.mark.parametrize("name,how,exc,match", BAD_FIT, ids=[f"{c[0]}-{c[1]}" for c in BAD_FIT])
def test_bad_fit_input(name, how, exc, match, data):
    x, y, _ = _data(data, name)
    x, y = _spoil(how, x, y)
    with pytest.raises(exc, match=match):
        _make(name).fit(x, y)


# --- 3. bad predict inputs ------------------------------------------------------------------------------
BAD_PREDICT = [
    *[(n, "wrong_columns", ValueError, r"logits with \d classes \(as at fit\), got \d columns") for n in sorted(REGISTRY)],
    *[(n, "nan_logits", ValueError, "finite logits") for n in sorted(REGISTRY)],
    ("temperature", "masked", TypeError, "logits as a plain array, got a masked array"),
    ("dirichlet", "bool_logits", TypeError, "logits with a real floating dtype"),
]


@pytest.mark.parametrize("name,how,exc,match", BAD_PREDICT, ids=[f"{c[0]}-{c[1]}" for c in BAD_PREDICT])
def test_bad_predict_input(name, how, exc, match, data, fitted):
    _, _, xt = _data(data, name)
    if how == "wrong_columns":
        xt = np.column_stack([xt, xt[:, :1]])
    elif how == "nan_logits":
        xt = _nan_row(xt)
    elif how == "masked":
        xt = np.ma.masked_array(xt, mask=np.zeros_like(xt, bool))
    elif how == "bool_logits":
        xt = xt > 0
    with pytest.raises(exc, match=match):
        fitted[name].predict_proba(xt)


def test_extreme_logits_at_prediction_never_give_nan(fitted):
    """Matrix scaling's scores of a float32 row near float32's limit overflow: the row is recomputed in
    float64 (its softmax is then exactly one-hot), not returned as NaN."""
    x = np.zeros((2, K), np.float32)
    x[0] = [3e38, -3e38, 0, 0]
    p = fitted["matrix_scaling"].predict_proba(x)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    w = fitted["matrix_scaling"].weights_
    expected_top = int(np.argmax(w @ np.array([3e38, -3e38, 0, 0], dtype=np.float64)))  # the bias is negligible
    assert p[0, expected_top] == 1.0


# --- 4. tampered state through from_state ---------------------------------------------------------------
def _set(key, value):
    return lambda p, s, a: s.__setitem__(key, value)


def _arr(key, fn):
    return lambda p, s, a: a.__setitem__(key, fn(np.array(a[key], dtype=np.float64)))


def _other_kind(kind):
    """Replace the state by the state of another fitted kind (kept n_classes)."""
    def apply(p, s, a, fitted):
        s2, a2 = fitted[kind].get_state()
        s.clear(), a.clear()
        s.update(copy.deepcopy(s2)), a.update({k: np.array(v) for k, v in a2.items()})
    apply.needs_fitted = True
    return apply


def _flip(a):
    a = a.copy()
    a.flat[0] = -a.flat[0] if a.flat[0] != 0 else -0.5
    return a


def _nan(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


def _unsort(a):
    a = a.copy()
    a[0, :2] = a[0, 1::-1]
    return a


def _shuffle_padding(a):
    a = a.copy()
    a[np.isnan(a)] = 0.5
    return a


def _drop(key, where="s"):
    return lambda p, s, a: (s if where == "s" else a).pop(key)


def _offdiag(a):
    a = a.copy()
    a[0, 1] = 0.1
    return a


def _ensemble_weights(w):
    return lambda p, s, a: a.__setitem__("weights", np.array(w))


def _netcal_class(c):
    def apply(p, s, a):
        s["model"] = copy.deepcopy(s["model"])
        s["model"]["c"] = c
    return apply


TAMPERED_STATE = [
    # (fitted key, what, tamper(params, state, arrays), exception, message fragment)
    ("identity", "extra field", _set("temperature", 1.0), StateError, r"Unexpected state .*\['temperature'\]"),
    ("identity", "one class", _set("n_classes", 1), StateError, "'n_classes' of IdentityCalibrator >= 2"),
    ("identity", "n_classes as a float", _set("n_classes", 2.5), StateError, "'n_classes' .* as an integer"),
    ("identity", "state of temperature", _other_kind("temperature"), StateError, "Unexpected state"),
    ("temperature", "sign flip", lambda p, s, a: s.update(temperature=-s["temperature"]), StateError,
     "'temperature' of TemperatureScaling > 0"),
    ("temperature", "zero", _set("temperature", 0.0), StateError, "'temperature' of TemperatureScaling > 0"),
    ("temperature", "NaN", _set("temperature", math.nan), StateError, "'temperature' .* finite"),
    ("temperature", "string", _set("temperature", "1.5"), StateError, "'temperature' .* as a real number"),
    ("temperature", "outside exp(log_t_bounds)", _set("temperature", 1e6), StateError,
     r"'temperature' .* inside exp\(log_t_bounds\)"),
    ("temperature", "missing", _drop("temperature"), StateError, "'temperature' .* to be present"),
    ("temperature", "extra array", lambda p, s, a: a.update(weights=np.ones(3) / 3), StateError,
     r"Unexpected state .*\['weights'\]"),
    ("ensemble_temperature", "negative weight", _ensemble_weights([-0.2, 1.1, 0.1]), StateError,
     "'weights' .* >= 0"),
    ("ensemble_temperature", "weights not summing to 1", _ensemble_weights([0.5, 0.3, 0.1]), StateError,
     "'weights' .* summing to 1"),
    ("ensemble_temperature", "weights of wrong shape", _ensemble_weights([0.5, 0.5]), StateError,
     r"'weights' .* of shape \(3,\)"),
    ("ensemble_temperature", "NaN weight", _arr("weights", _nan), StateError, "'weights' .* finite"),
    ("ensemble_temperature", "state of temperature", _other_kind("temperature"), StateError,
     "'weights' .* to be present"),
    ("vector_scaling", "off-diagonal weight", _arr("weights", _offdiag), StateError,
     "'weights' of VectorScaling diagonal"),
    ("vector_scaling", "weights of wrong shape", _arr("weights", lambda w: np.eye(K + 1)), StateError,
     r"'weights' .* of shape \(4, 4\), got shape \(5, 5\)"),
    ("vector_scaling", "NaN bias", _arr("bias", _nan), StateError, "'bias' .* finite"),
    ("vector_scaling", "negative selected mu", _set("selected_reg_mu", -1.0), StateError,
     "'selected_reg_mu' .* >= 0"),
    ("vector_scaling", "selected mu not the parameter", _set("selected_reg_mu", 0.5), StateError,
     r"equal to \(reg_lambda, reg_mu\)"),
    ("vector_scaling", "state of matrix_scaling", _other_kind("matrix_scaling"), StateError, "diagonal"),
    ("vector_scaling_cv", "selected mu outside the CV grid", _set("selected_reg_mu", 0.5), StateError,
     r"a \(lambda, mu\) pair of the CV grid"),
    ("matrix_scaling", "inf weight", _arr("weights", lambda w: np.where(w == w.max(), np.inf, w)), StateError,
     "'weights' .* finite"),
    ("matrix_scaling", "bias of wrong shape", _arr("bias", lambda b: b[:-1]), StateError,
     r"'bias' .* of shape \(4,\)"),
    ("matrix_scaling", "weights as strings", lambda p, s, a: a.update(weights=np.full((K, K), "1")), StateError,
     "'weights' .* as a real array"),
    ("matrix_scaling", "missing bias", _drop("bias", "a"), StateError, "'bias' .* to be present"),
    ("matrix_scaling", "n_classes not matching the arrays", _set("n_classes", 3), StateError,
     r"'weights' .* of shape \(3, 3\)"),
    ("dirichlet", "diagonal parameters, full weights", lambda p, s, a: p.update(matrix="diagonal"), StateError,
     "'weights' of DirichletCalibration diagonal"),
    ("dirichlet", "selected lambda above the cap", _set("selected_reg_lambda", 1e300), StateError,
     "'selected_reg_lambda' .* <= 1000000000000"),
    ("isotonic", "knots_x out of order", _arr("knots_x", _unsort), StateError, "'knots_x' .* non-decreasing"),
    ("isotonic", "knots_y above 1", _arr("knots_y", lambda y: np.where(np.isnan(y), y, y * 2 + 0.1)), StateError,
     r"'knots_y' .* in \[0, 1\]"),
    ("isotonic", "negative knots_x", _arr("knots_x", _flip), StateError, r"'knots_x' .* in \[0, 1\]"),
    ("isotonic", "zero knot count", lambda p, s, a: a.__setitem__("knot_counts", np.zeros(K, np.int64)), StateError,
     "'knot_counts' .* >= 1"),
    ("isotonic", "knot count beyond the padding",
     lambda p, s, a: a.__setitem__("knot_counts", np.full(K, 10**6, np.int64)), StateError,
     "'knot_counts' .* <= "),
    ("isotonic", "float knot counts", lambda p, s, a: a.__setitem__("knot_counts", np.ones(K)), StateError,
     "'knot_counts' .* integer"),
    ("isotonic", "padding filled in", _arr("knots_x", _shuffle_padding), StateError, "'knots_x' .* NaN beyond"),
    ("isotonic", "one-vs-rest state as top-label", lambda p, s, a: p.update(multiclass="top_label"), StateError,
     r"'knots_x' .* of shape \(1, any\)"),
    ("isotonic_top_label", "NaN inside the knots", _arr("knots_y", _nan), StateError, "'knots_y' .* finite"),
    ("histogram_binning", "edges out of order", _arr("bin_edges", _unsort), StateError, "'bin_edges' .* increasing"),
    ("histogram_binning", "frequency above 1", _arr("bin_frequencies", lambda f: f + 1.0), StateError,
     "'bin_frequencies' .* <= 1"),
    ("histogram_binning", "negative frequency", _arr("bin_frequencies", lambda f: f - 2.0), StateError,
     "'bin_frequencies' .* >= 0"),
    ("histogram_binning", "n_bins not matching the edges", lambda p, s, a: p.update(n_bins=10), StateError,
     r"'bin_edges' .* of shape \(4, 9\)"),
    ("platt", "three classes", _set("n_classes", 3), StateError, "'n_classes' of PlattScaling = 2"),
    ("platt", "NaN slope", _set("slope", math.nan), StateError, "'slope' .* finite"),
    ("platt", "missing intercept", _drop("intercept"), StateError, "'intercept' .* to be present"),
    ("platt", "state of beta", _other_kind("beta"), StateError, "'slope' .* to be present"),
    ("beta", "sign flip of a", lambda p, s, a: s.update(a=-abs(s["a"]) - 0.5), StateError, "'a' of BetaCalibration >= 0"),
    ("beta", "three classes", _set("n_classes", 3), StateError, "'n_classes' of BetaCalibration = 2"),
    ("beta", "c as a list", _set("c", [1.0]), StateError, "'c' .* as a real number"),
    ("netcal", "class outside netcal.binning", _netcal_class("os:system"), StateError,
     "only netcal.binning classes"),
    ("netcal", "another netcal method's model", lambda p, s, a: p.update(method="BBQ", method_kwargs={}), StateError,
     "'model' .* as a fitted netcal netcal.binning.BBQ"),
    ("netcal", "missing array", lambda p, s, a: a.pop(min(a)), StateError, "no such array"),
    ("netcal", "extra array", lambda p, s, a: a.update(extra=np.zeros(2)), StateError, r"Unexpected state .*'extra'"),
    ("netcal", "NaN in netcal's arrays", lambda p, s, a: a.update({k: _nan(v) for k, v in a.items()}), StateError,
     "without NaN"),
    ("netcal", "n_classes not matching the model", _set("n_classes", 3), StateError,
     "'model' .* calibrates 3-class inputs, got a model failing on a probe"),
    ("netcal", "missing model", _drop("model"), StateError, "'model' .* to be present"),
]


@pytest.mark.parametrize("key,what,tamper,exc,match", TAMPERED_STATE,
                         ids=[f"{c[0]}-{c[1].replace(' ', '_')}" for c in TAMPERED_STATE])
def test_tampered_state_is_refused(key, what, tamper, exc, match, fitted):
    cal = fitted[key]
    state, arrays = cal.get_state()
    params, state = copy.deepcopy(cal.get_params()), copy.deepcopy(state)
    arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}
    if getattr(tamper, "needs_fitted", False):
        tamper(params, state, arrays, fitted)
    else:
        tamper(params, state, arrays)
    with pytest.raises(exc, match=match):
        type(cal).from_state(params, state, arrays)


@pytest.mark.parametrize("key", sorted(REGISTRY) + ["vector_scaling_cv", "isotonic_top_label"])
def test_untampered_state_loads_and_predicts_identically(key, data, fitted):
    """The other half of the table: the checks refuse nothing a fit writes."""
    cal = fitted[key]
    state, arrays = cal.get_state()
    back = type(cal).from_state(cal.get_params(), copy.deepcopy(state), dict(arrays))
    xt = data["binary" if key in BINARY else "multi"][2]
    assert np.array_equal(back.predict_proba(xt), cal.predict_proba(xt))


# --- 5. optimiser faults ---------------------------------------------------------------------------------
def test_temperature_refuses_a_row_whose_range_overflows_float32():
    """The reported repro: one row [2e38, -2e38, 0] passes validation (finite float32); its centred logits
    overflow to -inf, the NLL gradient is NaN, and TS used to return its start T = 1.0 as converged."""
    d = synthetic(n=300, n_classes=3, temperature=2.0, seed=3)
    x = d.logits.copy()
    x[7] = [2e38, -2e38, 0.0]
    ts = REGISTRY["temperature"]()
    with pytest.raises(FitError, match=r"finite NLL .*1 rows whose logit range \(max - min\) overflows float32 "
                                       r"\(first rows: \[7\]\)"):
        ts.fit(x, d.labels)
    assert not ts.is_fitted


EXTREME = [
    ("temperature", FitError, "overflows float32"),
    ("ensemble_temperature", FitError, "overflows float32"),
    ("vector_scaling", FitError, "Newton fit to reach the optimum.*logits as large as 3e\\+38"),
    ("matrix_scaling", FitError, "Newton fit to reach the optimum.*logits as large as 3e\\+38"),
    ("vector_scaling_lbfgs", FitError, "LBFGS fit to reach the optimum.*logits as large as 3e\\+38"),
    ("matrix_scaling_lbfgs", FitError, "LBFGS fit to reach the optimum.*logits as large as 3e\\+38"),
    ("platt", FitError, "PlattScaling fit to reach the optimum.*logits as large as"),
    ("beta", FitError, "BetaCalibration fit to reach the optimum.*logits as large as"),
]


@pytest.mark.parametrize("name,exc,match", EXTREME, ids=[c[0] for c in EXTREME])
def test_extreme_finite_logits_raise_fit_error(name, exc, match, data):
    x, y, _ = _data(data, name)
    x = x.copy()
    x[5, :2] = [3e38, -3e38]
    y = y.copy()
    y[5] = 1  # the row's label has probability 0: the fit cannot ignore it
    with pytest.raises(exc, match=match):
        if name.endswith("_lbfgs"):
            _make(name[:-6], solver="lbfgs").fit(x, y)
        else:
            _make(name).fit(x, y)


@pytest.mark.parametrize("solver,loss", [("newton", "[0-9.e+]+"), ("lbfgs", "nan")])
def test_float64_logits_near_float64_limit_raise_fit_error(data, solver, loss):
    """Newton's Hessian (x^2 = 1e600) and LBFGS's scaling overflow at the start: a FitError, not the start."""
    x, y, _ = data["multi"]
    x = x.astype(np.float64)
    x[5, :2] = [1e300, -1e300]
    name = "Newton" if solver == "newton" else "LBFGS"
    with pytest.raises(FitError, match=f"finite objective and derivatives in the {name} fit, got loss {loss} at the "
                                       "start"):
        REGISTRY["matrix_scaling"](solver=solver).fit(x, y)


@pytest.mark.parametrize("name", ["dirichlet", "isotonic", "histogram_binning", "identity"])
def test_extreme_logits_work_where_the_method_reads_probabilities(name, data):
    """Dirichlet calibration, isotonic regression and binning read (log-)probabilities, floored or in [0, 1]:
    an extreme row is one certain prediction, not a fault."""
    x, y, _ = _data(data, name)
    x = x.copy()
    x[5, :2] = [3e38, -3e38]
    p = _make(name).fit(x, y).predict_proba(x[:10])
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1, dtype=np.float64), 1.0, atol=1e-5)


def test_temperature_iteration_limit_warns_and_does_not_return_the_start(data):
    from calib.calibrators.temperature import fit_inverse_temperature

    x, y, _ = data["multi"]
    with pytest.warns(ConvergenceWarning, match=r"max_iter=1 before meeting its tolerance: the last step changed "
                                                r"1/T by a relative [0-9.e-]+ \(tolerance"):
        beta, info = fit_inverse_temperature(x, y, max_iter=1)
    assert info["converged"] is False and beta != 1.0  # one Halley step taken from the start beta = 1


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
@pytest.mark.parametrize("name", ["vector_scaling", "matrix_scaling", "dirichlet"])
def test_linear_iteration_limit_warns_with_the_gradient_left(name, solver, data):
    x, y, _ = data["multi"]
    with pytest.warns(ConvergenceWarning, match=rf"The {solver} fit stopped at max_iter=1 .*largest scaled gradient "
                                                r"entry [0-9.e-]+ \(tolerance 1e-07\)"):
        cal = REGISTRY[name](max_iter=1, solver=solver).fit(x, y)
    assert cal.fit_info_["converged"] is False
    assert not np.array_equal(cal.weights_, np.eye(K))  # not the start (identity)


@pytest.mark.parametrize("name,module,match", [
    ("ensemble_temperature", "ensemble", r"iteration limit \(1\) before meeting its tolerance: optimality residual"),
    ("platt", "binary", r"iteration limit \(1\) before meeting its tolerance: largest projected gradient"),
    ("beta", "binary", r"iteration limit \(1\) before meeting its tolerance: largest projected gradient"),
])
def test_scipy_iteration_limit_warns(name, module, match, data, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module(f"calib.calibrators.{module}"), "_MAX_ITER", 1)
    x, y, _ = _data(data, name)
    with pytest.warns(ConvergenceWarning, match=match):
        _make(name).fit(x, y)


@pytest.mark.filterwarnings("ignore:1 of 4 classes never occur")
@pytest.mark.parametrize("name", ["vector_scaling", "matrix_scaling", "dirichlet"])
def test_more_cv_folds_than_rows_is_refused(name, data):
    x, y, _ = data["multi"]
    cal = REGISTRY[name](cv_folds=5, cv_mus=[0.1])
    with pytest.raises(ValueError, match=r"cv_folds <= the number of calibration rows \(4\), got cv_folds=5"):
        cal.fit(x[:4], y[:4])


def test_nan_cv_scores_are_never_argmined(data, monkeypatch):
    """np.argmin returns the index of the first NaN: a grid pair whose validation NLL is NaN (as a diverged
    fit gives) would be "selected". Here the first validation score computed (grid pair 0) is NaN."""
    import calib.calibrators._linear as lin

    real, calls = lin._nll, []

    def nll(probs, labels):
        calls.append(1)
        return math.nan if len(calls) == 1 else real(probs, labels)

    monkeypatch.setattr(lin, "_nll", nll)
    x, y, _ = data["multi"]
    with pytest.raises(FitError, match=r"finite cross-validation scores, got 1 of 2 grid pairs \(lambda, mu\) with a "
                                       r"non-finite mean validation NLL \(e.g. \[\(0.0, 0.01\)\]\)"):
        REGISTRY["vector_scaling"](cv_folds=2, cv_mus=[0.01, 1.0]).fit(x, y)
    assert len(calls) == 4  # 2 folds x 2 grid pairs were scored before the refusal


def test_cv_fits_at_the_iteration_limit_warn_once(data):
    x, y, _ = data["multi"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        REGISTRY["matrix_scaling"](cv_folds=2, cv_lambdas=[0.1], cv_mus=[0.1], max_iter=1).fit(x, y)
    cv = [w for w in caught if issubclass(w.category, ConvergenceWarning) and "cross-validation" in str(w.message)]
    assert len(cv) == 1 and "2 of 2 cross-validation fits stopped at max_iter=1" in str(cv[0].message)


def test_kfold_indices_refuses_more_folds_than_rows():
    from calib.calibrators._linear import kfold_indices

    with pytest.raises(ValueError, match=r"cv_folds <= the number of calibration rows \(3\)"):
        kfold_indices(3, 4, 0)
    assert sorted(np.concatenate(kfold_indices(3, 3, 0)).tolist()) == [0, 1, 2]


# --- 6. warnings: probabilities as logits, ill-posed fits ------------------------------------------------
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_probabilities_passed_as_logits_warn(name, data):
    x, y, _ = _data(data, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match="logits look like probabilities"):
            _make(name).fit(softmax(x), y)


def test_logits_do_not_trigger_the_probabilities_warning(data):
    x, y, _ = data["multi"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        REGISTRY["temperature"]().fit(x, y)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("name,kwargs,n,match", [
    ("matrix_scaling", {}, 12, (r"MatrixScaling: 20 unpenalised parameters \(5 per class\) fitted to 12 calibration "
                                r"rows \(3 per class\): the fit is ill-posed.*reg_lambda and reg_mu > 0 \(ODIR")),
    ("dirichlet", {}, 12, r"DirichletCalibration: 20 unpenalised parameters .* ill-posed"),
    ("matrix_scaling", {"reg_lambda": 0.01}, 6, r"8 unpenalised parameters .*set reg_mu > 0"),
    ("vector_scaling", {}, 6, r"VectorScaling: 8 unpenalised parameters \(2 per class\) fitted to 6"),
])
def test_ill_posed_unregularised_fit_warns(name, kwargs, n, match, data):
    x, y, _ = data["multi"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match=match):
            REGISTRY[name](**kwargs).fit(x[:n], y[:n])


def test_regularised_fit_on_few_rows_does_not_warn_ill_posed(data):
    x, y, _ = data["multi"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        REGISTRY["matrix_scaling"](reg_lambda=0.01, reg_mu=0.01).fit(x[:12], y[:12])
    assert not [w for w in caught if "ill-posed" in str(w.message)]


def test_separable_binary_labels_warn():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 2)).astype(np.float32)
    y = (x[:, 1] > x[:, 0]).astype(int)  # a threshold on the margin separates the labels
    with pytest.warns(UserWarning, match="separated by a threshold .*prior_correction=True"):
        REGISTRY["platt"]().fit(x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        platt = REGISTRY["platt"](prior_correction=True).fit(x, y)  # smoothed targets: well-posed, no warning
    assert [str(w.message) for w in caught] == []
    assert 0 < platt.slope_ < 1e3  # finite: Platt's targets (N+ + 1)/(N+ + 2) cap it


# --- 7. inputs that must work ------------------------------------------------------------------------------
def _as_kind(kind, x, tmp_path):
    """(input of this kind, the float32 array it stands for)."""
    if kind == "float16":
        x16 = x.astype(np.float16)
        return x16, x16.astype(np.float32)  # float16 -> float32 is exact
    if kind == "int":
        xi = np.round(4 * x).astype(np.int32)
        return xi, xi.astype(np.float32)  # |values| < 2**24: exact in float32
    if kind == "fortran":
        return np.asfortranarray(x), x
    if kind == "strided":
        wide = np.zeros((x.shape[0] * 2, x.shape[1] * 2), np.float32)
        wide[::2, ::2] = x
        return wide[::2, ::2], x
    if kind == "memmap":
        path = tmp_path / f"logits_{x.shape[0]}_{x.shape[1]}.f32"
        mm = np.memmap(path, dtype=np.float32, mode="w+", shape=x.shape)
        mm[:] = x
        mm.flush()
        return np.memmap(path, dtype=np.float32, mode="r", shape=x.shape), x
    torch = pytest.importorskip("torch")
    if kind == "torch_float32":
        return torch.from_numpy(x.copy()), x
    if kind == "torch_bfloat16":
        t = torch.from_numpy(x.copy()).to(torch.bfloat16)
        return t, t.float().numpy()  # bfloat16 -> float32 is exact
    raise AssertionError(kind)


KINDS = ["float16", "int", "fortran", "strided", "memmap", "torch_float32", "torch_bfloat16"]


def _state_equal(a, b):
    (sa, aa), (sb, ab) = a.get_state(), b.get_state()
    return sa == sb and sorted(aa) == sorted(ab) and all(
        np.array_equal(np.asarray(aa[k]), np.asarray(ab[k]), equal_nan=True) for k in aa)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_must_work_inputs_give_the_plain_float32_result(name, kind, data, fitted, tmp_path):
    """Each input kind stands for one float32 array (exactly); fitting and predicting from it must give the
    bits that the plain C-ordered float32 array gives (no tolerance: same values in, same arithmetic)."""
    x, y, xt = _data(data, name)
    fit_in, fit_ref = _as_kind(kind, x, tmp_path)
    pred_in, pred_ref = _as_kind(kind, xt, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        got = _make(name).fit(fit_in, y)
        # the plain-array fit of the same values (the module's fit when the kind is exact already)
        ref = fitted[name] if fit_ref is x else _make(name).fit(np.ascontiguousarray(fit_ref), y)
    if name != "netcal":  # netcal's state is an object tree (compared through predictions)
        assert _state_equal(got, ref)
    p_got, p_ref = got.predict_proba(pred_in), ref.predict_proba(np.ascontiguousarray(pred_ref))
    assert p_got.dtype == p_ref.dtype
    assert np.array_equal(p_got, p_ref)
