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

from calib._validation import check_choice
from calib.conformal.quantile import conformal_quantile, conformal_rank
from calib.conformal.split import ConformalBase

__all__ = ["MondrianConformal"]


class MondrianConformal(ConformalBase):
    """Class- or group-conditional split conformal classifier with per-stratum quantiles.

    Parameters
    ----------
    condition : {"class", "group"}, default="class"
    small_strata : {"full", "marginal", "error"}, default="full"
        Rule for strata with too few calibration rows (module docstring).
    score, alpha, randomized, k_reg, lam, weight, seed :
        As :class:`calib.conformal.SplitConformal`.

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
    >>> p = rng.dirichlet(np.ones(3), size=300); y = rng.integers(0, 3, 300)
    >>> MondrianConformal(condition="class", alpha=0.2).fit(p, y).qhat_.shape
    (3,)
    """

    kind = "mondrian"

    def __init__(self, *, condition="class", small_strata="full", score="lac", alpha=0.1, randomized=False,
                 k_reg=1, lam=0.01, weight=0.2, seed=0):
        super().__init__(score=score, alpha=alpha, randomized=randomized, k_reg=k_reg, lam=lam, weight=weight,
                         seed=seed, allow_infinite=True)
        self.condition = check_choice(condition, "condition", ("class", "group"))
        self.small_strata = check_choice(small_strata, "small_strata", ("full", "marginal", "error"))


    def _strata(self, groups, n, *, fitting):
        if groups is None:
            raise ValueError(
                "Expected groups of shape (n_samples,) for condition='group', got None; the data file "
                "needs a 'groups' array (or use condition='class')."
            )
        g = np.asarray(groups)
        if g.shape != (n,):
            raise ValueError(f"Expected groups of shape ({n},), got {g.shape}.")
        if g.dtype == object:
            raise TypeError("Expected groups as integers or strings, got an object array.")
        if fitting:
            return g
        idx = np.searchsorted(self.groups_, g)
        idx = np.clip(idx, 0, len(self.groups_) - 1)
        unseen = self.groups_[idx] != g
        if unseen.any():
            bad = np.unique(g[unseen])
            raise ValueError(
                f"Expected groups seen at fit {self.groups_[:20].tolist()}, got {bad.size} unseen "
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
        s = self._score.label_scores(p, y, self._u(n, 0))
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
        self.n_calibration_ = int(n)
        self.n_classes_ = int(k)
        return self

    def predict_set(self, probs, groups=None):
        """Boolean sets (n, k), or (n, k, n_alphas) for a list of alphas."""
        p = self._check_predict_probs(probs)
        u = self._u(p.shape[0], 1)
        if self.condition == "group":
            out = self.scorer.sets(p, u, self.thresholds_[self._strata(groups, p.shape[0], fitting=False)])
        else:
            out = self.scorer.class_sets(p, u, self.thresholds_)
        return self._finish(out)

    def _get_state(self):
        state, arrays = super()._get_state()
        arrays.update(stratum_sizes=self.stratum_sizes_, small_strata=self.small_strata_.astype(np.int64))
        if self.condition == "group":
            arrays["groups"] = self.groups_
        return state, arrays

    def _set_state(self, state, arrays):
        if "thresholds" not in arrays and "qhat" in arrays:  # schema-1 artifacts before the rename
            q = np.asarray(arrays.pop("qhat"), dtype=np.float64)
            arrays["thresholds"] = q.reshape(len(arrays["stratum_sizes"]), -1)
        super()._set_state(state, arrays)
        self.stratum_sizes_ = np.asarray(arrays["stratum_sizes"])
        self.small_strata_ = np.asarray(arrays["small_strata"])
        if self.condition == "group":
            self.groups_ = np.asarray(arrays["groups"])
