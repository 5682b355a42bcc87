"""Shared machinery of the linear-in-features calibrators (vector / matrix scaling, Dirichlet).

``p = softmax(f(z) @ W.T + b)`` with features ``f(z)`` (the logits, or their log-softmax for Dirichlet
calibration), fitted by full-batch LBFGS (strong-Wolfe line search) in torch, in float64, from the
identity map (``W = I``, ``b = 0``): deterministic. The objective is

    mean_i NLL_i + lambda * sum_{i != j} W_ij^2 + mu * sum_j b_j^2

(ODIR, Kull et al. 2019, in the form of the authors' Keras code that produced the published grid:
plain sums, no 1/(k(k-1)) or 1/k factor). The fitted state is two numpy arrays, so prediction is numpy.

Conditioning: on Kull et al.'s grid the penalties reach 1e6, so the Hessian's diagonal spans ~1e-3 (NLL)
to 2e6 (penalty). LBFGS on the raw parameters in float32 then stopped early (a step below the float32
resolution of the loss reads as "no change") or ran out of iterations, up to 0.18 above the optimum, and
which grid pair 5-fold CV picked depended on where each fit happened to stop. So the fit runs in float64
on Jacobi-scaled parameters (each divided by the square root of its Hessian diagonal at the start:
NLL part plus 2 * penalty), which puts every coordinate's curvature near 1. Checked against Newton's
method on c10_convnet_kull: pairs with lambda or mu >= ~1 reach the optimum to ~1e-11 in objective in
20-80 iterations; the weakly regularised end (the NLL's own correlated directions) takes a few hundred
and stops within ~2e-7. ``info["converged"]`` is False when ``max_iter`` ran out first.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from calib.calibrators.base import Calibrator, _chunk_rows

__all__ = ["LinearCalibrator", "kfold_indices", "fit_linear", "kull_lambda_grid", "kull_mu_grid"]


def kull_lambda_grid(i_min=-5, i_max=6):
    """Kull et al. 2019's lambda grid: {10^i, 0.25*10^i, 0.5*10^i : i = i_min..i_max}, sorted."""
    return tuple(sorted(float(f"{m}e{i}") for i in range(i_min, i_max + 1) for m in (1, 0.25, 0.5)))


def kull_mu_grid(i_min=-5, i_max=6):
    """Kull et al. 2019's mu grid: {10^i : i = i_min..i_max}."""
    return tuple(float(f"1e{i}") for i in range(i_min, i_max + 1))


def kfold_indices(n, n_folds, seed):
    """Shuffled k-fold (validation index arrays); the same folds as scikit-learn's
    ``KFold(n_folds, shuffle=True, random_state=seed)`` (a RandomState shuffle of ``arange(n)``).

    >>> [f.tolist() for f in kfold_indices(4, 2, 0)]
    [[2, 3], [1, 0]]
    """
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [idx[bounds[i]:bounds[i + 1]] for i in range(n_folds)]


def fit_linear(features, labels, *, structure, reg_lambda=0.0, reg_mu=0.0, max_iter=500, tol=1e-7, init=None):
    """Fit ``W`` (k, k) and ``b`` (k,) by LBFGS; ``structure`` is "full" or "diagonal".

    ``init`` is an optional ``(W, b)`` start (default: identity and zero). The objective is convex and the
    fit runs to convergence, so a warm start changes the number of iterations, not the optimum. ``tol``
    bounds the largest gradient entry in the Jacobi-scaled parameters (see the module docstring). Small
    problems run torch on one thread (on a shared or busy machine, thread hand-offs cost more than the
    arithmetic).

    Returns ``(W, b, info)`` as float64 numpy arrays and a dict with ``loss``, ``n_iter`` and ``converged``
    (False when LBFGS stopped at ``max_iter``).
    """
    import torch

    threads = torch.get_num_threads()
    if features.shape[0] * features.shape[1] <= 2_000_000:
        torch.set_num_threads(1)
    try:
        return _fit_linear(torch, features, labels, structure, reg_lambda, reg_mu, max_iter, tol, init)
    finally:
        torch.set_num_threads(threads)


def _fit_linear(torch, features, labels, structure, reg_lambda, reg_mu, max_iter, tol, init):
    n, k = features.shape
    f64 = torch.float64
    full = structure == "full"
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if full:
        w0 = np.eye(k) if init is None else init[0]
        off = 1.0 - torch.eye(k, dtype=f64)
    else:
        w0 = np.ones(k) if init is None else np.diag(init[0])
        off = None
    w0 = torch.tensor(np.asarray(w0, dtype=np.float64))
    b0 = torch.tensor(np.zeros(k) if init is None else np.asarray(init[1], dtype=np.float64))
    lam = float(reg_lambda) if full else 0.0
    mu = float(reg_mu)

    def logits(w, b):
        return x @ w.T + b if full else x * w + b

    # Jacobi scaling: the diagonal of the NLL Hessian at the start (p_c (1 - p_c) x_j^2 and p_c (1 - p_c),
    # averaged over rows; floored so that an unused class cannot blow a scale up) plus the penalties' 2 * lambda
    # and 2 * mu. LBFGS works on u = w / s_w, v = b / s_b.
    with torch.no_grad():
        p = torch.softmax(logits(w0, b0), dim=1)
        q = p * (1.0 - p)
        hw = (q.T @ (x * x)) / n if full else (q * x * x).mean(0)
        hb = q.mean(0)
        floor = 1e-6 * float(torch.cat([hw.ravel(), hb]).mean()) + 1e-12
        hw, hb = hw.clamp_min(floor), hb.clamp_min(floor)
        if lam:
            hw = hw + 2.0 * lam * off
        if mu:
            hb = hb + 2.0 * mu
        sw, sb = hw.rsqrt(), hb.rsqrt()
    u = (w0 / sw).requires_grad_(True)
    v = (b0 / sb).requires_grad_(True)
    opt = torch.optim.LBFGS([u, v], lr=1.0, max_iter=max_iter, max_eval=int(max_iter * 1.25),
                            tolerance_grad=tol, tolerance_change=1e-12, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w, b = u * sw, v * sb
        loss = torch.nn.functional.cross_entropy(logits(w, b), y)
        if lam:
            loss = loss + lam * torch.sum((w * off) ** 2)
        if mu:
            loss = loss + mu * torch.sum(b ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    final = float(closure().detach())
    n_iter = int(opt.state[u].get("n_iter", 0))  # LBFGS keeps its state under the first parameter
    with torch.no_grad():
        W, b = (u * sw).numpy(), (v * sb).numpy()
    if not full:
        W = np.diag(W)
    return W, b, {"loss": final, "n_iter": n_iter, "converged": n_iter < max_iter}


def _nll(probs, labels):
    p = np.take_along_axis(probs, labels[:, None], axis=1)[:, 0].astype(np.float64)
    return float(-np.mean(np.log(np.maximum(p, np.finfo(np.float64).tiny))))


def _check_reg(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} as a real number >= 0, got {type(value).__name__} {value!r}.")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"Expected {name} as a finite number >= 0, got {value!r}.")
    return float(value)


def _check_grid(values, name):
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"Expected {name} as a list of numbers >= 0, got {values!r}.")
    out = tuple(_check_reg(v, f"{name} entries") for v in values)
    if not out:
        raise ValueError(f"Expected {name} with at least one value, got an empty list.")
    return out


class LinearCalibrator(Calibrator):
    """Base of vector / matrix scaling and Dirichlet calibration (see the module docstring).

    Subclasses set ``kind``, ``_structure`` ("full" or "diagonal") and ``_features`` (numpy).
    """

    _structure = "full"
    _regularised = True

    def _init_common(self, *, reg_lambda, reg_mu, cv_folds, cv_lambdas, cv_mus, cv_seed, max_iter):
        self.reg_lambda = _check_reg(reg_lambda, "reg_lambda")
        self.reg_mu = _check_reg(reg_mu, "reg_mu")
        if cv_folds is not None:
            if isinstance(cv_folds, bool) or not isinstance(cv_folds, numbers.Integral):
                raise TypeError(f"Expected cv_folds as None or an integer >= 2, got {cv_folds!r}.")
            if cv_folds < 2:
                raise ValueError(f"Expected cv_folds as None or an integer >= 2, got {cv_folds!r}.")
            cv_folds = int(cv_folds)
        self.cv_folds = cv_folds
        self.cv_lambdas = _check_grid(cv_lambdas, "cv_lambdas")
        self.cv_mus = _check_grid(cv_mus, "cv_mus")
        if isinstance(cv_seed, bool) or not isinstance(cv_seed, numbers.Integral) or cv_seed < 0:
            raise TypeError(f"Expected cv_seed as an integer >= 0, got {cv_seed!r}.")
        self.cv_seed = int(cv_seed)
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
            raise ValueError(f"Expected max_iter as an integer >= 1, got {max_iter!r}.")
        self.max_iter = int(max_iter)

    # numpy feature map: logits (n, k) -> features (n, k) in the input's dtype
    def _features(self, logits):
        return logits

    def _grid(self):
        lambdas = self.cv_lambdas if self.cv_lambdas is not None else (
            kull_lambda_grid() if self._structure == "full" else (0.0,))
        mus = self.cv_mus if self.cv_mus is not None else kull_mu_grid()
        return [(lam, mu) for lam in lambdas for mu in mus]

    def _fit(self, logits, labels):
        feats = self._features(logits)
        lam, mu = self.reg_lambda, self.reg_mu
        self.cv_results_ = None
        if self.cv_folds is not None:
            grid = self._grid()
            folds = kfold_indices(feats.shape[0], self.cv_folds, self.cv_seed)
            scores = np.zeros(len(grid))
            # strongest regularisation first, each fit warm-started from the previous one of the same mu
            order = sorted(range(len(grid)), key=lambda g: (grid[g][1], -grid[g][0]))
            for val in folds:
                train = np.ones(feats.shape[0], bool)
                train[val] = False
                ftr, ytr, prev = feats[train], labels[train], None
                for g in order:
                    lam_g, mu_g = grid[g]
                    if prev is not None and prev[0] != mu_g:
                        prev = None
                    W, b, _ = fit_linear(ftr, ytr, structure=self._structure, reg_lambda=lam_g, reg_mu=mu_g,
                                         max_iter=self.max_iter, init=None if prev is None else prev[1])
                    prev = (mu_g, (W, b))
                    scores[g] += _nll(_linear_softmax(feats[val], W, b), labels[val]) / len(folds)
            best = int(np.argmin(scores))
            lam, mu = grid[best]
            self.cv_results_ = {"lambdas": np.array([g[0] for g in grid]), "mus": np.array([g[1] for g in grid]),
                                "mean_val_nll": scores}
        W, b, info = fit_linear(feats, labels, structure=self._structure, reg_lambda=lam, reg_mu=mu,
                                max_iter=self.max_iter)
        self.weights_, self.bias_ = W, b
        self.selected_reg_ = (float(lam), float(mu))
        self.fit_info_ = info

    def _predict_proba(self, logits):
        return _linear_softmax(self._features(logits), self.weights_, self.bias_)

    def _get_state(self):
        return ({"selected_reg_lambda": self.selected_reg_[0], "selected_reg_mu": self.selected_reg_[1]},
                {"weights": self.weights_, "bias": self.bias_})

    def _set_state(self, state, arrays):
        self.weights_ = np.asarray(arrays["weights"], dtype=np.float64)
        self.bias_ = np.asarray(arrays["bias"], dtype=np.float64)
        self.selected_reg_ = (float(state["selected_reg_lambda"]), float(state["selected_reg_mu"]))


def _linear_softmax(features, W, b):
    """``softmax(features @ W.T + b)`` in float32 chunks (float64 for float64 input)."""
    dtype = np.result_type(features.dtype, np.float32)
    Wt = W.T.astype(dtype)
    bb = b.astype(dtype)
    n, k = features.shape
    out = np.empty((n, k), dtype=dtype)
    rows = _chunk_rows(k)
    for s in range(0, n, rows):
        z = features[s:s + rows].astype(dtype, copy=False) @ Wt
        z += bb
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        out[s:s + rows] = z
    return out


def log_softmax(logits, floor=math.log(np.finfo(np.float64).eps)):
    """Row-wise log-softmax in the input's precision, floored at ``floor`` (Kull et al. clip p at eps)."""
    x = np.asarray(logits)
    out = x - x.max(axis=1, keepdims=True)
    out -= np.log(np.exp(out).sum(axis=1, keepdims=True))
    np.maximum(out, floor, out=out)
    return out
