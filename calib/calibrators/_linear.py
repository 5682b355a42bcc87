"""Shared machinery of the linear-in-features calibrators (vector / matrix scaling, Dirichlet).

``p = softmax(f(z) @ W.T + b)`` with features ``f(z)`` (the logits, or their log-softmax for Dirichlet
calibration), fitted in float64 from the identity map (``W = I``, ``b = 0``): deterministic. The objective is

    mean_i NLL_i + lambda * sum_{i != j} W_ij^2 + mu * sum_j b_j^2

(ODIR, Kull et al. 2019, in the form of the authors' Keras code that produced the published grid:
plain sums, no 1/(k(k-1)) or 1/k factor). The fitted state is two numpy arrays, so prediction is numpy.

Solvers (``solver=``):

* ``"newton"`` (numpy): Newton's method with the exact Hessian of the multinomial NLL plus the penalty,
  solved in Jacobi-scaled form, Armijo backtracking. The objective is convex and smooth, so Newton reaches
  the optimum to float64 precision in ~5-15 iterations from the identity and ~2-5 from a warm start. The
  Hessian has ``p = k (k + 1)`` (full) or ``2 k`` (diagonal) rows, built in row chunks at ``n p^2``
  flops per iteration, so it is the fast choice for small ``p`` (Kull et al.'s CV grid on 10 classes:
  2160 fits in about a minute, where LBFGS took 15).
* ``"lbfgs"`` (torch): full-batch LBFGS (strong-Wolfe line search) on Jacobi-scaled parameters (each divided
  by the square root of its Hessian diagonal at the start), on ``device`` ("cpu" or a CUDA device: the
  features move there once, the result comes back as numpy). Memory and time per iteration ~ ``n k^2``:
  the choice for many classes. Conditioning note: on Kull et al.'s grid the penalties reach 1e6, so the
  Hessian's diagonal spans ~1e-3 (NLL) to 2e6 (penalty); unscaled float32 LBFGS stopped up to 0.18 above
  the optimum, which is why both solvers scale and run in float64.
* ``"auto"`` (default): Newton when ``p <= NEWTON_MAX_PARAMS`` and the device is the CPU, else LBFGS.

``info["converged"]`` is False when ``max_iter`` ran out first; ``info["grad_max"]`` is the largest
Jacobi-scaled gradient entry at the end (converged fits: below ``tol`` = 1e-7).
"""

from __future__ import annotations

import logging
import math
import numbers
import time
import warnings

import numpy as np

from calib.base import ConvergenceWarning, FitError, state_array, state_scalar
from calib.calibrators.base import Calibrator, _chunk_rows, state_error

log = logging.getLogger(__name__)

__all__ = ["LinearCalibrator", "kfold_indices", "fit_linear", "kull_lambda_grid", "kull_mu_grid", "REG_MAX"]

#: Largest accepted penalty weight (reg_lambda, reg_mu, grid entries). Kull et al.'s grid ends at 1e6; with a
#: penalty of 1e12 the penalised entries are already ~1e-12 x the NLL gradient, i.e. zero for any purpose,
#: and values near float64's limit (1e308, or an int like 10**400) overflow the solver's scaling.
REG_MAX = 1e12

#: A fit that LBFGS stops before its limits with a scaled gradient entry above this is stalled, not converged:
#: converged fits on real logits end below ~2e-5 (and at the iteration limit below ~3e-4), stalled ones
#: (logits near float32's limit) around 0.1 to 1.
_STALL = 1e-3


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

    Raises ``ValueError`` unless ``2 <= n_folds <= n`` (more folds than rows would leave empty folds,
    whose NaN scores no grid search can compare).
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, numbers.Integral) or n_folds < 2:
        raise ValueError(f"Expected cv_folds as an integer >= 2, got {n_folds!r}.")
    if n_folds > n:
        raise ValueError(
            f"Expected cv_folds <= the number of calibration rows ({n}), got cv_folds={n_folds}: some folds "
            "would be empty. Use fewer folds or more calibration rows."
        )
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [idx[bounds[i]:bounds[i + 1]] for i in range(n_folds)]


#: ``solver="auto"`` uses Newton up to this many parameters (full: k (k + 1), i.e. k <= 24; diagonal: 2 k,
#: i.e. k <= 300). Newton's cost per iteration is ~ n p^2 flops and p^2 memory, LBFGS's ~ n k^2 (full).
NEWTON_MAX_PARAMS = 600

#: ``solver="newton"`` is refused above this many parameters (a 4096 x 4096 Hessian is 128 MiB).
NEWTON_HARD_MAX = 4096

SOLVERS = ("auto", "newton", "lbfgs")


def check_device(value, name="device"):
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (checked without importing torch; availability is checked at fit)."""
    if not isinstance(value, str):
        raise TypeError(f"Expected {name} as 'cpu', 'cuda' or 'cuda:N', got {type(value).__name__} {value!r:.80}.")
    v = value.strip().lower()
    if v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit() and v[5:].isascii()):
        return v
    raise ValueError(f"Expected {name} as 'cpu', 'cuda' or 'cuda:N', got {value!r:.80}.")


def check_solver(value, name="solver"):
    if not isinstance(value, str) or value not in SOLVERS:
        raise ValueError(f"Expected {name} as one of {list(SOLVERS)}, got {value!r:.80}.")
    return value


def n_params(k, structure):
    """Number of fitted parameters: ``k (k + 1)`` for a full W, ``2 k`` for a diagonal one."""
    return k * (k + 1) if structure == "full" else 2 * k


def resolve_solver(solver, k, structure, device="cpu"):
    """The solver ``"auto"`` stands for (see the module docstring); refuses Newton off the CPU."""
    solver, device = check_solver(solver), check_device(device)
    if solver == "auto":
        return "newton" if device == "cpu" and n_params(k, structure) <= NEWTON_MAX_PARAMS else "lbfgs"
    if solver == "newton" and device != "cpu":
        raise ValueError(f"Expected solver='lbfgs' or 'auto' with device={device!r}, got solver='newton' "
                         "(Newton runs in numpy on the CPU).")
    if solver == "newton" and n_params(k, structure) > NEWTON_HARD_MAX:
        p = n_params(k, structure)
        raise ValueError(f"Expected solver='lbfgs' or 'auto' for {k} classes ({structure} W: {p} parameters), got "
                         f"solver='newton', whose {p} x {p} Hessian ({8 * p * p / 2**30:.3g} GiB) is limited to "
                         f"{NEWTON_HARD_MAX} parameters.")
    return solver


def fit_linear(features, labels, *, structure, reg_lambda=0.0, reg_mu=0.0, max_iter=500, tol=1e-7, init=None,
               warn=True, solver="auto", device="cpu", hessian_cache=None):
    """Fit ``W`` (k, k) and ``b`` (k,); ``structure`` is "full" or "diagonal".

    ``init`` is an optional ``(W, b)`` start (default: identity and zero). The objective is convex and the
    fit runs to convergence, so a warm start changes the number of iterations, not the optimum. ``tol``
    bounds the largest gradient entry in Jacobi-scaled parameters (see the module docstring); ``solver``
    and ``device`` choose how (module docstring). ``hessian_cache``: a dict that Newton fits of one
    regularisation path share (same features and labels, nearby optima): each starts from the NLL Hessian the
    previous one left, and recomputes it only when it stops working.

    Returns ``(W, b, info)`` as float64 numpy arrays and a dict with ``loss``, ``n_iter``, ``converged``
    (False when the solver stopped at ``max_iter`` iterations or, for LBFGS, its evaluation budget),
    ``grad_max`` (the largest scaled gradient entry at the end, to compare with ``tol``) and ``solver``.
    Raises :class:`calib.base.FitError` when the objective or its derivatives are not finite at the start,
    or the solver stalls far from the optimum, instead of returning the start; warns
    :class:`calib.base.ConvergenceWarning` when not converged (unless ``warn=False``).
    """
    solver = resolve_solver(solver, features.shape[1], structure, device)
    if solver == "newton":
        with _blas_threads(features.shape[0] * n_params(features.shape[1], structure) ** 2):
            W, b, info = _fit_newton(features, labels, structure, reg_lambda, reg_mu, max_iter, tol, init,
                                     hessian_cache)
    else:
        import torch

        device = check_device(device)
        if device != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"Expected device={device!r} to be available to torch, got "
                             f"torch.cuda.is_available() == False (torch {torch.__version__}); use device='cpu'.")
        threads = torch.get_num_threads()
        if features.shape[0] * features.shape[1] <= 2_000_000:
            torch.set_num_threads(1)
        try:
            W, b, info = _fit_linear(torch, features, labels, structure, reg_lambda, reg_mu, max_iter, tol, init,
                                     device)
        finally:
            torch.set_num_threads(threads)
    info["solver"] = solver
    if warn and not info["converged"]:
        warnings.warn(_convergence_message(info, max_iter, tol), ConvergenceWarning, stacklevel=2)
    return W, b, info


_CONTROLLER = []


def _blas_threads(flops):
    """One BLAS thread for Newton problems below ~4e9 flops per iteration (all that ``solver="auto"`` picks):
    their matrix products are small, and on a shared or busy machine OpenBLAS's thread hand-offs made them
    10-20x slower than one thread (measured: 0.4-3 s vs 0.1 s per warm-started CV fit at load 6 on 2 cores).
    Uses threadpoolctl (a controller built once: ~25 us per use)."""
    import contextlib

    if flops > 4e9:
        return contextlib.nullcontext()
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


def _convergence_message(info, max_iter, tol):
    return (f"The {info.get('solver', 'lbfgs')} fit stopped at max_iter={max_iter} ({info['n_iter']} iterations) "
            f"before meeting its tolerance: largest scaled gradient entry {info['grad_max']:.3g} (tolerance "
            f"{tol:.3g}), loss {info['loss']:.8g}. Increase max_iter.")


def _non_finite_fit(features, where, loss, solver="LBFGS"):
    big = float(np.abs(features).max()) if features.size else 0.0
    return FitError(
        f"Expected a finite objective and derivatives in the {solver} fit, got loss {loss!r} {where}; likely cause: "
        f"features (logits) as large as {big:.3g}, whose cross-entropy or scaling overflows float64. "
        "Clip or rescale the logits."
    )


def _stalled(features, solver, n_iter, gmax, tol):
    big = float(np.abs(features).max())
    return FitError(
        f"Expected the {solver} fit to reach the optimum, got a stop after {n_iter} iterations without progress, far "
        f"from it (largest scaled gradient entry {gmax:.3g}; converged fits end below ~1e-5, tolerance {tol:.3g}); "
        f"likely cause: logits as large as {big:.3g}, a scale no step size suits. Clip or rescale the logits."
    )


def _fit_newton(features_in, labels, structure, reg_lambda, reg_mu, max_iter, tol, init, cache=None):
    """Damped Newton in numpy float64 (see the module docstring). Parameters ``theta`` (k, m): row c holds
    class c's weights then its bias; m = k + 1 (full W) or 2 (diagonal: its scale and bias)."""
    n, k = features_in.shape
    full = structure == "full"
    m = k + 1 if full else 2
    x = np.ascontiguousarray(features_in, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    R = np.zeros((k, m))  # the Hessian of the penalty: 2 lambda on off-diagonal weights, 2 mu on biases
    if full:
        R[:, :k] = 2.0 * float(reg_lambda)
        R[np.arange(k), np.arange(k)] = 0.0
    R[:, m - 1] = 2.0 * float(reg_mu)
    if init is None:
        w0, b0 = (np.eye(k) if full else np.ones(k)), np.zeros(k)
    else:
        w0 = np.asarray(init[0], dtype=np.float64) if full else np.diag(init[0]).astype(np.float64)
        b0 = np.asarray(init[1], dtype=np.float64)
    theta = np.column_stack([w0, b0])
    rows = max(1, min(n, (1 << 21) // (k * m)))  # row chunks: the (rows, k, m) block stays ~16 MB
    spans = [(s, min(n, s + rows)) for s in range(0, n, rows)]
    p = k * m

    if cache is not None and cache.get("features") is features_in and cache.get("labels") is labels:
        x, chunks = cache["x"], cache["chunks"]  # the same rows as the previous fit of the path
    else:
        if full:  # the features with a column of ones, once: F = [x, 1] (n, m), shared by all classes
            xt = np.empty((n, m))
            xt[:, :k], xt[:, k] = x, 1.0
            x = xt
        # Per chunk: row-major features (for the Hessian) and class-major copies (k or m, rows) for the O(n k m)
        # passes, whose reductions over classes then run across contiguous rows (numpy reduces a short trailing
        # axis ~5x slower). ``xT2`` holds the squared features, for the Hessian's diagonal.
        chunks = []
        with np.errstate(over="ignore"):  # an inf square is caught by the finiteness check of the start
            for s, t in spans:
                xT = np.ascontiguousarray(x[s:t].T)
                chunks.append((x[s:t], xT, xT * xT, y[s:t], np.arange(t - s)))
        if cache is not None:
            cache.clear()
            cache.update(features=features_in, labels=labels, x=x, chunks=chunks)

    def class_scores(th, xT):  # (k, rows)
        return th @ xT if full else th[:, :1] * xT + th[:, 1:]

    def features(xs):  # the per-class feature rows F: full (r, m) shared by all classes; diagonal (r, k, 2)
        return xs if full else np.stack([xs, np.ones_like(xs)], axis=2)

    def probs(th, xT, ys, ar):
        """Class-major softmax (k, rows) of the scores and the chunk's NLL sum (log-sum-exp, max-shifted)."""
        z = class_scores(th, xT)
        zmax = z.max(axis=0)
        e = np.exp(z - zmax)
        se = e.sum(axis=0)
        nll = float((np.log(se) + zmax - z[ys, ar]).sum())
        e /= se
        return e, nll

    def value_grad(th):
        """Objective, gradient (k, m) and the Hessian's diagonal (k, m): O(n k m), no p x p work."""
        f, G, hd = 0.0, np.zeros((k, m)), np.zeros((k, m))
        with np.errstate(over="ignore", invalid="ignore"):
            for xs, xT, xT2, ys, ar in chunks:
                P, nll = probs(th, xT, ys, ar)
                f += nll
                q = P * (1.0 - P)
                P[ys, ar] -= 1.0  # P - onehot(y)
                if full:
                    G += P @ xs
                    hd += q @ xT2.T
                else:
                    G[:, 0] += (P * xT).sum(axis=1)
                    G[:, 1] += P.sum(axis=1)
                    hd[:, 0] += (q * xT2).sum(axis=1)
                    hd[:, 1] += q.sum(axis=1)
            last[:] = [th, f / n, G / n, hd / n]  # the NLL's parts at th: the next fit of a path starts from them
            return penalised(th, f / n, G / n, hd / n)

    def penalised(th, f, G, hd):
        return f + 0.5 * float((R * th * th).sum()), G + R * th, hd + R

    def hessian(th):
        """sum_i (diag(p_i) - p_i p_i^T) (x) F_i F_i^T / n + penalty: blocks p_a F F^T on the diagonal minus
        Q^T Q with Q_i = p_i (x) F_i; O(n p^2)."""
        H = np.zeros((p, p))
        D = np.zeros((k, m, m))
        with np.errstate(over="ignore", invalid="ignore"):
            for xs, xT, _, ys, ar in chunks:
                r = xs.shape[0]
                P = probs(th, xT, ys, ar)[0].T  # (r, k)
                F = features(xs)
                if full:
                    Q = (P[:, :, None] * F[:, None, :]).reshape(r, p)
                    D += (F.T @ Q).reshape(m, k, m).transpose(1, 0, 2)
                else:
                    Q = (P[:, :, None] * F).reshape(r, p)
                    D[:, 0, 0] += (P * xs * xs).sum(axis=0)
                    D[:, 0, 1] += (P * xs).sum(axis=0)
                    D[:, 1, 1] += P.sum(axis=0)
                H -= Q.T @ Q
            if not full:
                D[:, 1, 0] = D[:, 0, 1]
            H /= n
            D /= n
            for a in range(k):
                H[a * m:(a + 1) * m, a * m:(a + 1) * m] += D[a]
        return H  # the NLL's part; the penalty's diagonal R is added where it is used

    def finite(*arrays):
        return all(np.isfinite(a).all() for a in arrays)

    last = [None, None, None, None]
    prev = cache.get("last") if cache is not None else None
    if prev is not None and prev[0].shape == theta.shape and np.array_equal(prev[0], theta):
        # warm-started at the previous fit's optimum: its NLL value, gradient and Hessian diagonal hold here;
        # only the penalty changed (a fit already optimal for the new penalty costs no pass over the data)
        f, G, hd = penalised(theta, *prev[1:])
        last[:] = prev
    else:
        f, G, hd = value_grad(theta)
    if not (math.isfinite(f) and finite(G, hd)):
        raise _non_finite_fit(features_in, "at the start (identity map)" if init is None else "at the start", f,
                              "Newton")
    # The NLL's Hessian is reused while it works: from the previous fit of a warm-started path (``cache``), or
    # from an earlier iterate, as long as each step cuts the scaled gradient at least 4-fold; otherwise, and
    # whenever a step with a reused Hessian fails its line search, it is recomputed at the current point. A
    # reused Hessian changes the path to the optimum (linear instead of quadratic convergence), never the
    # optimum: the gradient is exact and the stopping rule reads it.
    H_nll = None
    if cache is not None and cache.get("shape") == (n, k, m, full):
        H_nll = cache.get("H")
    fresh = False
    n_iter, converged, stalled, prev_gmax = 0, False, False, math.inf
    while True:
        hd = hd.ravel()
        s = 1.0 / np.sqrt(np.maximum(hd, 1e-6 * hd.mean() + 1e-12))  # Jacobi scaling
        gs = G.ravel() * s
        gmax = float(np.abs(gs).max())
        if gmax <= tol:
            converged = True
            break
        if n_iter >= max_iter:
            break
        if H_nll is None or (not fresh and gmax > 0.25 * prev_gmax):
            H_nll, fresh = hessian(theta), True
            if not finite(H_nll):
                raise _non_finite_fit(features_in, f"after {n_iter} Newton iterations (Hessian)", f, "Newton")
        Hs = H_nll * s[:, None] * s[None, :]
        Hs[np.diag_indices(p)] += R.ravel() * s * s + 1e-12  # +1e-12: the unpenalised NLL is shift-invariant
        try:
            step = np.linalg.solve(Hs, gs)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(Hs, gs, rcond=None)[0]
        dec = float(gs @ step)  # Newton decrement squared: twice the predicted decrease
        if not (math.isfinite(dec) and dec > 0):
            step, dec = gs, float(gs @ gs)  # not a descent direction (numerically): scaled gradient step
        step = (step * s).reshape(k, m)
        t = 1.0
        while True:
            cand = theta - t * step
            kept = list(last)
            fc, Gc, hc = value_grad(cand)
            # below ~1e-13 the predicted decrease is under the objective's rounding (sums of ~n terms), so
            # Armijo cannot judge the step; in that quadratic regime the full Newton step is the right one
            if (fc <= f - 1e-4 * t * dec or (dec < 1e-13 and t == 1.0)) and math.isfinite(fc) and finite(Gc, hc):
                theta, f, G, hd = cand, fc, Gc, hc
                break
            last[:] = kept  # a rejected candidate: the NLL's parts stay those of theta
            t *= 0.5
            if t < 1e-10:
                stalled = True
                break
        if stalled and not fresh:  # the reused Hessian misled the step: retry with the current one
            H_nll, stalled = None, False
            continue
        n_iter += 1
        if stalled:
            break
        prev_gmax, fresh = gmax, False
    if stalled:
        if gmax > _STALL:
            raise _stalled(features_in, "Newton", n_iter, gmax, tol)
        converged = True  # no step decreases the objective at float64 resolution: the optimum, numerically
    if cache is not None:
        cache["shape"], cache["H"], cache["last"] = (n, k, m, full), H_nll, last
    W, b = theta[:, :-1], theta[:, -1].copy()
    W = np.ascontiguousarray(W) if full else np.diag(W[:, 0])
    return W, b, {"loss": f, "n_iter": n_iter, "converged": converged, "grad_max": gmax}


def _fit_linear(torch, features, labels, structure, reg_lambda, reg_mu, max_iter, tol, init, device="cpu"):
    n, k = features.shape
    f64 = torch.float64
    full = structure == "full"
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64)).to(device)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    if full:
        w0 = np.eye(k) if init is None else init[0]
        off = 1.0 - torch.eye(k, dtype=f64, device=device)
    else:
        w0 = np.ones(k) if init is None else np.diag(init[0])
        off = None
    w0 = torch.tensor(np.asarray(w0, dtype=np.float64), device=device)
    b0 = torch.tensor(np.zeros(k) if init is None else np.asarray(init[1], dtype=np.float64), device=device)
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
    max_eval = max_iter + max_iter // 4  # integer arithmetic: no overflow for any max_iter
    opt = torch.optim.LBFGS([u, v], lr=1.0, max_iter=max_iter, max_eval=max_eval,
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

    def grad_max():
        return max(float(u.grad.abs().max()), float(v.grad.abs().max()))

    start = float(closure().detach())
    if not (math.isfinite(start) and math.isfinite(grad_max()) and bool(torch.isfinite(sw).all())
            and bool(torch.isfinite(sb).all())):
        raise _non_finite_fit(features, "at the start (identity map)" if init is None else "at the start", start)
    opt.step(closure)
    final = float(closure().detach())
    gmax = grad_max()
    if not (math.isfinite(final) and math.isfinite(gmax) and bool(torch.isfinite(u).all())
            and bool(torch.isfinite(v).all())):
        raise _non_finite_fit(features, f"after {int(opt.state[u].get('n_iter', 0))} LBFGS iterations", final)
    n_iter = int(opt.state[u].get("n_iter", 0))  # LBFGS keeps its state under the first parameter
    evals = int(opt.state[u].get("func_evals", 0))
    with torch.no_grad():
        W, b = (u * sw).cpu().numpy(), (v * sb).cpu().numpy()
    if not full:
        W = np.diag(W)
    at_limit = n_iter >= max_iter or evals >= max_eval
    if not at_limit and gmax > _STALL:
        # LBFGS gave up (no progress in its line search) far from the optimum: what it holds is about the start
        raise _stalled(features, "LBFGS", n_iter, gmax, tol)
    converged = gmax <= tol or not at_limit
    return W, b, {"loss": final, "n_iter": n_iter, "converged": converged, "grad_max": gmax}


def _nll(probs, labels):
    p = np.take_along_axis(probs, labels[:, None], axis=1)[:, 0].astype(np.float64)
    return float(-np.mean(np.log(np.maximum(p, np.finfo(np.float64).tiny))))


def _check_reg(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} as a real number >= 0, got {type(value).__name__} {value!r:.80}.")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not (math.isfinite(v) and 0 <= v <= REG_MAX):
        raise ValueError(f"Expected {name} as a finite number in [0, {REG_MAX:g}], got {value!r:.80}.")
    return v


def _check_grid(values, name):
    if values is None:
        return None
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__") or getattr(values, "ndim", 1) != 1:
        raise TypeError(f"Expected {name} as a list of numbers >= 0, got {type(values).__name__} {values!r:.80}.")
    out = tuple(_check_reg(v, f"{name} entries") for v in values)
    if not out:
        raise ValueError(f"Expected {name} with at least one value, got an empty list.")
    return out


def _check_int(value, name, minimum, maximum=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {name} as an integer >= {minimum}, got {type(value).__name__} {value!r:.80}.")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"Expected {name} as an integer {bound}, got {value!r:.80}.")
    return int(value)


class _Progress:
    """Progress of a long loop on the ``calib`` logger (INFO): a line every ``every`` seconds, and one at the end if
    any was written; silent for loops shorter than that (Hydra runs and notebooks show INFO logs)."""

    EVERY = 10.0

    def __init__(self, what, total):
        self.what, self.total, self.every, self.n, self.wrote = what, total, self.EVERY, 0, False
        self.t0 = self.last = time.monotonic()

    def step(self):
        self.n += 1
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last, self.wrote = now, True
            rate = self.n / (now - self.t0)
            log.info("%s: %d/%d fits (%.0f%%), %.0f s, ~%.0f s left", self.what, self.n, self.total,
                     100.0 * self.n / self.total, now - self.t0, (self.total - self.n) / rate)

    def done(self):
        if self.wrote:
            log.info("%s: %d fits in %.0f s", self.what, self.n, time.monotonic() - self.t0)


class LinearCalibrator(Calibrator):
    """Base of vector / matrix scaling and Dirichlet calibration (see the module docstring).

    Subclasses set ``kind``, ``_structure`` ("full" or "diagonal") and ``_features`` (numpy).
    """

    _structure = "full"
    _regularised = True

    def _init_common(self, *, reg_lambda, reg_mu, cv_folds, cv_lambdas, cv_mus, cv_seed, max_iter, solver="auto",
                     device="cpu"):
        self.reg_lambda = _check_reg(reg_lambda, "reg_lambda")
        self.reg_mu = _check_reg(reg_mu, "reg_mu")
        if cv_folds is not None:
            if isinstance(cv_folds, (bool, np.bool_)) or not isinstance(cv_folds, numbers.Integral):
                raise TypeError(f"Expected cv_folds as None or an integer >= 2, got {type(cv_folds).__name__} "
                                f"{cv_folds!r:.80}.")
            if cv_folds < 2:
                raise ValueError(f"Expected cv_folds as None or an integer >= 2, got {cv_folds!r:.80}.")
            cv_folds = int(cv_folds)
        self.cv_folds = cv_folds
        self.cv_lambdas = _check_grid(cv_lambdas, "cv_lambdas")
        self.cv_mus = _check_grid(cv_mus, "cv_mus")
        self.cv_seed = _check_int(cv_seed, "cv_seed", 0, 2**32 - 1)  # numpy's RandomState seed range
        self.max_iter = _check_int(max_iter, "max_iter", 1)
        self.solver = check_solver(solver)
        self.device = check_device(device)
        if self.solver == "newton" and self.device != "cpu":
            resolve_solver(self.solver, 2, self._structure, self.device)  # raises, naming both

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
        name = type(self).__name__
        if self.cv_folds is not None:
            grid = self._grid()
            folds = kfold_indices(feats.shape[0], self.cv_folds, self.cv_seed)  # raises if cv_folds > rows
            scores = np.zeros(len(grid))
            not_converged = []
            # A regularisation path: for each mu (ascending), lambda from the strongest down, each fit warm-started
            # from the previous one; the first fit of a mu from the first fit of the previous mu. The objective is
            # convex and every fit runs to its tolerance, so warm starts change iteration counts, not optima.
            order = sorted(range(len(grid)), key=lambda g: (grid[g][1], -grid[g][0]))
            progress = _Progress(f"{name} cross-validation", len(grid) * len(folds))
            for val in folds:
                train = np.ones(feats.shape[0], bool)
                train[val] = False
                ftr, ytr, prev, head, cache = feats[train], labels[train], None, None, {}
                for g in order:
                    lam_g, mu_g = grid[g]
                    new_mu = prev is None or prev[0] != mu_g
                    start = head if new_mu else prev[1]
                    W, b, info = fit_linear(ftr, ytr, structure=self._structure, reg_lambda=lam_g, reg_mu=mu_g,
                                            max_iter=self.max_iter, solver=self.solver, device=self.device,
                                            init=start, warn=False, hessian_cache=cache)
                    if not info["converged"]:
                        not_converged.append(info["grad_max"])
                    prev = (mu_g, (W, b))
                    if new_mu:
                        head = (W, b)
                    progress.step()
                    scores[g] += _nll(_linear_softmax(feats[val], W, b), labels[val]) / len(folds)
            bad = ~np.isfinite(scores)
            if bad.any():  # argmin would return the first NaN: never pick a pair from a non-finite score
                pairs = [grid[i] for i in np.flatnonzero(bad)[:5]]
                raise FitError(f"Expected finite cross-validation scores, got {int(bad.sum())} of {len(grid)} "
                               f"grid pairs (lambda, mu) with a non-finite mean validation NLL (e.g. {pairs}).")
            if not_converged:
                warnings.warn(
                    f"{name}: {len(not_converged)} of {len(grid) * len(folds)} cross-validation fits stopped at "
                    f"max_iter={self.max_iter} before meeting their tolerance (largest scaled gradient entry "
                    f"{max(not_converged):.3g}, tolerance 1e-07); their scores may rank the grid wrongly. "
                    "Increase max_iter.", ConvergenceWarning, stacklevel=3)
            progress.done()
            best = int(np.argmin(scores))
            lam, mu = grid[best]
            self.cv_results_ = {"lambdas": np.array([g[0] for g in grid]), "mus": np.array([g[1] for g in grid]),
                                "mean_val_nll": scores}
        self._warn_if_ill_posed(labels, feats.shape[1], lam, mu)
        W, b, info = fit_linear(feats, labels, structure=self._structure, reg_lambda=lam, reg_mu=mu,
                                max_iter=self.max_iter, solver=self.solver, device=self.device, warn=False)
        if not info["converged"]:
            warnings.warn(f"{name}: {_convergence_message(info, self.max_iter, 1e-7)}", ConvergenceWarning,
                          stacklevel=3)
        self.weights_, self.bias_ = W, b
        self.selected_reg_ = (float(lam), float(mu))
        self.fit_info_ = info

    def _warn_if_ill_posed(self, labels, k, lam, mu):
        """Warn when the fit has more unpenalised parameters than calibration rows (per class: more than
        the rows of an average class): the NLL then has no finite minimum or a meaningless one."""
        n = labels.shape[0]
        full = self._structure == "full"
        free = (k * k if full and lam == 0 else k) + (k if mu == 0 else 0)
        if free <= n:
            return
        what = (["reg_lambda"] if full and lam == 0 else []) + (["reg_mu"] if mu == 0 else [])
        warnings.warn(
            f"{type(self).__name__}: {free} unpenalised parameters ({free / k:g} per class) fitted to {n} calibration "
            f"rows ({n / k:.3g} per class): the fit is ill-posed (it can match the calibration labels with ever "
            f"larger weights and returns an over-confident map). Regularise it: set {' and '.join(what)} > 0 "
            "(ODIR, e.g. 1e-2) or cv_folds=5 to choose them, or use a calibrator with fewer parameters.",
            UserWarning, stacklevel=4,
        )

    def _predict_proba(self, logits):
        return _linear_softmax(self._features(logits), self.weights_, self.bias_)

    def _get_state(self):
        return ({"selected_reg_lambda": self.selected_reg_[0], "selected_reg_mu": self.selected_reg_[1]},
                {"weights": self.weights_, "bias": self.bias_})

    def _set_state(self, state, arrays):
        cls, k = type(self), self.n_classes_
        W = state_array(arrays, "weights", shape=(k, k), owner=cls)
        b = state_array(arrays, "bias", shape=(k,), owner=cls)
        if self._structure == "diagonal" and (W != np.diag(np.diag(W))).any():
            raise state_error(cls, "weights", f"diagonal (structure {self._structure!r})",
                              f"{int((W != np.diag(np.diag(W))).sum())} non-zero off-diagonal entries")
        lam = state_scalar(state, "selected_reg_lambda", float, minimum=0.0, maximum=REG_MAX, owner=cls)
        mu = state_scalar(state, "selected_reg_mu", float, minimum=0.0, maximum=REG_MAX, owner=cls)
        if self.cv_folds is None:
            if (lam, mu) != (self.reg_lambda, self.reg_mu):
                raise state_error(cls, "selected_reg_lambda/selected_reg_mu",
                                  f"equal to (reg_lambda, reg_mu) = {(self.reg_lambda, self.reg_mu)} without CV",
                                  repr((lam, mu)))
        elif (lam, mu) not in set(self._grid()):
            raise state_error(cls, "selected_reg_lambda/selected_reg_mu", "a (lambda, mu) pair of the CV grid",
                              repr((lam, mu)))
        self.weights_, self.bias_, self.selected_reg_ = W, b, (lam, mu)


def _linear_softmax(features, W, b):
    """``softmax(features @ W.T + b)`` in float32 chunks (float64 for float64 input).

    Rows whose scores overflow float32 are recomputed in float64; rows that overflow even there raise
    ``ValueError`` (their probabilities would be NaN).
    """
    dtype = np.result_type(features.dtype, np.float32)
    Wt = W.T.astype(dtype)
    bb = b.astype(dtype)
    n, k = features.shape
    out = np.empty((n, k), dtype=dtype)
    rows = _chunk_rows(k)
    for s in range(0, n, rows):
        with np.errstate(over="ignore", invalid="ignore"):
            z = features[s:s + rows].astype(dtype, copy=False) @ Wt
            z += bb
        bad = ~np.isfinite(z).all(axis=1)
        if bad.any():
            with np.errstate(over="ignore", invalid="ignore"):
                z64 = features[s:s + rows][bad].astype(np.float64) @ W.T + b
            still = ~np.isfinite(z64).all(axis=1)
            if still.any():
                first = (s + np.flatnonzero(bad)[np.flatnonzero(still)]).tolist()[:5]
                raise ValueError(
                    f"Expected logits whose calibrated scores W z + b are finite, got {int(still.sum())} rows that "
                    f"overflow float64 (first rows: {first}); clip or rescale these logits."
                )
            z[bad] = _softmax_rows(z64)
            z[~bad] = _softmax_rows(z[~bad])
        else:
            _softmax_rows(z)
        out[s:s + rows] = z
    return out


def _softmax_rows(z):
    """Row-wise softmax of finite scores, in place; returns ``z``."""
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def log_softmax(logits, floor=math.log(np.finfo(np.float64).eps)):
    """Row-wise log-softmax in the input's precision, floored at ``floor`` (Kull et al. clip p at eps)."""
    x = np.asarray(logits)
    with np.errstate(over="ignore"):  # a row range beyond the dtype gives -inf, floored below
        out = x - x.max(axis=1, keepdims=True)
    out -= np.log(np.exp(out).sum(axis=1, keepdims=True))
    np.maximum(out, floor, out=out)
    return out
