"""Conformal risk control (Angelopoulos, Bates, Fisch, Lei & Schuster, 2022, "Conformal risk control").

Sets ``C_lam(x) = {j : s(x, j) <= lam}`` grow with ``lam``, so any loss that only shrinks when a set grows
is non-increasing in ``lam``. With losses bounded by ``B`` the rule

    lam_hat = inf { lam : n / (n + 1) * R_n(lam) + B / (n + 1) <= alpha }

gives ``E[L_{n+1}(lam_hat)] <= alpha``. Losses here (both monotone, ``B = 1``):

- ``"fnr"``: false-negative rate ``1 - |Y ∩ C| / |Y|`` for multi-label targets ``Y`` (bool (n, k)); rows
  with an empty ``Y`` have loss 0. With one label per row it is the miscoverage ``1{y not in C}``.
- ``"miscoverage"``: ``1{y not in C}`` for integer labels; then ``lam_hat`` equals the split-conformal
  ``qhat`` (tested), which is the check that this implementation is exact.

Set-size penalties are not monotone in ``lam`` and so are not offered.
"""

from __future__ import annotations

import numbers

import numpy as np

from calib._validation import as_array, check_choice, check_fraction, check_labels, check_positive_int, check_probs
from calib.conformal.quantile import _check_n, _check_scores, _rank
from calib.conformal.split import ConformalBase, _check_inf_pattern, _check_monotone, check_row_offset

__all__ = ["ConformalRiskControl", "risk_control_threshold"]


def risk_control_threshold(pair_scores, pair_weights, n, alpha, *, n_positive=None, bound=1.0):
    """``lam_hat`` for a loss ``1 - sum_{pairs of row i, s <= lam} w`` averaged over n rows.

    Parameters
    ----------
    pair_scores, pair_weights : ndarray of shape (m,)
        Score and weight of every (row, positive label) pair; the weights of one row sum to 1.
    n : int
        Calibration rows. ``n_positive`` rows (default n) have at least one positive label.

    Returns
    -------
    float (``-inf`` if empty sets already control the risk, ``inf`` if nothing does)

    >>> risk_control_threshold(np.arange(1.0, 20.0), np.ones(19), 19, 0.1)
    18.0
    """
    scores = _check_scores(pair_scores, "pair_scores")
    weights = as_array(pair_weights, "pair_weights")
    if weights.dtype.kind not in "biuf":
        raise TypeError(f"Expected pair_weights as real numbers, got dtype {weights.dtype}.")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != scores.shape:
        raise ValueError(f"Expected pair_weights of length {scores.size} (one per pair score), got shape "
                         f"{weights.shape}.")
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError("Expected pair_weights finite and >= 0, got negative or non-finite entries.")
    n = check_positive_int(n, "n")
    n_pos = n if n_positive is None else _check_n(n_positive, "n_positive")
    if n_pos > n:
        raise ValueError(f"Expected n_positive <= n={n}, got {n_pos}.")
    if abs(weights.sum() - n_pos) > 1e-6 * max(1, n_pos):  # the weights of each positive row sum to 1
        raise ValueError(f"Expected pair_weights summing to n_positive={n_pos} (each row's weights sum to 1), got a "
                         f"sum of {weights.sum():.6g}.")
    alpha = check_fraction(alpha, "alpha")
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not (0 < bound < np.inf):
        raise ValueError(f"Expected bound as a finite number > 0 (the largest loss), got {bound!r}.")
    pair_scores = scores
    order = np.argsort(pair_scores, kind="stable")
    w = np.cumsum(weights[order])
    need = n_pos + bound - alpha * (n + 1)
    if need <= 0:
        return -np.inf
    t = int(np.searchsorted(w, need - 1e-9, side="left"))
    if t >= w.size:
        return np.inf
    return float(pair_scores[order][t])


class ConformalRiskControl(ConformalBase):
    """Conformal risk control of a monotone set loss (Angelopoulos et al., 2022).

    Parameters
    ----------
    loss : {"fnr", "miscoverage"}, default="fnr"
    alpha : float or list of float
        Target risk level(s) in (0, 1).
    allow_infinite : bool, default=False
        If no threshold controls the risk (n too small): False raises ValueError, True gives
        all-classes sets.
    score, randomized, never_empty, k_reg, lam, weight, seed, fresh_draws : as
        :class:`calib.conformal.SplitConformal` (``never_empty`` keeps the guarantee: both losses only
        shrink when a set grows).

    Attributes
    ----------
    qhat_ : float or ndarray (n_alphas,)
        ``lam_hat``, the threshold on the score.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet(np.ones(4), size=100); y = rng.random((100, 4)) < p
    >>> ConformalRiskControl(alpha=0.2).fit(p, y).predict_set(p).shape
    (100, 4)
    """

    kind = "conformal_risk_control"  # artifacts of calib <= 0.1 say "risk_control" (still loaded)

    def __init__(self, *, loss="fnr", score="lac", alpha=0.1, randomized=None, never_empty=None, k_reg=1, lam=0.01,
                 weight=0.2, seed=0, fresh_draws=True, allow_infinite=False):
        super().__init__(score=score, alpha=alpha, randomized=randomized, never_empty=never_empty, k_reg=k_reg,
                         lam=lam, weight=weight, seed=seed, fresh_draws=fresh_draws, allow_infinite=allow_infinite)
        self.loss = check_choice(loss, "loss", ("fnr", "miscoverage"))

    def fit(self, probs, labels, groups=None):
        """Fit ``qhat_`` on probs (n, k) and labels: ints (n,) or, for ``loss="fnr"``, bool (n, k)."""
        p = check_probs(probs, "probs")
        n, k = p.shape
        lab = as_array(labels, "labels")
        self._reset()
        if lab.ndim == 2 and lab.shape[1] > 1:
            if self.loss != "fnr":
                raise ValueError(f"Expected integer labels of shape ({n},) for loss='miscoverage', got {lab.shape}.")
            if lab.shape != (n, k) or lab.dtype != bool:
                raise ValueError(f"Expected multi-label targets as a bool array of shape ({n}, {k}), "
                                 f"got {lab.dtype} {lab.shape}.")
            key = self._draw_key(p, lab)
            u = self._u(n, 0, key)
            s = self._score.matrix(p, u)
            rows, cols = np.nonzero(lab)
            counts = lab.sum(axis=1)
            pair_s, pair_w, n_pos = s[rows, cols], 1.0 / counts[rows], int((counts > 0).sum())
        else:
            y = check_labels(lab, "labels", n_samples=n, n_classes=k)
            key = self._draw_key(p, y)
            u = self._u(n, 0, key)
            pair_s, pair_w, n_pos = self._score.label_scores(p, y, u), np.ones(n), n
        q = np.array([risk_control_threshold(pair_s, pair_w, n, a, n_positive=n_pos) for a in self.alphas])
        if np.isposinf(q).any() and not self.allow_infinite:
            raise ValueError(
                f"Expected enough calibration rows to control the risk at alpha={min(self.alphas):g} "
                f"(need B/(n+1) <= alpha), got n={n}; add data, raise alpha or pass allow_infinite=True."
            )
        self.thresholds_ = q
        self.score_ = self._score
        self.draw_key_ = key
        self.n_calibration_ = int(n)
        self.n_classes_ = int(k)
        self._warn_set_sizes(self._set_size_rates(p, u, q))
        return self

    def _allows_neg_inf(self):
        return self.loss == "fnr"  # empty sets already control the FNR when few rows have a positive label

    def _check_thresholds(self, t):
        """``lam_hat`` is non-increasing in alpha; for the miscoverage loss it is the split-conformal
        quantile, so +inf exactly when n is too small for alpha."""
        if self.loss == "miscoverage":
            n = self.n_calibration_
            _check_inf_pattern(type(self), np.isposinf(t), np.array([_rank(n, a) > n for a in self.alphas]), n)
        _check_monotone(type(self), t, self.alphas)

    def predict_set(self, probs, groups=None, *, row_offset=0):
        """Boolean sets (n, k) (or (n, k, n_alphas)): ``s(x, j) <= qhat_`` (``row_offset``: as
        :meth:`SplitConformal.predict_set`)."""
        row_offset = check_row_offset(row_offset)
        return self._finish(self._sets(self._check_predict_probs(probs), self.thresholds_, row_offset))
