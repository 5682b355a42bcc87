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

import numpy as np

from calib._validation import check_choice, check_labels, check_probs
from calib.conformal.split import ConformalBase

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
    n_pos = n if n_positive is None else n_positive
    order = np.argsort(pair_scores, kind="stable")
    w = np.cumsum(np.asarray(pair_weights, dtype=np.float64)[order])
    need = n_pos + bound - alpha * (n + 1)
    if need <= 0:
        return -np.inf
    t = int(np.searchsorted(w, need - 1e-9, side="left"))
    if t >= w.size:
        return np.inf
    return float(np.asarray(pair_scores, dtype=np.float64)[order][t])


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
    score, randomized, k_reg, lam, weight, seed : as :class:`calib.conformal.SplitConformal`.

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

    def __init__(self, *, loss="fnr", score="lac", alpha=0.1, randomized=False, k_reg=1, lam=0.01,
                 weight=0.2, seed=0, allow_infinite=False):
        super().__init__(score=score, alpha=alpha, randomized=randomized, k_reg=k_reg, lam=lam, weight=weight,
                         seed=seed, allow_infinite=allow_infinite)
        self.loss = check_choice(loss, "loss", ("fnr", "miscoverage"))

    def fit(self, probs, labels, groups=None):
        """Fit ``qhat_`` on probs (n, k) and labels: ints (n,) or, for ``loss="fnr"``, bool (n, k)."""
        p = check_probs(probs, "probs")
        n, k = p.shape
        lab = np.asarray(labels)
        self._reset()
        u = self._u(n, 0)
        if lab.ndim == 2 and lab.shape[1] > 1:
            if self.loss != "fnr":
                raise ValueError(f"Expected integer labels of shape ({n},) for loss='miscoverage', got {lab.shape}.")
            if lab.shape != (n, k) or lab.dtype != bool:
                raise ValueError(f"Expected multi-label targets as a bool array of shape ({n}, {k}), "
                                 f"got {lab.dtype} {lab.shape}.")
            s = self._score.matrix(p, u)
            rows, cols = np.nonzero(lab)
            counts = lab.sum(axis=1)
            pair_s, pair_w, n_pos = s[rows, cols], 1.0 / counts[rows], int((counts > 0).sum())
        else:
            y = check_labels(lab, "labels", n_samples=n, n_classes=k)
            pair_s, pair_w, n_pos = self._score.label_scores(p, y, u), np.ones(n), n
        q = np.array([risk_control_threshold(pair_s, pair_w, n, a, n_positive=n_pos) for a in self.alphas])
        if np.isposinf(q).any() and not self.allow_infinite:
            raise ValueError(
                f"Expected enough calibration rows to control the risk at alpha={min(self.alphas):g} "
                f"(need B/(n+1) <= alpha), got n={n}; add data, raise alpha or pass allow_infinite=True."
            )
        self.thresholds_ = q
        self.score_ = self._score
        self.n_calibration_ = int(n)
        self.n_classes_ = int(k)
        return self

    def predict_set(self, probs, groups=None):
        """Boolean sets (n, k) (or (n, k, n_alphas)): ``s(x, j) <= qhat_``."""
        return self._finish(self._sets(self._check_predict_probs(probs), self.thresholds_))
