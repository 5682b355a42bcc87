"""Label-shift estimation and prior correction: the target class prior from unlabeled target probabilities.

Label shift: the class prior changes between calibration (source) and serving (target), ``q(y) != p(y)``, while
the class-conditional input law stays put, ``q(x | y) = p(x | y)``. Then ``q(y | x) ∝ w(y) p(y | x)`` with the
importance weights ``w(y) = q(y) / p(y)``, and ``q`` can be estimated from unlabeled target rows.

- :func:`estimate_label_shift` with ``method="em"``: the EM prior adjustment of Saerens, Latinne & Decaestecker
  (2002, "Adjusting the outputs of a classifier to new a priori probabilities: a simple procedure", Neural
  Computation 14(1)), the maximum-likelihood target prior given calibrated ``p(y | x)``;
- ``method="bbse"``: black-box shift estimation of Lipton, Wang & Smola (2018, "Detecting and correcting for
  label shift with black box predictors", ICML): solve ``C w = mu`` with ``C[i, j] = P(yhat = i, y = j)`` on
  the calibration rows and ``mu[i]`` the share of target rows predicted ``i``;
- :func:`adjust_probs`: the prior-corrected probabilities ``p'(y | x) ∝ w(y) p(y | x)`` (Saerens et al. 2002).

numpy only at module level (an algorithm package); scipy is not needed.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np

from calib import _chunks as chunking
from calib._validation import (
    as_array,
    check_choice,
    check_fraction,
    check_labels,
    check_positive_int,
    check_probs,
)
from calib.base import ConvergenceWarning
from calib.shift.reference import check_reference

__all__ = [
    "MAX_CONDITION",
    "METHODS",
    "MIN_TARGET_ROWS",
    "LabelShiftEstimate",
    "adjust_probs",
    "estimate_label_shift",
]

#: the estimators :func:`estimate_label_shift` knows
METHODS = ("em", "bbse")
#: fewer target rows than this are refused (a clear error naming n): with under 20 rows a 10-class prior is
#: guesswork, and a bootstrap over < 20 rows gives intervals that understate it. Above it the intervals widen
#: as n falls (see ``notes``: below 100 rows the estimate says its interval is wide)
MIN_TARGET_ROWS = 20
#: BBSE refuses (or falls back, ``on_singular="em"``) when the confusion matrix's 2-norm condition number
#: exceeds this: the solve would amplify sampling noise in ``mu`` by up to this factor
MAX_CONDITION = 1e6
#: EM replicates of the bootstrap stop at this tolerance (or ``tol`` if larger): the intervals are percentiles of
#: replicates whose spread is ~1e-2 or more, so a precision of 1e-6 per replicate moves them by nothing visible
BOOTSTRAP_TOL = 1e-6
#: bootstrap replicates are processed in blocks of at most this many (rows x replicates) entries
_BOOT_ENTRIES = 1 << 22


@dataclass(frozen=True, eq=False)
class LabelShiftEstimate:
    """What :func:`estimate_label_shift` returns (arrays are float64 of shape (k,)).

    ``source_prior``: class frequencies of the calibration labels. ``target_prior``: the estimate of the target
    prior ``q``. ``weights = target_prior / source_prior`` (pass them to :func:`adjust_probs` or to a
    label-shift-weighted conformal predictor). ``prior_low`` / ``prior_high`` and ``weights_low`` /
    ``weights_high``: per-class percentile-bootstrap intervals at ``confidence`` (NaN with ``n_bootstrap=0``).
    ``converged`` / ``n_iter``: EM's stopping state (BBSE: True / 0). ``condition_number``: 2-norm condition
    number of BBSE's confusion matrix (NaN for EM). ``notes``: plain-language warnings (an ill-conditioned
    matrix, clipped weights, dropped bootstrap replicates, no convergence).
    """

    method: str
    source_prior: np.ndarray
    target_prior: np.ndarray
    weights: np.ndarray
    prior_low: np.ndarray
    prior_high: np.ndarray
    weights_low: np.ndarray
    weights_high: np.ndarray
    confidence: float
    n_bootstrap: int
    n_calibration: int
    n_target: int
    converged: bool
    n_iter: int
    condition_number: float
    notes: tuple = ()

    @property
    def n_classes(self) -> int:
        return int(self.target_prior.shape[0])

    def total_variation(self, prior) -> float:
        """``0.5 * sum |target_prior - prior|``: the distance of the estimate to another prior."""
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != self.target_prior.shape:
            raise ValueError(f"Expected prior of shape {self.target_prior.shape}, got shape {prior.shape}.")
        return float(0.5 * np.abs(self.target_prior - prior).sum())


def _check_real(value, name, *, positive=True):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} as a real number, got {type(value).__name__} {value!r}.")
    v = float(value)
    if not np.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"Expected {name} as a finite number > 0, got {value!r}.")
    return v


def _check_seed(seed):
    if seed is None or isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"Expected seed as an integer >= 0, got {type(seed).__name__} {seed!r}.")
    return int(seed)


def _check_target(target_probs, k, against):
    t = as_array(target_probs, "target_probs")
    if t.ndim == 2 and t.shape[1] != k:
        raise ValueError(f"Expected target_probs with {k} classes (as {against}), got {t.shape[1]} columns "
                         f"(shape {t.shape}).")
    pt, pred_t = check_probs(t, "target_probs", n_classes=k, return_argmax=True)
    if pt.shape[0] < MIN_TARGET_ROWS:
        raise ValueError(f"Expected target_probs with at least {MIN_TARGET_ROWS} rows to estimate a {k}-class "
                         f"target prior, got n_target={pt.shape[0]}; collect more unlabeled target rows.")
    return pt, pred_t


def _check_counts(counts, where):
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ValueError(f"Expected every class in {where} (the source prior divides the weights), got "
                         f"{missing.size} of {counts.size} classes with no calibration row: {missing[:10].tolist()}.")


def _validate(cal_probs, cal_labels, target_probs):
    pc, pred_c = check_probs(cal_probs, "cal_probs", return_argmax=True)
    n_c, k = pc.shape
    y = check_labels(cal_labels, "cal_labels", n_samples=n_c, n_classes=k, rows_of="cal_probs")
    pt, pred_t = _check_target(target_probs, k, "cal_probs")
    counts = np.bincount(y, minlength=k)
    _check_counts(counts, "cal_labels")
    return pc, pred_c, y, pt, pred_t, counts


# ---------------------------------------------------------------- EM (Saerens et al. 2002)

def _em_step(p, source, pi, counts, total):
    """One EM step for B problems: ``r = pi / source``; ``new[b, y] = r[b, y] sum_i c[b, i] p[i, y] / (p[i] . r[b])
    / n``, which is ``mean_i p'(y | x_i)`` with ``p' ∝ r * p``."""
    r = pi / source  # (B, k)
    d = p @ r.T  # (n, B): normaliser of each row's corrected probabilities
    # a row whose mass sits only on classes of prior 0 (a class absent from a one-hot resample) has d = 0
    # and count 0: floor d so that 0 / d = 0 instead of NaN (it then adds 0 * p = 0 to every class)
    np.maximum(d, np.finfo(np.float64).tiny, out=d)
    g = np.divide(1.0 if counts is None else counts, d, out=d)  # c_i / normaliser, in place
    new = r * (p.T @ g).T / total
    new /= new.sum(axis=1, keepdims=True)  # exact in exact arithmetic; removes rounding drift
    return new


def _em(p, source, start, counts=None, *, tol, max_iter):
    """EM for B problems at once. ``p`` (n, k) target probabilities; ``source`` (B, k) source priors; ``start``
    (B, k); ``counts`` (n, B) row multiplicities (bootstrap, C-contiguous) or None (every row once, B = 1).

    Plain EM converges linearly, slowly when classes overlap (thousands of steps at k = 100), so the steps are
    accelerated by SQUAREM (Varadhan & Roland 2008, scheme S3): from ``pi``, two EM steps ``f1 = F(pi)``, ``f2 =
    F(f1)``, the extrapolation ``x = pi - 2 a r + a^2 v`` (``r = f1 - pi``, ``v = f2 - 2 f1 + pi``, ``a = -|r| /
    |v|``, at most -1; ``a = -1`` gives ``x = f2``) and one EM step from ``x``; a problem whose ``x`` leaves the
    simplex's interior takes ``f2`` (two plain steps) instead. Every returned value is an EM image ``F(.)``.
    Stops when every problem's EM step changes it by at most ``tol`` (max over classes), returning that step.
    Returns (pi (B, k), n_iter = EM steps evaluated, converged (B,) bool)."""
    pi = np.array(start, dtype=np.float64)
    total = float(p.shape[0]) if counts is None else counts.sum(axis=0, dtype=np.float64)[:, None]
    done = np.zeros(pi.shape[0], dtype=bool)
    steps = 0
    while steps < max_iter:
        f1 = _em_step(p, source, pi, counts, total)
        steps += 1
        r = f1 - pi
        done = np.abs(r).max(axis=1) <= tol
        pi = f1
        if done.all():
            break
        if steps + 2 > max_iter:  # no room for a full cycle: plain steps to the limit
            continue
        f2 = _em_step(p, source, f1, counts, total)
        v = f2 - f1 - r
        rn, vn = np.sqrt((r * r).sum(axis=1)), np.sqrt((v * v).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.where(vn > 0, -rn / vn, -1.0)
        a = np.minimum(a, -1.0)[:, None]
        x = (pi - r) - 2.0 * a * r + a * a * v  # pi - r: the start of this cycle
        bad = ~(np.isfinite(x).all(axis=1) & (x > 0).all(axis=1))
        x[bad] = f2[bad]
        x /= x.sum(axis=1, keepdims=True)
        pi = _em_step(p, source, x, counts, total)
        steps += 2
    return pi, steps, done


def _em_point(pt, source, *, tol, max_iter):
    pt64 = np.asarray(pt, dtype=np.float64)
    pi, n_iter, done = _em(pt64, source[None], source[None], tol=tol, max_iter=max_iter)
    return pi[0], n_iter, bool(done[0])


# ---------------------------------------------------------------- BBSE (Lipton et al. 2018)

def _soft_confusion(pc, y, k):
    """C[i, j] = E[p_i(x) 1{y = j}] on the calibration rows (the hard C[i, j] = P(yhat = i, y = j) is the
    confusion counts / n)."""
    c = np.empty((k, k))
    for j in range(k):  # a loop over classes, not rows
        c[:, j] = pc[y == j].sum(axis=0, dtype=np.float64)
    return c / pc.shape[0]


def _bbse_solve(c, mu, source):
    """Weights from C w = mu (batched over a leading axis), negative weights clipped at 0 and the prior
    renormalised. Returns (prior, weights, clipped (…, k) bool)."""
    w = np.linalg.solve(c, mu[..., None])[..., 0]
    clipped = w < 0
    w = np.maximum(w, 0.0)
    q = w * source
    s = q.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = q / s
    return q, q / source, clipped


def _conditioning(c):
    cond = float(np.linalg.cond(c))
    rank = int(np.linalg.matrix_rank(c))
    return cond, rank


# ---------------------------------------------------------------- bootstrap

def _row_counts(rng, n, b):
    """(n, b) multiplicities of b bootstrap resamples of n rows (column j: how often each row is drawn)."""
    idx = rng.integers(0, n, size=(b, n)) * b
    idx += np.arange(b)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(n, b).astype(np.float64)


def _bootstrap(method, pc, y, pt, pred_t, counts, cells, k, *, n_bootstrap, seed, soft, tol, max_iter, start):
    """Prior and weight replicates (B, k) from resampling calibration and target rows independently (with
    replacement, the same sizes). Hard-prediction quantities are drawn from the equivalent multinomials of
    the cell counts; row-level quantities from row multiplicities. Returns (priors, weights, n_dropped,
    n_unconverged)."""
    rng = np.random.default_rng([seed, 15, 1])  # its own stream: the point estimate draws nothing
    n_c, n_t = int(counts.sum()), pt.shape[0]
    priors = np.full((n_bootstrap, k), np.nan)
    dropped = unconverged = 0
    if method == "em":
        source_b = rng.multinomial(n_c, counts / n_c, size=n_bootstrap) / n_c  # label frequencies of a cal resample
        p64 = np.asarray(pt, dtype=np.float64)
        ok = (source_b > 0).all(axis=1)  # a resample missing a class has no weight for it
        dropped = int((~ok).sum())
        block = max(1, _BOOT_ENTRIES // n_t)
        for s in range(0, n_bootstrap, block):
            e = min(s + block, n_bootstrap)
            cnt = _row_counts(rng, n_t, e - s)
            src = np.where(ok[s:e, None], source_b[s:e], 1.0 / k)
            pi, _, done = _em(p64, src, np.broadcast_to(start, src.shape), cnt, tol=tol, max_iter=max_iter)
            unconverged += int((~done & ok[s:e]).sum())
            priors[s:e] = np.where(ok[s:e, None], pi, np.nan)
    else:
        by_class = [np.flatnonzero(y == j) for j in range(k)] if soft else None
        pc64 = np.asarray(pc, dtype=np.float64) if soft else None
        pt64 = np.asarray(pt, dtype=np.float64) if soft else None
        cells = cells / n_c
        shares = np.bincount(pred_t, minlength=k) / n_t
        source_b = np.empty((n_bootstrap, k))
        ok = np.zeros(n_bootstrap, dtype=bool)
        # blocks of replicates: b (k, k) matrices and, for soft, b columns of row multiplicities at a time
        block = max(1, _BOOT_ENTRIES // max(k * k, n_c, n_t) if soft else _BOOT_ENTRIES // (k * k))
        for s in range(0, n_bootstrap, block):
            e = min(s + block, n_bootstrap)
            if soft:
                cc = _row_counts(rng, n_c, e - s)
                c_b = np.empty((e - s, k, k))
                for j in range(k):  # a loop over classes, not rows
                    c_b[:, :, j] = cc[by_class[j]].T @ pc64[by_class[j]]
                c_b /= n_c
                mu_b = _row_counts(rng, n_t, e - s).T @ pt64 / n_t
            else:  # cell counts of a row resample are multinomial: the same law, drawn directly
                c_b = rng.multinomial(n_c, cells, size=e - s).reshape(e - s, k, k) / n_c
                mu_b = rng.multinomial(n_t, shares, size=e - s) / n_t
            source_b[s:e] = c_b.sum(axis=1)
            cond = np.linalg.cond(c_b)  # O(k^3) per replicate
            good = np.isfinite(cond) & (cond <= MAX_CONDITION) & (source_b[s:e] > 0).all(axis=1)
            ok[s:e] = good
            if good.any():
                q, _, _ = _bbse_solve(c_b[good], mu_b[good], source_b[s:e][good])
                priors[s:e][good] = q
        dropped = int((~ok).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = priors / source_b
    return priors, weights, dropped, unconverged


# ---------------------------------------------------------------- public

def estimate_label_shift(cal_probs=None, cal_labels=None, target_probs=None, *, reference=None, method="em",
                         confidence=0.95, seed=0, n_bootstrap=200, soft=False, tol=1e-10, max_iter=10_000,
                         on_singular="raise"):
    """Estimate the target class prior under label shift, with importance weights and a bootstrap interval.

    Parameters
    ----------
    cal_probs, cal_labels : (n, k) calibrated probabilities and labels of the calibration (source) rows. The
        source prior is the class frequencies of ``cal_labels``; every class must occur.
    target_probs : (m, k) probabilities of the same calibrated model on unlabeled target rows,
        ``m >= MIN_TARGET_ROWS`` (20): fewer is refused with an error naming ``n_target``.
    reference : a fitted :class:`calib.shift.ReferenceStats` (e.g. ``FittedPipeline.load(...).reference``) in
        place of ``cal_probs`` / ``cal_labels``: its class counts are the source prior and its confusion matrix
        (top label of the calibrated probabilities) is BBSE's; the estimate and its bootstrap are then exactly
        those from the calibration arrays (same seed, same numbers). ``soft=True`` needs the arrays.
    method : ``"em"`` (Saerens et al. 2002) or ``"bbse"`` (Lipton et al. 2018).

        - EM iterates ``pi <- mean_i p'(y | x_i)`` with ``p'(y | x) ∝ (pi(y) / source(y)) p(y | x)`` from
          ``pi = source`` until the largest change of ``pi`` is ``<= tol`` (or ``max_iter`` steps: then
          ``converged=False``, a note and a :class:`calib.base.ConvergenceWarning`). It is the maximum-likelihood
          prior when ``cal_probs``/``target_probs`` are calibrated for the source; miscalibration biases it.
        - BBSE builds ``C[i, j] = P(yhat = i, y = j)`` on the calibration rows (``yhat`` = argmax; with
          ``soft=True`` the expected confusion ``E[p_i(x) 1{y=j}]``), ``mu[i]`` the share of target rows
          predicted ``i`` (soft: mean target probabilities), and solves ``C w = mu``. It needs only a
          confusion matrix that is invertible, not calibration. ``condition_number`` is reported; when ``C``
          is rank-deficient (e.g. a class never predicted on the calibration rows) or its condition number
          exceeds ``MAX_CONDITION`` (1e6), ``on_singular="raise"`` (default) raises a ``ValueError`` saying
          why, ``on_singular="em"`` falls back to EM and says so in ``notes`` (``method`` then reads
          ``"em"``). Negative weights are clipped at 0 and the prior renormalised (named in ``notes``).
    confidence : level of the per-class intervals (default 0.95).
    n_bootstrap : replicates of the bootstrap (default 200; 0 skips it and the intervals are NaN). Each
        replicate resamples the calibration rows and the target rows independently with replacement (same
        sizes) and recomputes the whole estimate (source prior, confusion matrix, target statistics, EM from
        the point estimate); the intervals are the per-class ``(1 -/+ confidence) / 2`` percentiles of the
        replicates, for the prior and for the weights. They measure sampling noise only, not the bias of a
        violated assumption (a model miscalibrated on the target, ``q(x | y) != p(x | y)``). BBSE replicates
        whose confusion matrix is ill-conditioned are dropped (counted in ``notes``). Seeded by ``seed``.
    soft : BBSE only: soft confusion matrix and target mean probabilities instead of argmax counts.
    tol, max_iter : EM stopping rule (largest absolute change of the prior per step; step limit).
    on_singular : ``"raise"`` or ``"em"``, see ``method``.

    Returns
    -------
    LabelShiftEstimate

    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet([0.3, 0.3, 0.3], size=3000)
    >>> y = (rng.random(3000)[:, None] > p.cumsum(axis=1)).sum(axis=1)  # labels drawn from p: calibrated
    >>> target = p[np.isin(y, [0, 0, 1]) | (rng.random(3000) < 0.2)]  # fewer class-2 rows
    >>> est = estimate_label_shift(p, y, target, n_bootstrap=0)
    >>> est.converged, bool(est.target_prior[2] < est.source_prior[2])
    (True, True)
    """
    method = check_choice(method, "method", METHODS)
    on_singular = check_choice(on_singular, "on_singular", ("raise", "em"))
    confidence = check_fraction(confidence, "confidence")
    n_bootstrap = check_positive_int(n_bootstrap, "n_bootstrap", minimum=0)
    seed = _check_seed(seed)
    tol = _check_real(tol, "tol")
    max_iter = check_positive_int(max_iter, "max_iter")
    if not isinstance(soft, bool):
        raise TypeError(f"Expected soft as a bool, got {type(soft).__name__} {soft!r}.")
    if target_probs is None:
        raise TypeError("Expected target_probs (the unlabeled target rows' calibrated probabilities), got None.")
    ref = check_reference(reference, {"cal_probs": cal_probs, "cal_labels": cal_labels})
    if ref is None:
        pc, pred_c, y, pt, pred_t, counts = _validate(cal_probs, cal_labels, target_probs)
        n_c, k = pc.shape
        cells = np.bincount(pred_c * k + y, minlength=k * k)
    else:
        if soft:
            raise ValueError("Expected soft=False with reference=: the soft confusion matrix needs the calibration "
                             "probabilities, which the reference does not store (its confusion matrix is hard).")
        k, n_c = ref.n_classes_, ref.n_calibration_
        pt, pred_t = _check_target(target_probs, k, "the reference")
        counts = ref.class_counts_
        _check_counts(counts, "the reference's class counts")
        cells = ref.confusion_.ravel()
        pc = pred_c = y = None
    n_t = pt.shape[0]
    source = counts / n_c
    notes = []
    cond = float("nan")
    converged, n_iter = True, 0

    if method == "bbse":
        c = _soft_confusion(pc, y, k) if soft else cells.reshape(k, k) / n_c
        cond, rank = _conditioning(c)
        never = np.flatnonzero(c.sum(axis=1) == 0)
        if rank < k or not np.isfinite(cond) or cond > MAX_CONDITION:
            why = (f"BBSE's {'soft ' if soft else ''}confusion matrix is {'rank-deficient' if rank < k else 'ill-conditioned'} "
                   f"(rank {rank} of {k}, condition number {cond:.3g} > {MAX_CONDITION:.0e})")
            if never.size:
                why += f"; classes never predicted on the calibration rows: {never[:10].tolist()}"
            if on_singular == "raise":
                raise ValueError(f"Cannot solve C w = mu: {why}. Pass method='em', soft=True, or "
                                 "on_singular='em' to fall back to EM.")
            notes.append(f"{why}; fell back to EM (on_singular='em').")
            method = "em"
        else:
            mu = (np.bincount(pred_t, minlength=k) / n_t if not soft
                  else pt.sum(axis=0, dtype=np.float64) / n_t)
            prior, _, clipped = _bbse_solve(c, mu, source)
            if clipped.any():
                raw = np.linalg.solve(c, mu)
                notes.append(f"BBSE gave negative weights for classes {np.flatnonzero(clipped).tolist()} "
                             f"(w = {np.round(raw[clipped], 4).tolist()}); clipped to 0 and the prior renormalised.")
            if cond > 1e3:
                notes.append(f"BBSE's confusion matrix has condition number {cond:.3g}: sampling noise in the target "
                             "prediction shares is amplified up to that factor (see the interval widths).")
    if method == "em":
        prior, n_iter, converged = _em_point(pt, source, tol=tol, max_iter=max_iter)
        if not converged:
            msg = (f"EM did not converge in max_iter={max_iter} steps (tol={tol:g}); the prior is the last iterate.")
            notes.append(msg)
            warnings.warn(msg, ConvergenceWarning, stacklevel=2)

    weights = prior / source
    nan = np.full(k, np.nan)
    lo_p = hi_p = lo_w = hi_w = nan
    if n_bootstrap:
        boot_p, boot_w, dropped, unconv = _bootstrap(
            method, pc, y, pt, pred_t, counts, cells, k, n_bootstrap=n_bootstrap, seed=seed, soft=soft,
            tol=max(tol, BOOTSTRAP_TOL), max_iter=max_iter, start=prior)
        kept = n_bootstrap - dropped
        if dropped:
            notes.append(f"{dropped} of {n_bootstrap} bootstrap replicates dropped ("
                         + ("a resample missing a class" if method == "em" else
                            "ill-conditioned confusion matrix or a class missing") + ").")
        if unconv:
            notes.append(f"{unconv} of {n_bootstrap} bootstrap EM replicates did not converge in {max_iter} steps.")
        if kept >= max(10, n_bootstrap // 2):
            tail = (1.0 - confidence) / 2.0
            lo_p, hi_p = np.nanquantile(boot_p, [tail, 1.0 - tail], axis=0)
            lo_w, hi_w = np.nanquantile(boot_w, [tail, 1.0 - tail], axis=0)
        else:
            notes.append(f"only {kept} of {n_bootstrap} bootstrap replicates usable: no interval (NaN).")
    if n_t < 100:
        notes.append(f"only n_target={n_t} target rows: the prior is estimated with a wide interval.")
    return LabelShiftEstimate(
        method=method, source_prior=source, target_prior=prior, weights=weights,
        prior_low=np.asarray(lo_p, dtype=np.float64), prior_high=np.asarray(hi_p, dtype=np.float64),
        weights_low=np.asarray(lo_w, dtype=np.float64), weights_high=np.asarray(hi_w, dtype=np.float64),
        confidence=confidence, n_bootstrap=n_bootstrap, n_calibration=int(n_c), n_target=int(n_t),
        converged=bool(converged), n_iter=int(n_iter), condition_number=cond, notes=tuple(notes))


def adjust_probs(probs, weights):
    """Prior-corrected probabilities ``p'(y | x) = w(y) p(y | x) / sum_c w(c) p(c | x)`` (Saerens et al. 2002).

    ``weights``: (k,) finite, >= 0, not all 0 (e.g. ``estimate_label_shift(...).weights``, or the estimate
    itself). The dtype of ``probs`` is kept (float32 stays float32); row sums are accumulated in float64. A row
    whose probability sits only on classes of weight 0 has no corrected probabilities (0/0): a ``ValueError``
    naming the rows.

    >>> adjust_probs(np.array([[0.2, 0.3, 0.5]]), np.array([2.0, 1.0, 0.5])).round(4).tolist()
    [[0.4211, 0.3158, 0.2632]]
    """
    if isinstance(weights, LabelShiftEstimate):
        weights = weights.weights
    p = check_probs(probs, "probs")
    n, k = p.shape
    w = as_array(weights, "weights")
    if w.dtype.kind not in "fiu" or w.dtype.kind == "b":
        raise TypeError(f"Expected weights as real numbers, got dtype {w.dtype}.")
    if w.shape != (k,):
        raise ValueError(f"Expected weights of shape ({k},) (one per column of probs), got shape {w.shape}.")
    w = w.astype(np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"Expected weights finite and >= 0, got {w.tolist()}.")
    if not (w > 0).any():
        raise ValueError("Expected weights with at least one entry > 0, got all zeros.")
    out = np.empty_like(p)
    for sl in chunking.row_slices(n, k, nbytes=chunking.CACHE, itemsize=8, minimum=16):
        block = p[sl] * w  # float64
        s = block.sum(axis=1, keepdims=True)
        zero = s[:, 0] <= 0
        if zero.any():
            rows = np.flatnonzero(zero) + sl.start
            raise ValueError(f"Expected each row of probs to put some probability on a class with weight > 0, got "
                             f"rows {rows[:5].tolist()} with all their probability on weight-0 classes "
                             f"{np.flatnonzero(w == 0).tolist()}: their corrected probabilities are undefined (0/0).")
        out[sl] = block / s
    return out
