"""Metrics of prediction sets: coverage, sizes, conditional coverage, and the exact coverage tests.

``sets`` is a bool array (n, k) (0/1 integers are accepted; floats are refused, a score is not a set);
``labels`` int (n,) in [0, k). Every function validates its arguments and names the one that is wrong.

A coverage below ``1 - alpha`` is reported as a number (``min_class_coverage``, ``class_coverage_gap``) and
judged only by a test (:mod:`calib.stats`; docs/statistics.md): H0 "coverage >= 1 - alpha", one-sided exact
p-value of the covered count, Holm-adjusted across classes or groups, flagged at ``level`` (0.05). The law of
the count is the one the predictor promises:

- ``"beta_binomial"``: sets valid for the stratum (or marginally) by construction, fitted on ``n`` calibration
  rows of it: the covered count of ``m`` test rows is ``BetaBinomial(m, r, n + 1 - r)``, ``r = ceil((n + 1)
  (1 - alpha))`` (exact for tie-free scores, conservative with ties); H0 is the validity of the procedure.
  For Mondrian sets the marginal count is the convolution of the strata's laws (``"beta_binomial_convolution"``).
- ``"binomial"``: nothing promised for the stratum (e.g. a class under marginal split conformal): the
  count is ``Binomial(m, c)`` given the fitted sets, H0 is ``c >= 1 - alpha`` for the fitted predictor.
"""

from __future__ import annotations

import numpy as np

from calib._validation import as_array, check_binary, check_choice, check_fraction, check_group_ids, check_labels

__all__ = ["coverage", "set_sizes", "mean_set_size", "median_set_size", "size_histogram", "empty_rate",
           "singleton_rate", "size_stratified_coverage", "class_conditional_coverage", "class_coverage_summary",
           "group_coverage", "set_metrics", "check_sets", "check_groups", "class_coverage_test",
           "group_coverage_test", "marginal_coverage_test", "stratum_coverage_pvalues", "class_coverage_pvalues",
           "LEVEL"]

#: family-wise level of the Holm-corrected coverage tests (and of the marginal test)
LEVEL = 0.05
#: rows of the smallest p-values kept in a test's JSON block (the flagged list and the counts are complete)
N_SMALLEST = 10


def check_sets(sets, name="sets"):
    """Prediction sets as a bool array (n, k), n >= 1, k >= 2; 0/1 integers are converted."""
    s = as_array(sets, name)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] < 2:
        raise ValueError(f"Expected {name} of shape (n_samples, n_classes) with n >= 1 and k >= 2, got shape "
                         f"{s.shape}.")
    return check_binary(s, name)


def _sets_labels(sets, labels):
    s = check_sets(sets)
    y = check_labels(labels, "labels", n_samples=s.shape[0], n_classes=s.shape[1])
    return s, y


def check_groups(groups, n, name="groups", length_of="sets"):
    """Group ids (n,): integers, strings, booleans or finite floats, never objects."""
    return check_group_ids(groups, n, name, length_of)


def _hits(sets, labels):
    s, y = _sets_labels(sets, labels)
    return s[np.arange(s.shape[0]), y]


def coverage(sets, labels):
    """Fraction of rows whose label is in the set.

    >>> coverage(np.array([[True, False], [True, True]]), np.array([1, 1]))
    0.5
    """
    return float(_hits(sets, labels).mean())


def set_sizes(sets):
    """Number of classes in each set, int64 (n,)."""
    return check_sets(sets).sum(axis=1, dtype=np.int64)


def mean_set_size(sets):
    """Mean number of classes per set.

    >>> mean_set_size(np.array([[True, False], [True, True]]))
    1.5
    """
    return float(set_sizes(sets).mean())


def median_set_size(sets):
    """Median number of classes per set.

    >>> median_set_size(np.array([[True, False], [True, True], [True, True]]))
    2.0
    """
    return float(np.median(set_sizes(sets)))


def size_histogram(sets):
    """Counts of set sizes 0..k, int64 (k + 1,).

    >>> size_histogram(np.array([[True, False], [True, True]])).tolist()
    [0, 1, 1]
    """
    s = check_sets(sets)
    return np.bincount(s.sum(axis=1, dtype=np.int64), minlength=s.shape[1] + 1)


def empty_rate(sets):
    """Fraction of empty sets.

    >>> empty_rate(np.array([[False, False], [True, True]]))
    0.5
    """
    return float((set_sizes(sets) == 0).mean())


def singleton_rate(sets):
    """Fraction of sets with exactly one class.

    >>> singleton_rate(np.array([[False, True], [True, True]]))
    0.5
    """
    return float((set_sizes(sets) == 1).mean())


def size_stratified_coverage(sets, labels):
    """``{size: (count, coverage)}`` over the set sizes that occur (Angelopoulos et al., 2021, SSCV).

    >>> size_stratified_coverage(np.array([[True, False], [True, True]]), np.array([1, 1]))
    {1: (1, 0.0), 2: (1, 1.0)}
    """
    s, y = _sets_labels(sets, labels)
    return _size_stratified(s, y)


def _size_stratified(s, y):
    size = s.sum(axis=1, dtype=np.int64)
    hit = s[np.arange(s.shape[0]), y]
    counts = np.bincount(size)
    covered = np.bincount(size, weights=hit)
    return {int(v): (int(counts[v]), float(covered[v] / counts[v])) for v in np.flatnonzero(counts)}


def class_conditional_coverage(sets, labels, n_classes=None):
    """Coverage among rows of each true class, float (k,); NaN for classes absent from ``labels``.

    ``n_classes``, when given, must equal the number of columns of ``sets``.

    >>> class_conditional_coverage(np.array([[True, False], [True, True]]), np.array([0, 1])).tolist()
    [1.0, 1.0]
    """
    s, y = _sets_labels(sets, labels)
    if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer))
                                  or n_classes != s.shape[1]):
        raise ValueError(f"Expected n_classes equal to the {s.shape[1]} columns of sets (or None), got {n_classes!r}.")
    return _class_coverage(s, y)


def _class_coverage(s, y):
    k = s.shape[1]
    counts = np.bincount(y, minlength=k).astype(np.float64)
    covered = np.bincount(y, weights=s[np.arange(s.shape[0]), y], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, covered / np.maximum(counts, 1), np.nan)


def class_coverage_summary(sets, labels, alpha):
    """``{"min", "gap", "per_class"}``: the worst class coverage, its shortfall ``max(0, 1 - alpha - min)``
    (a number, not a verdict: see :func:`class_coverage_test`) and the coverage of each class.

    >>> class_coverage_summary(np.array([[True, False], [False, True]]), np.array([0, 0]), 0.1)["gap"]
    0.4
    """
    s, y = _sets_labels(sets, labels)
    return _class_summary(s, y, check_fraction(alpha, "alpha"))


def _class_summary(s, y, alpha):
    cc = _class_coverage(s, y)
    present = ~np.isnan(cc)
    mn = float(np.min(cc[present]))
    return {"min": mn, "gap": max(0.0, 1.0 - alpha - mn),
            "per_class": [None if np.isnan(c) else float(c) for c in cc]}


# --- exact coverage tests ------------------------------------------------------------------------------------------
def _check_sizes(sizes, n_strata, name):
    a = as_array(sizes, name)
    if a.shape != (n_strata,) or a.dtype.kind not in "iu" or (a.size and a.min() < 0):
        got = (f"minimum {a.min()}" if a.shape == (n_strata,) and a.dtype.kind in "iu"
               else f"{a.dtype} of shape {a.shape}")
        raise ValueError(f"Expected {name} as {n_strata} integers >= 0 (calibration rows per stratum), got {got}.")
    return a.astype(np.int64)


def _ranks(n_cal, alpha):
    from calib.conformal.quantile import conformal_rank

    return np.array([conformal_rank(int(n), alpha) for n in n_cal], dtype=np.int64)  # one per stratum


def stratum_coverage_pvalues(hits, strata, n_strata, alpha, calibration_sizes=None):
    """Per stratum: test rows ``m``, covered rows ``k`` and the p-value of H0 "coverage >= 1 - alpha".

    ``hits`` bool (n,) (label in set), ``strata`` int (n,) in ``[0, n_strata)``. With ``calibration_sizes``
    (n_strata,) the sets are valid per stratum by construction and a stratum with ``r <= n_s`` gets the exact
    law ``P(BetaBinomial(m, r, n_s + 1 - r) <= k)``; the others (no ``calibration_sizes``, or a stratum too
    small for alpha: full sets, or the pooled quantile) the binomial law given the fitted sets,
    ``P(Binomial(m, 1 - alpha) <= k)``. Absent strata (``m = 0``) get NaN. Returns ``(m, k, p, exact)``
    where ``exact`` marks the Beta-binomial strata.

    >>> m, k, p, exact = stratum_coverage_pvalues(np.array([True] * 8 + [False] * 2), np.zeros(10, int), 1, 0.1)
    >>> round(float(p[0]), 4)
    0.2639
    """
    from calib.stats import betabinom_less_pvalue, binom_less_pvalue

    alpha = check_fraction(alpha, "alpha")
    m = np.bincount(strata, minlength=n_strata).astype(np.int64)
    k = np.bincount(strata, weights=hits, minlength=n_strata).round().astype(np.int64)
    p = np.full(n_strata, np.nan)
    present = m > 0
    exact = np.zeros(n_strata, dtype=bool)
    if calibration_sizes is not None:
        n_cal = _check_sizes(calibration_sizes, n_strata, "calibration_sizes")
        r = _ranks(n_cal, alpha)
        exact = present & (r <= n_cal)
        if exact.any():
            p[exact] = betabinom_less_pvalue(k[exact], m[exact], r[exact], n_cal[exact] + 1 - r[exact])
    rest = present & ~exact
    if rest.any():
        p[rest] = binom_less_pvalue(k[rest], m[rest], 1.0 - alpha)
    return m, k, p, exact


_H0_STRATUM = "coverage of each {what} >= 1 - alpha"


def _stratum_test(m, k, p, exact, names, alpha, level, what):
    """The JSON block of a Holm-corrected family of per-stratum coverage tests."""
    from calib.stats import holm_adjust

    present = np.flatnonzero(m > 0)
    adj = np.full(p.shape, np.nan)
    if present.size:
        adj[present] = holm_adjust(p[present])
    order = present[np.argsort(p[present], kind="stable")]
    law = ("beta_binomial" if exact[present].all() else "binomial" if not exact.any()
           else "beta_binomial (binomial for strata too small for alpha)")
    return {
        "h0": _H0_STRATUM.format(what=what),
        "law": law,
        "correction": "holm",
        "level": level,
        "alpha": alpha,
        "n_tested": int(present.size),
        "n_p_below_level": int((p[present] <= level).sum()),
        "flagged": [names[j] for j in order if adj[j] <= level],
        "smallest_p": [{what: names[j], "n": int(m[j]), "covered": int(k[j]), "coverage": float(k[j] / m[j]),
                        "p_value": float(p[j]), "p_holm": float(adj[j])} for j in order[:N_SMALLEST]],
    }, adj


def _check_level(level):
    return check_fraction(level, "level")


def class_coverage_test(sets, labels, alpha, *, calibration_sizes=None, level=LEVEL):
    """Exact per-class tests of H0 "coverage of class c >= 1 - alpha", Holm-corrected over the classes
    present in ``labels``; ``flagged`` = classes with Holm-adjusted p <= ``level``.

    ``calibration_sizes`` (k,): calibration rows per class of class-conditional (Mondrian) sets, which are valid
    per class by construction (Beta-binomial law); None: the binomial law given the fitted sets. The JSON
    block: ``h0``, ``law``, ``correction``, ``level``, ``alpha``, ``n_tested``, ``n_p_below_level`` (unadjusted),
    ``flagged``, ``smallest_p`` (rows of the ``N_SMALLEST`` smallest p-values with the Holm-adjusted p).

    >>> sets = np.array([[True, False]] * 20 + [[False, True]] * 20)
    >>> class_coverage_test(sets, np.r_[np.zeros(20, int), np.zeros(10, int), np.ones(10, int)], 0.1)["flagged"]
    [0]
    """
    s, y = _sets_labels(sets, labels)
    return _class_test(s, y, check_fraction(alpha, "alpha"), calibration_sizes, _check_level(level))[0]


def class_coverage_pvalues(sets, labels, alpha, *, calibration_sizes=None):
    """``(p, p_holm)``: float (k,) arrays of the per-class p-values of :func:`class_coverage_test` and their
    Holm adjustment over the classes present (NaN for classes absent from ``labels``).

    >>> p, adj = class_coverage_pvalues(np.array([[True, False]] * 4), np.array([0, 0, 1, 1]), 0.1)
    >>> [round(float(v), 2) for v in p], [round(float(v), 2) for v in adj]
    ([1.0, 0.01], [1.0, 0.02])
    """
    s, y = _sets_labels(sets, labels)
    _, p, adj = _class_test(s, y, check_fraction(alpha, "alpha"), calibration_sizes, LEVEL)
    return p, adj


def _class_test(s, y, alpha, calibration_sizes, level):
    k = s.shape[1]
    m, c, p, exact = stratum_coverage_pvalues(s[np.arange(s.shape[0]), y], y, k, alpha, calibration_sizes)
    block, adj = _stratum_test(m, c, p, exact, list(range(k)), alpha, level, "class")
    return block, p, adj


def group_coverage_test(sets, labels, groups, alpha, *, calibration_sizes=None, level=LEVEL):
    """As :func:`class_coverage_test`, per group value (names as str); ``calibration_sizes`` is a dict
    ``{str(group): calibration rows}`` for group-conditional (Mondrian) sets, valid per group by construction.

    >>> sets = np.array([[True, False]] * 40)
    >>> group_coverage_test(sets, np.r_[np.zeros(30, int), np.ones(10, int)], np.arange(40) >= 30, 0.1)["flagged"]
    ['True']
    """
    s, y = _sets_labels(sets, labels)
    g = check_groups(groups, s.shape[0])
    return _group_test(s, y, g, check_fraction(alpha, "alpha"), calibration_sizes, _check_level(level))


def _group_test(s, y, g, alpha, calibration_sizes, level):
    values, inv = np.unique(g, return_inverse=True)
    names = [str(v) for v in values]
    sizes = None
    if calibration_sizes is not None:
        if not isinstance(calibration_sizes, dict):
            raise TypeError(f"Expected calibration_sizes as a dict {{group: calibration rows}}, got "
                            f"{type(calibration_sizes).__name__}.")
        missing = [v for v in names if v not in {str(key) for key in calibration_sizes}]
        if missing:
            raise ValueError(f"Expected calibration_sizes for every test group, got none for {missing[:5]}.")
        by_name = {str(key): n for key, n in calibration_sizes.items()}
        sizes = np.array([by_name[v] for v in names], dtype=np.int64)
    m, c, p, exact = stratum_coverage_pvalues(s[np.arange(s.shape[0]), y], inv, len(names), alpha, sizes)
    return _stratum_test(m, c, p, exact, names, alpha, level, "group")[0]


def marginal_coverage_test(sets, labels, alpha, *, n_calibration=None, strata=None, calibration_sizes=None,
                           level=LEVEL):
    """Exact test of H0 "coverage >= 1 - alpha" over all test rows: ``{"h0", "law", "n", "covered",
    "coverage", "p_value", "level", "rejected"}``.

    Law of the covered count: ``n_calibration`` (split conformal): ``BetaBinomial(m, r, n + 1 - r)``;
    ``strata`` (n,) ints with ``calibration_sizes`` per stratum (Mondrian sets): the convolution of the strata's
    Beta-binomial laws given the test rows per stratum (a stratum too small for alpha has full sets and
    counts all its rows); neither: ``Binomial(m, 1 - alpha)`` given the fitted sets.

    >>> sets = np.array([[True, False]] * 85 + [[False, True]] * 15)
    >>> round(marginal_coverage_test(sets, np.zeros(100, int), 0.1, n_calibration=99)["p_value"], 4)
    0.144
    """
    s, y = _sets_labels(sets, labels)
    alpha = check_fraction(alpha, "alpha")
    st = None
    if strata is not None:
        st = check_labels(strata, "strata", n_samples=s.shape[0], rows_of="sets")
        if calibration_sizes is None:
            raise ValueError("Expected calibration_sizes (calibration rows per stratum) with strata, got None.")
        calibration_sizes = _check_sizes(calibration_sizes, int(np.asarray(calibration_sizes).size),
                                         "calibration_sizes")
        if st.max() >= calibration_sizes.size:
            raise ValueError(f"Expected strata in [0, {calibration_sizes.size}) (one calibration size each), got "
                             f"{int(st.max())}.")
    return _marginal_test(s, y, alpha, n_calibration, st, calibration_sizes, _check_level(level))


def _marginal_test(s, y, alpha, n_calibration, strata, calibration_sizes, level):
    from calib.stats import betabinom_less_pvalue, binom_less_pvalue

    hits = s[np.arange(s.shape[0]), y]
    m, k = int(hits.size), int(hits.sum())
    out = {"h0": "coverage >= 1 - alpha", "alpha": alpha, "n": m, "covered": k, "coverage": k / m}
    if strata is not None:
        from calib.evaluation.conformal_audit import coverage_count_pmf

        m_s = np.bincount(strata, minlength=calibration_sizes.size)
        use = calibration_sizes > 0  # a stratum without calibration rows has full sets: all its rows count
        pmf = coverage_count_pmf(calibration_sizes[use], m_s[use], alpha)
        shift = int(m_s[~use].sum())
        p = float(min(1.0, pmf[:max(k - shift + 1, 0)].sum()))
        out.update(law="beta_binomial_convolution", n_calibration=int(calibration_sizes.sum()))
    elif n_calibration is not None:
        r = _ranks([n_calibration], alpha)[0]
        n_cal = int(n_calibration)
        # r > n: every class in every set, coverage 1
        p = 1.0 if r > n_cal else betabinom_less_pvalue(k, m, int(r), n_cal + 1 - int(r))
        out.update(law="beta_binomial", n_calibration=n_cal)
    else:
        p = binom_less_pvalue(k, m, 1.0 - alpha)
        out.update(law="binomial")
    out.update(p_value=float(p), level=level, rejected=bool(p <= level))
    return out


def group_coverage(sets, labels, groups):
    """``{group: (count, coverage)}`` for each group value (keys as str).

    >>> group_coverage(np.array([[True, False], [True, True]]), np.array([1, 1]), np.array(["a", "b"]))
    {'a': (1, 0.0), 'b': (1, 1.0)}
    """
    s, y = _sets_labels(sets, labels)
    return _group_coverage(s, y, check_groups(groups, s.shape[0]))


def _group_coverage(s, y, g):
    values, inv = np.unique(g, return_inverse=True)
    hit = s[np.arange(s.shape[0]), y]
    counts = np.bincount(inv)
    covered = np.bincount(inv, weights=hit)
    return {str(v): (int(c), float(h / c)) for v, c, h in zip(values, counts, covered)}


def set_metrics(sets, labels, alpha, groups=None, *, n_calibration=None, class_calibration_sizes=None,
                group_calibration_sizes=None, small_strata="full", level=LEVEL):
    """The metrics.json block of one alpha (JSON-able); every argument validated once.

    The keyword arguments say which law the coverage tests use (module docstring; the conformal stage derives
    them from the predictor, :func:`calib.evaluation.conformal.coverage_law_kwargs`): ``n_calibration`` for
    split conformal, ``class_calibration_sizes`` (k,) for class-conditional sets, ``group_calibration_sizes``
    ``{group: rows}`` for group-conditional sets; ``small_strata`` the Mondrian rule for strata too small for
    alpha (``"marginal"``: they use the pooled quantile, so the marginal count has no exact law and gets the
    binomial one). None of them: every test is binomial given the fitted sets.
    """
    s, y = _sets_labels(sets, labels)
    alpha = check_fraction(alpha, "alpha")
    level = _check_level(level)
    small_strata = check_choice(small_strata, "small_strata", ("full", "marginal", "error"))
    g = None if groups is None else check_groups(groups, s.shape[0])
    if group_calibration_sizes is not None and g is None:
        raise ValueError("Expected groups with group_calibration_sizes (group-conditional sets), got None.")
    if group_calibration_sizes is not None and not isinstance(group_calibration_sizes, dict):
        raise TypeError(f"Expected group_calibration_sizes as a dict {{group: calibration rows}}, got "
                        f"{type(group_calibration_sizes).__name__}.")
    size = s.sum(axis=1, dtype=np.int64)
    hist = np.bincount(size, minlength=s.shape[1] + 1)
    cls = _class_summary(s, y, alpha)
    class_test = _class_test(s, y, alpha, class_calibration_sizes, level)[0]
    strata, sizes = None, None
    if class_calibration_sizes is not None:
        strata, sizes = y, _check_sizes(class_calibration_sizes, s.shape[1], "class_calibration_sizes")
    elif group_calibration_sizes is not None:
        values, strata = np.unique(g, return_inverse=True)
        by_name = {str(key): n for key, n in group_calibration_sizes.items()}
        if any(str(v) not in by_name for v in values):
            strata = None  # _group_test below names the missing groups
        else:
            sizes = np.array([by_name[str(v)] for v in values], dtype=np.int64)
    if strata is not None and small_strata == "marginal" and (_ranks(sizes, alpha) > sizes).any():
        strata, n_calibration = None, None  # pooled quantile in some strata: no exact marginal law
    out = {
        "coverage": float(s[np.arange(s.shape[0]), y].mean()),
        "coverage_test": _marginal_test(s, y, alpha, n_calibration if strata is None else None, strata, sizes,
                                        level),
        "mean_set_size": float(size.mean()),
        "median_set_size": float(np.median(size)),
        "singleton_rate": float((size == 1).mean()),
        "empty_rate": float((size == 0).mean()),
        "size_histogram": hist.tolist(),
        "size_stratified_coverage": {str(k): {"count": c, "coverage": v}
                                     for k, (c, v) in _size_stratified(s, y).items()},
        "min_class_coverage": cls["min"],
        "class_coverage_gap": cls["gap"],
        "class_coverage_test": class_test,
        "class_coverage": cls["per_class"],
    }
    if g is not None:
        out["group_coverage"] = {k: {"count": c, "coverage": v} for k, (c, v) in _group_coverage(s, y, g).items()}
        out["group_coverage_test"] = _group_test(s, y, g, alpha, group_calibration_sizes, level)
    return out
