"""Label-shift-weighted split conformal prediction (Podkopaev & Ramdas, 2021).

Podkopaev, A. & Ramdas, A. (2021), "Distribution-free uncertainty quantification for classification under label
shift", UAI. Under label shift the class-conditional law ``p(x | y)`` is the same at calibration and at serving,
only the class prior moves from ``p(y)`` to ``q(y)``. With the importance weights ``w(y) = q(y) / p(y)`` the
calibration rows are reweighted towards the target: for a candidate label ``y`` of a test point the threshold is
the ``1 - alpha`` quantile of the weighted distribution

    sum_i w(y_i) delta_{s_i} + w(y) delta_{+inf},   normalised by  sum_i w(y_i) + w(y),

(the test point's own, unknown score placed at ``+inf`` with its label's weight), so there is one threshold per
class (and alpha), and ``y`` enters the set iff ``s(x, y) <= qhat_[y]``. With the true weights the sets cover
with probability ``>= 1 - alpha`` under the target distribution (Podkopaev & Ramdas, Theorem 1; the weighted
exchangeability of Tibshirani et al., 2019). With all weights equal it is plain split conformal, bit for bit.

The quantile is exact: the calibration scores sorted, their weights accumulated in that order, and ``qhat`` the
smallest score whose cumulative weight reaches ``(1 - alpha) (W + w(y))`` (``W`` the total calibration weight),
with the same ``1e-9`` round-off guard as :func:`calib.conformal.quantile.conformal_rank` (scaled by the mean
weight of a row); ``+inf`` when even all calibration rows do not reach it (the ``+inf`` mass ``w(y) / (W + w(y))``
exceeds ``alpha``: too few calibration rows carry weight for that class).

Weights (``fit(..., weights=)``): a ``(k,)`` array of finite numbers ``>= 0``, not all zero; only ratios matter
(the procedure is invariant to a common scale). ``None`` (or all weights equal): no shift, plain split conformal.
**A class with weight 0** is taken at its word: the target has none of it (``q(y) = 0``). Its calibration rows
carry no mass, and its own threshold puts no mass at ``+inf``, so it is the weighted quantile of the other
classes' scores: the class may still enter sets, but no coverage is promised for items of it (there are none if
the weight is right). An estimated weight that is exactly 0 (BBSE clips negative estimates to 0) therefore drops
the coverage promise for that class; floor the weights (e.g. at the lower end of their confidence interval, or a
small positive number) if the class may still occur. At least one calibration row must carry positive weight.
"""

from __future__ import annotations

import numpy as np

from calib._validation import as_array
from calib.base import StateError, state_array
from calib.conformal.split import (
    ConformalBase,
    _check_monotone,
    _set_size_step,
    check_row_offset,
)

__all__ = ["LabelShiftConformal", "check_weights", "weighted_conformal_thresholds"]

#: the round-off guard of :func:`calib.conformal.quantile.conformal_rank` (``ceil((n+1)(1-alpha) - 1e-9)``),
#: here in units of the mean weight of a row, so that equal weights give exactly the plain conformal rank
ROUND_OFF_GUARD = 1e-9


def check_weights(weights, n_classes, name="weights"):
    """Importance weights ``w(y) = q(y) / p(y)`` as float64 (k,): finite, ``>= 0``, not all zero; ``None`` gives
    ones (no shift).

    >>> check_weights([1, 2.5, 0], 3).tolist()
    [1.0, 2.5, 0.0]
    """
    if weights is None:
        return np.ones(n_classes)
    w = as_array(weights, name)
    if w.dtype.kind not in "biuf" or w.dtype.kind == "b":
        raise TypeError(f"Expected {name} as real numbers (importance weights q(y)/p(y), one per class), got dtype "
                        f"{w.dtype}.")
    if w.shape != (n_classes,):
        raise ValueError(f"Expected {name} of shape ({n_classes},) (one importance weight per class of probs), got "
                         f"shape {w.shape}.")
    w = np.asarray(w, dtype=np.float64)
    bad = ~np.isfinite(w)
    if bad.any():
        raise ValueError(f"Expected {name} finite, got {int(bad.sum())} non-finite entries (classes "
                         f"{np.flatnonzero(bad)[:10].tolist()}).")
    if (w < 0).any():
        raise ValueError(f"Expected {name} >= 0 (a weight is a ratio of priors), got negative entries for classes "
                         f"{np.flatnonzero(w < 0)[:10].tolist()} (e.g. {float(w[w < 0][0])!r}).")
    if not (w > 0).any():
        raise ValueError(f"Expected {name} with at least one positive entry (a target prior puts mass somewhere), "
                         "got all zeros.")
    return w


def weighted_conformal_thresholds(scores, row_weights, label_weights, alphas):
    """Thresholds ``(len(label_weights), len(alphas))`` of the weighted distribution
    ``sum_i row_weights[i] delta_{scores[i]} + label_weights[y] delta_{+inf}`` (normalised) at level ``1 - alpha``:
    the smallest score whose cumulative normalised weight reaches ``1 - alpha``, ``+inf`` if none does.

    Rows of weight 0 carry no mass (they are dropped). Equal weights give the plain conformal quantile exactly
    (the ``ceil((n+1)(1-alpha))``-th smallest score). One sort of the scores serves every class and alpha: only
    the ``+inf`` mass depends on the candidate label.

    >>> weighted_conformal_thresholds(np.arange(1.0, 20.0), np.ones(19), np.array([1.0, 10.0]), [0.1]).ravel().tolist()
    [18.0, inf]
    """
    s = np.asarray(scores, dtype=np.float64)
    rw = np.asarray(row_weights, dtype=np.float64)
    lw = np.asarray(label_weights, dtype=np.float64)
    alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    keep = rw > 0
    s, rw = s[keep], rw[keep]
    out = np.full((lw.size, alphas.size), np.inf)
    if s.size == 0:
        return out
    # normalise by the largest weight: only ratios matter, and equal weights become exactly 1.0, so the
    # cumulative sums below are exact integers and the rule is conformal_rank's, bit for bit
    scale = max(float(rw.max()), float(lw.max()))
    rw, lw = rw / scale, lw / scale
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    cum = np.cumsum(rw[order])  # float64, sequential: cum[-1] is the total calibration weight W
    total = cum[-1] + lw  # (k,) W + w(y)
    guard = ROUND_OFF_GUARD * total / (s.size + 1)  # 1e-9 of the mean weight of a row (1e-9 for equal weights)
    level = total[:, None] * (1.0 - alphas[None, :]) - guard[:, None]  # (k, m)
    idx = np.searchsorted(cum, level, side="left")  # first i with cum[i] >= level
    ok = idx < s.size
    out[ok] = s_sorted[idx[ok]]
    return out


class LabelShiftConformal(ConformalBase):
    """Split conformal classifier weighted for label shift (Podkopaev & Ramdas, 2021): one threshold per class.

    Parameters
    ----------
    score, alpha, randomized, never_empty, k_reg, lam, weight, seed, fresh_draws :
        As :class:`calib.conformal.SplitConformal` (any score of :mod:`calib.conformal.scores`; randomised and
        never-empty by default for the rank scores; ``never_empty`` keeps the guarantee: sets only grow).
    allow_infinite : bool, default=False
        When a class's ``+inf`` mass ``w(y) / (W + w(y))`` exceeds alpha (too little calibration weight for that
        class's upweighting; with equal weights: n too small for alpha), False raises ValueError at fit naming the
        classes, True gives that class the threshold ``+inf`` (it enters every set: valid, uninformative).

    ``fit(probs, labels, groups=None, *, weights=None)``: ``weights`` the ``(k,)`` importance weights
    ``q(y) / p(y)`` (e.g. ``estimate_label_shift(...).weights``; module docstring for 0 and None); ``groups`` is
    ignored (the signature of every conformal predictor).

    Attributes
    ----------
    qhat_ : ndarray of shape (n_classes,) or (n_classes, n_alphas)
        The threshold of each candidate label.
    weights_ : ndarray of shape (n_classes,)
        The weights of the fit, as given (ones for None).
    class_counts_ : ndarray of shape (n_classes,)
        Calibration rows per class.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet(np.full(3, 0.3), size=300); y = (p.cumsum(1) > rng.random((300, 1))).argmax(1)
    >>> cp = LabelShiftConformal(alpha=0.2).fit(p, y, weights=[0.5, 1.0, 2.0])
    >>> cp.qhat_.shape, cp.predict_set(p).shape
    ((3,), (300, 3))
    """

    kind = "label_shift_conformal"

    def __init__(self, *, score="lac", alpha=0.1, randomized=None, never_empty=None, k_reg=1, lam=0.01, weight=0.2,
                 seed=0, fresh_draws=True, allow_infinite=False):
        super().__init__(score=score, alpha=alpha, randomized=randomized, never_empty=never_empty, k_reg=k_reg,
                         lam=lam, weight=weight, seed=seed, fresh_draws=fresh_draws, allow_infinite=allow_infinite)

    def _reset(self):
        super()._reset()
        for attr in ("weights_", "class_counts_"):
            self.__dict__.pop(attr, None)

    def fit(self, probs, labels, groups=None, *, weights=None):
        """Per-class weighted thresholds from calibration probs (n, k), labels (n,) and weights (k,)."""
        p, y = self._check_fit_inputs(probs, labels)
        n, k = p.shape
        w = check_weights(weights, k)
        counts = np.bincount(y, minlength=k).astype(np.int64)
        if not (w[y] > 0).any():
            raise ValueError(f"Expected weights positive for at least one class with calibration rows (classes "
                             f"{np.flatnonzero(counts).tolist()[:10]}), got weight 0 for all of them: no calibration "
                             "row would carry any mass.")
        self._reset()
        key = self._draw_key(p, y)
        u = self._u(n, 0, key)
        s = self._score.label_scores(p, y, u)
        t = weighted_conformal_thresholds(s, w[y], w, list(self.alphas))
        inf = np.isposinf(t)
        if inf.any() and not self.allow_infinite:
            cls, j = np.nonzero(inf)
            a = self.alphas[int(j[0])]
            raise ValueError(
                f"Expected enough calibration weight for every class at alpha={a:g}, got classes "
                f"{np.unique(cls).tolist()[:10]} whose +inf mass w(y) / (W + w(y)) exceeds alpha (weights "
                f"{w[np.unique(cls)][:10].round(4).tolist()}, total calibration weight W="
                f"{float(w[y].sum()):.4g} over n={n} rows): lower the coverage target, add calibration data, check the "
                "weights, or pass allow_infinite=True (those classes then enter every set).")
        self.thresholds_ = t
        self.weights_ = w
        self.class_counts_ = counts
        self.score_ = self._score
        self.draw_key_ = key
        self.n_calibration_ = int(n)
        self.n_classes_ = int(k)
        step = _set_size_step(n)
        sets = self._raw_sets(p[::step], None if u is None else u[::step])
        self._warn_set_sizes([(a, float((~sets[:, :, j].any(axis=1)).mean()), float(sets[:, :, j].all(axis=1).mean()))
                              for j, a in enumerate(self.alphas)])
        return self

    def _raw_sets(self, p, u):
        """Sets (n, k, m) before ``never_empty``. When every class has the same threshold (equal weights) the
        score's shared-threshold route is taken: exactly the sets of :class:`SplitConformal`."""
        t = self.thresholds_
        if (t == t[:1]).all():
            return self.scorer.sets(p, u, t[0])
        return self.scorer.class_sets(p, u, t)

    def predict_set(self, probs, groups=None, *, row_offset=0):
        """Boolean sets (n, k), or (n, k, n_alphas) for a list of alphas; ``groups`` is ignored; ``row_offset``: as
        :meth:`calib.conformal.SplitConformal.predict_set`."""
        row_offset = check_row_offset(row_offset)
        p = self._check_predict_probs(probs)
        return self._finish(self._fill_empty(p, self._raw_sets(p, self._u(p.shape[0], 1, offset=row_offset))))

    # --- state ------------------------------------------------------------------------------------
    def _get_state(self):
        state, arrays = super()._get_state()
        arrays.update(weights=self.weights_, class_counts=self.class_counts_)
        return state, arrays

    def _read_strata(self, state, arrays):
        owner, k = type(self), self.n_classes_
        w = state_array(arrays, "weights", shape=(k,), kind="f", minimum=0, owner=owner)
        counts = state_array(arrays, "class_counts", shape=(k,), kind="i", minimum=0, owner=owner)
        if int(counts.sum()) != self.n_calibration_:
            raise StateError(f"Expected state field 'class_counts' of {owner.__name__} summing to n_calibration="
                             f"{self.n_calibration_}, got a sum of {int(counts.sum())}.")
        if not (w[counts > 0] > 0).any():
            raise StateError(f"Expected state field 'weights' of {owner.__name__} positive for at least one class "
                             f"with calibration rows, got {w.tolist()} for class_counts {counts.tolist()}.")
        self.weights_, self.class_counts_ = w, counts

    def _threshold_shape(self):
        return (self.n_classes_, len(self.alphas))

    def _read_thresholds(self, state, arrays):
        return state_array(arrays, "thresholds", shape=self._threshold_shape(), kind="f", finite="allow_inf",
                           owner=type(self))

    def _check_thresholds(self, t):
        """What the weights and class counts fix without the scores: +inf exactly where the calibration weight
        cannot reach the level (the rule of :func:`weighted_conformal_thresholds`); per class, a smaller alpha
        never gets a smaller threshold; per alpha, a larger weight never gets a smaller threshold (a larger
        ``+inf`` mass raises the level)."""
        owner = type(self)
        w, counts = self.weights_, self.class_counts_
        scale = float(w.max())
        rw = w / scale
        big_w = float(np.sum(counts * rw))  # the rule's cum[-1] up to round-off; compared with a margin below
        n_pos = int(counts[w > 0].sum())
        total = big_w + rw
        level = total[:, None] * (1.0 - np.asarray(self.alphas))[None, :] - ROUND_OFF_GUARD * total[:, None] / (n_pos + 1)
        margin = 1e-12 * max(big_w, 1.0)
        want_inf = level > big_w + margin
        want_finite = level < big_w - margin  # in between: round-off decides, either is accepted
        is_inf = np.isposinf(t)
        bad = (is_inf & want_finite) | (~is_inf & want_inf)
        if bad.any():
            c, j = np.unravel_index(int(np.flatnonzero(bad)[0]), t.shape)
            want = "inf (too little calibration weight for it)" if want_inf[c, j] else "finite"
            raise StateError(f"Expected state field 'thresholds' of {owner.__name__} at (class, alpha) index ({c}, {j}) "
                             f"{want} for weights {w.round(6).tolist()} and class_counts {counts.tolist()}, got "
                             f"{'inf' if is_inf[c, j] else 'a finite value'}.")
        _check_monotone(owner, t, self.alphas)
        order = np.argsort(w, kind="stable")
        ts = t[order]
        with np.errstate(invalid="ignore"):
            dec = ts[1:] < ts[:-1]
        if dec.any() and w.size > 1:
            raise StateError(f"Expected state field 'thresholds' of {owner.__name__} non-decreasing in the class weight "
                             f"(a larger weight puts more mass at +inf), got thresholds {t.tolist()} for weights "
                             f"{w.tolist()}.")

    def _repr_params(self):
        return {"score": self.score_name, "alpha": self.alpha}

