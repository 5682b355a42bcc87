"""The two solvers of the linear calibrators (vector / matrix scaling, Dirichlet; calib.calibrators._linear).

Newton (numpy, exact Hessian) and LBFGS (torch) minimise the same convex ODIR objective. The reference here is
independent of both: the objective and its gradient written out below with scipy's logsumexp, minimised by
scipy's trust-region Newton-CG with a tolerance far below what the comparison needs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from calib.calibrators import DirichletCalibration, MatrixScaling, VectorScaling
from calib.calibrators._linear import (NEWTON_HARD_MAX, NEWTON_MAX_PARAMS, fit_linear, n_params, resolve_solver)
from calib.datasets import synthetic


def _reference_objective(theta, x, y, lam, mu, full):
    """mean NLL + lam * sum_{i != j} W_ij^2 + mu * sum_j b_j^2, and its gradient, written independently."""
    from scipy.special import logsumexp, softmax

    n, k = x.shape
    if full:
        W, b = theta[: k * k].reshape(k, k), theta[k * k:]
        z = x @ W.T + b
    else:
        w, b = theta[:k], theta[k:]
        z = x * w + b
    nll = float(np.mean(logsumexp(z, axis=1) - z[np.arange(n), y]))
    e = softmax(z, axis=1)
    e[np.arange(n), y] -= 1.0
    e /= n
    if full:
        off = W - np.diag(np.diag(W))
        f = nll + lam * float((off ** 2).sum()) + mu * float((b ** 2).sum())
        g = np.concatenate([(e.T @ x + 2 * lam * off).ravel(), e.sum(0) + 2 * mu * b])
    else:
        f = nll + mu * float((b ** 2).sum())
        g = np.concatenate([(e * x).sum(0), e.sum(0) + 2 * mu * b])
    return f, g


def _reference_fit(x, y, lam, mu, full):
    from scipy.optimize import minimize

    k = x.shape[1]
    x = x.astype(np.float64)
    theta0 = np.concatenate([np.eye(k).ravel() if full else np.ones(k), np.zeros(k)])
    res = minimize(_reference_objective, theta0, args=(x, y, lam, mu, full), jac=True, method="BFGS",
                   options={"gtol": 1e-11, "maxiter": 20000})
    return res.fun, res.x


CASES = [(lam, mu) for lam, mu in [(1e-3, 1e-3), (0.1, 10.0), (100.0, 1e-2), (1e4, 1e4)]]


@pytest.fixture(scope="module")
def data():
    d = synthetic(n=800, n_classes=5, temperature=2.0, seed=4)
    return d.logits, d.labels


@pytest.mark.parametrize("structure", ["full", "diagonal"])
@pytest.mark.parametrize("lam,mu", CASES)
def test_newton_reaches_the_independent_optimum(data, structure, lam, mu):
    x, y = data
    full = structure == "full"
    f_ref, theta_ref = _reference_fit(x, y, lam, mu, full)
    W, b, info = fit_linear(x, y, structure=structure, reg_lambda=lam, reg_mu=mu, solver="newton")
    assert info["converged"] and info["solver"] == "newton" and info["n_iter"] <= 30
    theta = np.concatenate([W.ravel() if full else np.diag(W), b])
    f, g = _reference_objective(theta, x.astype(np.float64), y, lam if full else 0.0, mu, full)
    # at the optimum of a convex objective: no lower value than BFGS's (to rounding) and a vanishing gradient
    assert f <= f_ref + 1e-12, (f, f_ref)
    assert np.abs(g).max() < 1e-7
    # strongly convex (mu > 0 and, for full W, lambda > 0; the diagonal of W is pinned by the data): same point
    np.testing.assert_allclose(theta, theta_ref, atol=2e-5 * max(1.0, np.abs(theta_ref).max()))
    assert abs(info["loss"] - f) < 1e-12


@pytest.mark.parametrize("structure", ["full", "diagonal"])
def test_newton_and_lbfgs_agree(data, structure):
    x, y = data
    out = {s: fit_linear(x, y, structure=structure, reg_lambda=0.5, reg_mu=0.5, solver=s) for s in ("newton", "lbfgs")}
    (Wn, bn, inf_n), (Wl, bl, inf_l) = out["newton"], out["lbfgs"]
    assert inf_n["loss"] <= inf_l["loss"] + 1e-12
    assert inf_l["loss"] - inf_n["loss"] < 1e-8
    np.testing.assert_allclose(Wn, Wl, atol=1e-4)
    np.testing.assert_allclose(bn, bl, atol=1e-4)


def test_unregularised_newton_matches_lbfgs_objective(data):
    """Without a penalty the NLL is shift-invariant (a singular Hessian): the optimum value is unique."""
    x, y = data
    _, _, n = fit_linear(x, y, structure="full", solver="newton")
    _, _, lb = fit_linear(x, y, structure="full", solver="lbfgs", max_iter=2000)
    f_ref, _ = _reference_fit(x, y, 0.0, 0.0, True)
    assert n["converged"] and n["loss"] <= min(lb["loss"], f_ref) + 1e-12


def test_warm_start_reaches_the_same_optimum_in_fewer_iterations(data):
    x, y = data
    W0, b0, cold = fit_linear(x, y, structure="full", reg_lambda=1.0, reg_mu=1.0, solver="newton")
    Wp, bp, _ = fit_linear(x, y, structure="full", reg_lambda=2.0, reg_mu=1.0, solver="newton")
    W1, b1, warm = fit_linear(x, y, structure="full", reg_lambda=1.0, reg_mu=1.0, solver="newton", init=(Wp, bp))
    assert warm["n_iter"] < cold["n_iter"]
    np.testing.assert_allclose(W1, W0, atol=1e-7)
    np.testing.assert_allclose(b1, b0, atol=1e-7)


def test_newton_fit_is_deterministic(data):
    x, y = data
    a = DirichletCalibration(reg_lambda=0.1, reg_mu=0.1).fit(x, y)
    b = DirichletCalibration(reg_lambda=0.1, reg_mu=0.1).fit(x, y)
    assert np.array_equal(a.weights_, b.weights_) and np.array_equal(a.bias_, b.bias_)


def test_auto_picks_newton_for_few_parameters_and_lbfgs_beyond():
    assert NEWTON_MAX_PARAMS == 600
    assert resolve_solver("auto", 24, "full") == "newton" and n_params(24, "full") == 600
    assert resolve_solver("auto", 25, "full") == "lbfgs"
    assert resolve_solver("auto", 300, "diagonal") == "newton"
    assert resolve_solver("auto", 301, "diagonal") == "lbfgs"
    assert resolve_solver("auto", 10, "full", "cuda") == "lbfgs"
    assert resolve_solver("lbfgs", 10, "full") == "lbfgs"


def test_fit_records_the_solver_used(data):
    x, y = data
    assert MatrixScaling(reg_lambda=1.0, reg_mu=1.0).fit(x, y).fit_info_["solver"] == "newton"
    assert MatrixScaling(reg_lambda=1.0, reg_mu=1.0, solver="lbfgs").fit(x, y).fit_info_["solver"] == "lbfgs"


@pytest.mark.parametrize("kw,exc,match", [
    ({"solver": "bfgs"}, ValueError, r"solver as one of \['auto', 'newton', 'lbfgs'\], got 'bfgs'"),
    ({"solver": None}, ValueError, r"solver as one of .* got None"),
    ({"device": "gpu"}, ValueError, r"device as 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ({"device": "cuda:x"}, ValueError, r"device as 'cpu', 'cuda' or 'cuda:N', got 'cuda:x'"),
    ({"device": 0}, TypeError, r"device as 'cpu', 'cuda' or 'cuda:N', got int 0"),
    ({"solver": "newton", "device": "cuda"}, ValueError, r"solver='lbfgs' or 'auto' with device='cuda', got "
                                                          r"solver='newton'"),
])
@pytest.mark.parametrize("cls", [VectorScaling, MatrixScaling, DirichletCalibration])
def test_bad_solver_and_device_are_refused_at_construction(cls, kw, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kw)


def test_newton_is_refused_where_its_hessian_would_not_fit():
    k = 64  # full: 64 * 65 = 4160 parameters > NEWTON_HARD_MAX
    assert n_params(k, "full") > NEWTON_HARD_MAX
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, k)).astype(np.float32)
    y = np.arange(200) % k
    with pytest.raises(ValueError, match=r"solver='lbfgs' or 'auto' for 64 classes \(full W: 4160 parameters\), got "
                                         r"solver='newton'"):
        MatrixScaling(reg_lambda=1.0, reg_mu=1.0, solver="newton").fit(x, y)


def test_solver_and_device_round_trip_through_an_artifact(tmp_path, data):
    from calib.artifacts import load_artifact, save_artifact

    x, y = data
    cal = DirichletCalibration(reg_lambda=0.1, reg_mu=0.1, solver="lbfgs").fit(x, y)
    save_artifact(cal, tmp_path / "a")
    back = load_artifact(tmp_path / "a")
    assert back.get_params() == cal.get_params() and back.solver == "lbfgs" and back.device == "cpu"
    assert np.array_equal(back.predict_proba(x[:50]), cal.predict_proba(x[:50]))


def _cuda():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(_cuda(), reason="a CUDA device is available here")
def test_a_cuda_device_torch_cannot_see_is_refused_at_fit(data):
    x, y = data
    cal = MatrixScaling(reg_lambda=1.0, reg_mu=1.0, device="cuda")  # constructing needs no torch
    with pytest.raises(ValueError, match=r"device='cuda' to be available to torch, got torch.cuda.is_available\(\) "
                                         r"== False"):
        cal.fit(x, y)


@pytest.mark.skipif(not _cuda(), reason="no CUDA device: the GPU path runs only where one is available")
@pytest.mark.parametrize("cls", [VectorScaling, MatrixScaling, DirichletCalibration])
def test_cuda_fit_matches_the_cpu_fit(cls, data):
    x, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gpu = cls(reg_mu=1.0, solver="lbfgs", device="cuda").fit(x, y)
        cpu = cls(reg_mu=1.0, solver="newton").fit(x, y)
    assert gpu.fit_info_["converged"]
    assert gpu.fit_info_["loss"] - cpu.fit_info_["loss"] < 1e-8
    np.testing.assert_allclose(gpu.predict_proba(x), cpu.predict_proba(x), atol=1e-4)


def test_cv_logs_progress_and_chooses_by_the_path(data, caplog, monkeypatch):
    """A long CV logs progress (here forced: a line per fit) and its count is the grid times the folds."""
    import logging

    import calib.calibrators._linear as lin

    monkeypatch.setattr(lin._Progress, "EVERY", 0.0)
    x, y = data
    with caplog.at_level(logging.INFO, logger="calib.calibrators._linear"):
        cal = MatrixScaling(cv_folds=2, cv_lambdas=[1.0, 0.1], cv_mus=[1.0, 0.1]).fit(x, y)
    lines = [r.getMessage() for r in caplog.records if "cross-validation" in r.getMessage()]
    assert lines[0].startswith("MatrixScaling cross-validation: 1/8 fits (12%)")
    assert lines[-1].startswith("MatrixScaling cross-validation: 8 fits in")
    # the chosen pair is the argmin of an independent recomputation of the 2-fold mean validation NLL
    from scipy.special import log_softmax

    from calib.calibrators._linear import kfold_indices

    folds = kfold_indices(len(y), 2, 15)
    table = {}
    for lam in (1.0, 0.1):
        for mu in (1.0, 0.1):
            tot = 0.0
            for val in folds:
                tr = np.setdiff1d(np.arange(len(y)), val)
                _, theta = _reference_fit(x[tr], y[tr], lam, mu, True)
                k = x.shape[1]
                z = x[val].astype(np.float64) @ theta[: k * k].reshape(k, k).T + theta[k * k:]
                tot += -log_softmax(z, axis=1)[np.arange(len(val)), y[val]].mean() / 2
            table[(lam, mu)] = tot
    best = min(table.values())
    assert table[cal.selected_reg_] - best < 1e-6, (cal.selected_reg_, table)
