"""Mondrian (stratified) conformal prediction: one conformal quantile per class or per group.

Vovk et al. (2005, ch. 4); Vovk (2012) "Conditional validity of inductive conformal predictors".
Class-conditional: ``qhat_[c]`` is the conformal quantile of the scores of the calibration rows with
label ``c``, and class ``c`` enters a set iff ``s(x, c) <= qhat_[c]``; then
``P(y in set | y = c) >= 1 - alpha`` for every class. Group-conditional: the rows of group ``g`` get
``qhat_[g]`` and ``P(y in set | group = g) >= 1 - alpha`` for every group.

Strata too small for alpha (``n_s < min_calibration_size(alpha)``), ``small_strata=``:

- ``"full"`` (default): the stratum gets ``qhat = inf`` (all classes): conservative but still valid;
- ``"marginal"``: the stratum uses the pooled (marginal) quantile; only marginal validity holds for it;
  a warning lists the strata;
- ``"error"``: ``ValueError`` at fit.
"""

from __future__ import annotations

import warnings

import numpy as np

from calib._validation import check_choice, check_group_ids
from calib.base import StateError, state_array
from calib.conformal.quantile import _rank, conformal_quantile, conformal_rank
from calib.conformal.split import ConformalBase, _check_inf_pattern, _check_monotone, check_row_offset

__all__ = ["MondrianConformal", "check_groups"]


class MondrianConformal(ConformalBase):
    """Class- or group-conditional split conformal classifier with per-stratum quantiles.

    Parameters
    ----------
    condition : {"class", "group"}, default="class"
    small_strata : {"full", "marginal", "error"}, default="full"
        Rule for strata with too few calibration rows (module docstring).
    score, alpha, randomized, never_empty, k_reg, lam, weight, seed, fresh_draws :
        As :class:`calib.conformal.SplitConformal` (randomised and never-empty by default for the rank
        scores; ``never_empty`` keeps the per-stratum guarantee: sets only grow).

    Attributes
    ----------
    qhat_ : ndarray of shape (n_strata,) or (n_strata, n_alphas)
        Per-class (condition="class", n_strata = k) or per-group quantiles.
    groups_ : ndarray of shape (n_groups,)
        Sorted group values seen at fit (condition="group").
    stratum_sizes_ : ndarray of shape (n_strata,)
    small_strata_ : ndarray of int, indices of strata too small for alpha.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet(np.full(3, 0.3), size=300); y = (p.cumsum(1) > rng.random((300, 1))).argmax(1)
    >>> MondrianConformal(condition="class", alpha=0.2).fit(p, y).qhat_.shape
    (3,)
    """

    kind = "mondrian"

    def __init__(self, *, condition="class", small_strata="full", score="lac", alpha=0.1, randomized=None,
                 never_empty=None, k_reg=1, lam=0.01, weight=0.2, seed=0, fresh_draws=True):
        super().__init__(score=score, alpha=alpha, randomized=randomized, never_empty=never_empty, k_reg=k_reg,
                         lam=lam, weight=weight, seed=seed, fresh_draws=fresh_draws, allow_infinite=True)
        self.condition = check_choice(condition, "condition", ("class", "group"))
        self.small_strata = check_choice(small_strata, "small_strata", ("full", "marginal", "error"))


    def _strata(self, groups, n, *, fitting):
        g = check_groups(groups, n, "groups")
        if fitting:
            return g
        fitted = self.groups_
        if _group_kind(g) != _group_kind(fitted):
            raise TypeError(f"Expected groups of the kind seen at fit ({_group_kind(fitted)}, dtype {fitted.dtype}), "
                            f"got dtype {g.dtype}.")
        idx = np.searchsorted(fitted, g)
        idx = np.clip(idx, 0, len(fitted) - 1)
        unseen = fitted[idx] != g
        if unseen.any():
            bad = np.unique(g[unseen])
            raise ValueError(
                f"Expected groups seen at fit {fitted[:20].tolist()}, got {bad.size} unseen "
                f"group(s) {bad[:10].tolist()}; a group without calibration rows has no valid quantile."
            )
        return idx

    def fit(self, probs, labels, groups=None):
        """Per-stratum quantiles from calibration probs (n, k), labels (n,) and groups (n,) if needed."""
        p, y = self._check_fit_inputs(probs, labels)
        self._reset()
        self.__dict__.pop("groups_", None)
        n, k = p.shape
        if self.condition == "group":
            g = self._strata(groups, n, fitting=True)
            self.groups_, strata = np.unique(g, return_inverse=True)
            n_strata = self.groups_.size
        else:
            strata, n_strata = y, k
        key = self._draw_key(p, y)
        u = self._u(n, 0, key)
        s = self._score.label_scores(p, y, u)
        alphas = list(self.alphas)
        order = np.lexsort((s, strata))
        s_sorted = s[order]
        sizes = np.bincount(strata, minlength=n_strata)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        q = np.full((n_strata, len(alphas)), np.inf)
        small = np.zeros(n_strata, dtype=bool)
        for j, a in enumerate(alphas):
            ranks = np.array([conformal_rank(int(m), a) for m in sizes])
            ok = ranks <= sizes
            small |= ~ok
            q[ok, j] = s_sorted[starts[ok] + ranks[ok] - 1]
        if small.any():
            which = np.flatnonzero(small)
            label = self.groups_[which].tolist() if self.condition == "group" else which.tolist()
            if self.small_strata == "error":
                raise ValueError(
                    f"Expected every {self.condition} to have enough calibration rows for alpha={min(alphas):g}, "
                    f"got {which.size} too small (e.g. {label[:10]} with sizes {sizes[which][:10].tolist()}); "
                    "use small_strata='full' or 'marginal', or a larger alpha."
                )
            if self.small_strata == "marginal":
                pooled = conformal_quantile(s, alphas, allow_infinite=True)
                for j in range(len(alphas)):
                    bad = np.isinf(q[:, j])
                    q[bad, j] = pooled[j]
                warnings.warn(
                    f"{which.size} {self.condition} strata are too small for alpha (e.g. {label[:10]}); they use "
                    "the pooled quantile, so only marginal coverage holds for them.", UserWarning, stacklevel=2)
        self.small_strata_ = np.flatnonzero(small)
        self.stratum_sizes_ = sizes.astype(np.int64)
        self.thresholds_ = q
        self.score_ = self._score
        self.draw_key_ = key
        self.n_calibration_ = int(n)
        self.n_classes_ = int(k)
        sets = self._raw_sets(p, u, strata)
        self._warn_set_sizes([(a, float((~sets[:, :, j].any(axis=1)).mean()), float(sets[:, :, j].all(axis=1).mean()))
                              for j, a in enumerate(alphas)])
        return self

    def _raw_sets(self, p, u, strata):
        """Sets (n, k, m) before ``never_empty``: per-class thresholds, or the thresholds of each row's group
        (``strata``: group indices)."""
        if self.condition == "group":
            return self.scorer.sets(p, u, self.thresholds_[strata])
        return self.scorer.class_sets(p, u, self.thresholds_)

    def predict_set(self, probs, groups=None, *, row_offset=0):
        """Boolean sets (n, k), or (n, k, n_alphas) for a list of alphas (``row_offset``: as
        :meth:`SplitConformal.predict_set`)."""
        row_offset = check_row_offset(row_offset)
        p = self._check_predict_probs(probs)
        strata = self._strata(groups, p.shape[0], fitting=False) if self.condition == "group" else None
        return self._finish(self._fill_empty(p, self._raw_sets(p, self._u(p.shape[0], 1, offset=row_offset), strata)))

    def _get_state(self):
        state, arrays = super()._get_state()
        arrays.update(stratum_sizes=self.stratum_sizes_, small_strata=self.small_strata_.astype(np.int64))
        if self.condition == "group":
            arrays["groups"] = self.groups_
        return state, arrays

    # --- state: every per-stratum field checked against the others and the thresholds --------------------
    def _set_state(self, state, arrays):
        legacy = "thresholds" not in arrays and "qhat" in arrays  # schema-1 artifacts before the rename
        if legacy:
            arrays["thresholds"] = arrays.pop("qhat")
        self.__dict__["_legacy_qhat"] = legacy
        try:
            super()._set_state(state, arrays)
        finally:
            self.__dict__.pop("_legacy_qhat", None)

    def _read_strata(self, state, arrays):
        owner, k = type(self), self.n_classes_
        if self.condition == "group":
            if "groups" not in arrays:
                raise StateError(f"Expected state field 'groups' of {owner.__name__} (an array) to be present for "
                                 "condition='group', got a state without it.")
            self.groups_ = _state_groups(arrays.pop("groups"), owner)
            n_strata = self.groups_.size
        else:
            n_strata = k
        sizes = state_array(arrays, "stratum_sizes", shape=(n_strata,), kind="i",
                            minimum=1 if self.condition == "group" else 0, owner=owner)
        if int(sizes.sum()) != self.n_calibration_:
            raise StateError(f"Expected state field 'stratum_sizes' of {owner.__name__} summing to n_calibration="
                             f"{self.n_calibration_}, got a sum of {int(sizes.sum())}.")
        small = state_array(arrays, "small_strata", shape=(None,), kind="i", minimum=0, maximum=n_strata - 1,
                            increasing="strict", owner=owner)
        want = np.flatnonzero([_rank(int(m), min(self.alphas)) > m for m in sizes])
        if not np.array_equal(small, want):
            raise StateError(f"Expected state field 'small_strata' of {owner.__name__} equal to the strata too small "
                             f"for alpha={min(self.alphas):g} given stratum_sizes, {want.tolist()}, got "
                             f"{small.tolist()}.")
        if small.size and self.small_strata == "error":
            raise StateError(f"Expected state field 'small_strata' of {owner.__name__} empty with small_strata='error' "
                             f"(such a fit raises), got {small.tolist()}.")
        self.stratum_sizes_, self.small_strata_ = sizes, small

    def _threshold_shape(self):
        return (self.stratum_sizes_.size, len(self.alphas))

    def _read_thresholds(self, state, arrays):
        owner = type(self)
        shape = self._threshold_shape()
        q = arrays.get("thresholds")
        if self.__dict__.get("_legacy_qhat") and q is not None and np.ndim(q) == 1 and np.size(q) == np.prod(shape):
            arrays["thresholds"] = np.asarray(q).reshape(shape)  # schema-1 'qhat' of one alpha: (n_strata,)
        return state_array(arrays, "thresholds", shape=shape, kind="f", finite="allow_inf", owner=owner)

    def _check_thresholds(self, t):
        """Per cell (stratum, alpha): +inf exactly when the stratum is too small for that alpha ('full'); small
        cells share the pooled quantile of their alpha ('marginal'), +inf only when n itself is too small."""
        owner = type(self)
        sizes, alphas = self.stratum_sizes_, self.alphas
        small = np.array([[_rank(int(m), a) > m for a in alphas] for m in sizes], dtype=bool).reshape(t.shape)
        if self.small_strata != "marginal":
            _check_inf_pattern(owner, np.isposinf(t), small, self.n_calibration_, what="(stratum, alpha)")
            _check_monotone(owner, t, alphas)
            return
        n = self.n_calibration_
        pooled_inf = np.array([_rank(n, a) > n for a in alphas])
        want_inf = small & pooled_inf[None, :]
        _check_inf_pattern(owner, np.isposinf(t), want_inf, n, what="(stratum, alpha)")
        for j in range(t.shape[1]):
            cells = t[small[:, j], j]
            if cells.size > 1 and not (cells == cells[0]).all():
                raise StateError(f"Expected state field 'thresholds' of {owner.__name__} equal for every stratum too "
                                 f"small for alpha={alphas[j]:g} (they share the pooled quantile), got "
                                 f"{np.unique(cells).tolist()[:5]}.")
        _check_monotone(owner, t[~small.any(axis=1)], alphas)


def _group_kind(g):
    return {"U": "strings", "S": "bytes"}.get(g.dtype.kind, "numbers")


def check_groups(groups, n, name="groups"):
    """Group ids (n,): integers, strings, booleans or finite floats (NaN would form a group no later row can
    match), never objects."""
    if groups is None:
        raise ValueError(
            f"Expected {name} of shape (n_samples,) for condition='group', got None; the data file "
            "needs a 'groups' array (or use condition='class')."
        )
    try:
        return check_group_ids(groups, n, name, length_of="probs")
    except ValueError as err:
        if "NaN" not in str(err):
            raise
        raise ValueError(f"{err} A NaN group matches no row at predict time.") from None


def _state_groups(g, owner):
    g = np.asarray(g)
    who = owner.__name__
    if g.dtype == object or g.dtype.kind not in "biufUS":
        raise StateError(f"Expected state field 'groups' of {who} as integers or strings, got dtype {g.dtype}.")
    if g.ndim != 1 or g.size == 0:
        raise StateError(f"Expected state field 'groups' of {who} of shape (n_groups,) with n_groups >= 1, got shape "
                         f"{g.shape}.")
    if g.dtype.kind == "f" and not np.isfinite(g).all():
        raise StateError(f"Expected state field 'groups' of {who} finite, got NaN/inf entries.")
    if g.size > 1 and not (g[1:] > g[:-1]).all():  # predict_set finds a row's group by binary search
        raise StateError(f"Expected state field 'groups' of {who} strictly increasing (sorted, unique), got values "
                         "out of order or repeated.")
    return g
