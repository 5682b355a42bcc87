"""Routing thresholds re-chosen under label-shift importance weights.

Label shift: the class prior moves from ``p(y)`` (calibration) to ``q(y)`` (serving) while ``p(x | y)`` stays put,
so anything a threshold policy does to an item of class ``y`` (answer it, err on it) has the same class-conditional
law at serving. The target-population rate of any event is then the ``w(y_i)``-weighted calibration rate, with
``w(y) = q(y) / p(y)`` (Podkopaev & Ramdas 2021, "Distribution-free uncertainty quantification for classification
under label shift", UAI). :func:`reweight_policy` refits a :class:`~calib.policy.ThresholdPolicy` or
:class:`~calib.policy.RiskControlPolicy` with those weights and returns a plain, fitted ``ThresholdPolicy``
(it saves, loads and serves like any threshold policy) plus a :class:`WeightedThreshold` report.

Weights are read relative to the **calibration class frequencies** ``p^(y) = n_y / n``, as
:class:`~calib.shift.LabelShiftEstimate` defines them (``weights = target_prior / source_prior``): the target prior
the weights stand for is ``q(y) = w(y) n_y / sum_j w(y_j)``. Only ratios matter (every result below is invariant to
a common scale of the weights). A positive weight on a class with no calibration row is refused: nothing measures
the policy on that class.

**target_coverage** (``ThresholdPolicy``): the highest calibration confidence ``t`` whose weighted share answered,
``sum_{s_i >= t} w(y_i) / sum_i w(y_i)``, is ``>= target_coverage``. With unit weights it is the unweighted fit's
threshold exactly (``ThresholdPolicy`` takes the ``ceil(target_coverage n)``-th largest confidence). No guarantee.

**risk_control** (``RiskControlPolicy``): Learn then Test (Angelopoulos, Bates, Candès, Jordan & Lei 2021,
arXiv:2110.01052) under the weights. For a threshold ``lam`` let ``a_y = P(answered & wrong | y)`` and
``b_y = P(answered | y)`` (the same at calibration and serving). The target selective risk is
``R_q(lam) = sum_y q_y a_y / sum_y q_y b_y``, so ``R_q(lam) > r  <=>  sum_y q_y (a_y - r b_y) > 0``. Everything
below is conditional on the class counts ``n_y`` (given them, the rows of class ``y`` are iid draws of
``p(x | y)``), hence valid unconditionally too. With row weights ``c_i = w(y_i) / sum_j w(y_j) = q(y_i) / n_{y_i}``
and losses ``l_i = 1{answered & wrong} - r 1{answered}`` (in ``[-r, 1 - r]``, range 1),

    S(lam) = sum_i c_i l_i = sum_y q_y * (mean of l over the n_y calibration rows of class y),

a weighted sum of independent variables with ``E S = sum_y q_y (a_y - r b_y)`` (``> 0`` under H0). Three
level-``alpha`` tests of ``H0: R_q(lam) > r`` (``bound``); all are valid, they differ in power:

``bound="bernstein"`` (the default). Bernstein's inequality (one-sided: ``P(sum_i Y_i >= t) <= exp(-t^2 /
(2 (V + M t / 3)))`` for independent zero-mean ``Y_i <= M`` with ``sum_i Var Y_i <= V``; Boucheron, Lugosi &
Massart 2013, "Concentration inequalities", Thm 2.10 and Cor 2.11) with ``Y_i = E[c_i l_i] - c_i l_i <= c_i``,
``M = max_i c_i``, ``sum_i Var Y_i = sum_y q_y^2 Var(l | y) / n_y``. The variances are unknown: with one-sided
Clopper-Pearson upper bounds ``A_y >= a_y``, ``B_y >= b_y`` at level ``alpha / (4K)`` each (``K`` = number of
classes with ``q_y > 0``; Bonferroni over ``2K`` bounds, half the level), ``Var(l | y) <= E[l^2 | y] =
a_y (1 - 2r) + r^2 b_y <= s_y = min(min(A_y, B_y) (1 - 2r) + r^2 B_y, 1/4)`` (``a_y = 0`` in the worst case when
``r > 1/2``; 1/4: range 1), ``V^ = sum_y q_y^2 s_y / n_y``. Reject iff ``S <= -t(V^)``, ``t(V) = M L / 3 +
sqrt((M L / 3)^2 + 2 V L)``, ``L = log(2 / alpha)`` (:func:`bernstein_deviation` at level ``alpha / 2``). Under H0
``S <= -t(V^)`` means ``sum Y_i = E S - S > t(V^)``; when all variance bounds hold, ``t(V^) >= t(V)`` (``t``
grows with ``V``), so this has probability ``<= alpha / 2``; the bounds fail with probability ``<= alpha / 2``.
The errors are rare Bernoulli events, so ``Var(l | y)`` is far below Hoeffding's implicit 1/4 and the slack adds up
over the classes in quadrature. On ``bench/shift_policy.py`` (four c10lt models, r = 0.02, 0.05, 0.1, true
weights) it certifies 6 of 12 cases, Hoeffding 2, the per-class binomial test 1, and it is never more
conservative than Hoeffding there: hence the default. The escalation budget is tested with Hoeffding (below).

``bound="hoeffding"``. Hoeffding (1963, "Probability inequalities for sums of bounded random variables", JASA 58):
``P(S - E S <= -t) <= exp(-2 t^2 / sum_i c_i^2)``, so ``p(lam) = exp(-2 max(0, -S)^2 / sum_i c_i^2)`` (1 when
``S >= 0``) is a valid p-value (the report's ``risk_pvalue`` at the returned threshold). Ignores the variance.

``bound="per_class_binomial"``. Given ``n_y``, the counts ``e_y(lam) = #(answered & wrong, class y)`` and
``m_y(lam) = #(answered, class y)`` are ``Binomial(n_y, a_y)`` and ``Binomial(n_y, b_y)``. With one-sided
Clopper-Pearson bounds at level ``alpha / (2K)`` -- ``U_y`` an upper bound of ``a_y`` and ``L_y`` a lower bound of
``b_y`` -- reject iff ``sum_y q_y U_y <= r sum_y q_y L_y``. If H0 holds and all ``2K`` bounds hold, ``sum q U >=
sum q a > r sum q b >= r sum q L``: no rejection; so ``P(reject | H0) <= alpha``. It uses each class's variance,
but the slacks ``U_y - a_y`` (about ``z sqrt(a_y / n_y)`` each) add up *linearly* over the classes where a bound on
the whole of ``S`` adds them in quadrature (``sqrt(sum_y q_y^2 a_y / n_y)``): about ``sqrt(K)`` times more slack
for equal class sizes, on top of the Bonferroni split over ``2K`` bounds. It beats Hoeffding with two classes
(``tests/test_shift_adapt.py``'s two-class model) and loses to it with ten (c10lt); Bernstein beats both there.
The report's ``risk_upper_bound`` is ``sum q U / sum q L`` at the returned threshold (at the level its walk used):
the bound the test compared with ``r`` there.

Everything else is :func:`calib.policy.ltt_threshold`'s: the same grid (distinct calibration confidences, or
``grid_size`` quantiles), fixed-sequence testing from the most conservative threshold (each threshold's decision at
the sequence's level; stop at the first non-rejection), the same families (``multi_start``: 4 starts at level
delta / 4, Bonferroni; ``fixed_sequence``: one at delta), the least conservative rejected threshold returned.

Starts are label-free (given the class counts): the first grid threshold answering at least ``m_min`` rows, where
``m_min`` is the smallest number answered for which the test would reject on "typical" data with an error rate of
``r / 2`` among the answered (the rule of ``ltt_threshold``'s ``n_min``). Hoeffding: the most favourable weights
within the range ``[w_min, w_max]`` of the weight vector (answered rows at ``w_max``, the others at ``w_min``; by
Cauchy-Schwarz no other placement does better) give the exponent ``2 (r/2)^2 m^2 / (m + (n - m) rho^2)``,
``rho = w_min / w_max``; ``m_min`` is the smallest ``m`` reaching ``log(1 / level)`` (unit weights: ``m^2 / n``).
Per-class binomial and Bernstein: every class answered in the same share ``m / n`` (``m_y = m n_y / n``,
``e_y = (r / 2) m_y``, real-valued in the Beta quantiles, so ``S = -(m / n) r / 2``) and the rule above; ``m_min``
is found by bisection over ``m`` in ``1..n`` (the condition grows with ``m`` wherever we looked; the start is
label-free whatever it is, so the guarantee does not rest on that). All use the confidences, n, the class counts,
r, delta and the weights only, never which row has which label.

Escalation budget ``b``: ``E_q(lam) = sum_y q_y (1 - b_y)``, ``H0: E_q(lam) > b``, walked up from the lowest
threshold. Per-class binomial: reject iff ``sum_y q_y V_y <= b`` with ``V_y`` the Clopper-Pearson upper bound of
``1 - b_y`` at level ``level / K``; Hoeffding and Bernstein: Hoeffding with losses ``1{escalated} - b``
(escalation rates are not rare events: little variance to exploit). With both a risk target and a budget, each at
delta / 2 (Bonferroni), as ``ltt_threshold`` does.

What is guaranteed: ``P(R_q(threshold) > r) <= delta`` over the calibration draw **if the weights are the true**
``q / p^``; estimated weights carry their own error, which this does not cover. Choose ``bound`` before seeing the
labels (running all three and keeping the best is not covered). With unit weights (no shift) all three were more
conservative than ``RiskControlPolicy``'s pooled binomial test on every case of the bench, Bernstein least (each
report's ``notes`` measure the gap on the data at hand). Nothing certified: the returned policy escalates every
item (its fixed threshold lies above every possible confidence, see :func:`reweight_policy`).

numpy and the standard library at module level; scipy (the Beta quantiles) is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from calib._validation import check_choice, check_labels, check_probs
from calib.policy import RiskControlPolicy, RoutingPolicy, ThresholdPolicy
from calib.policy.guarantees import FAMILIES, binomial_upper_bound, ltt_grid, ltt_threshold
from calib.selective import _confidence_scores, confidence_domain
from calib.shift.conformal import check_weights
from calib.shift.label_shift import LabelShiftEstimate

__all__ = ["BOUNDS", "DEFAULT_BOUND", "METHODS", "WeightedThreshold", "bernstein_deviation", "hoeffding_pvalues",
           "per_class_risk_bounds", "reweight_policy", "weighted_risk_bernstein", "weighted_risk_pvalues"]

#: ``WeightedThreshold.method`` values
METHODS = ("weighted_ltt_hoeffding", "weighted_ltt_bernstein", "weighted_ltt_per_class_binomial", "weighted_quantile",
           "fixed")
#: tests of ``H0: R_q(lam) > r`` :func:`reweight_policy` offers (``bound=``; see the module docstring)
BOUNDS = ("bernstein", "hoeffding", "per_class_binomial")
#: the default: it certifies the most on the c10lt models of ``bench/shift_policy.py`` (6 of 12 (model, r) cases
#: with the true weights; Hoeffding 2, per-class binomial 1; see the module docstring)
DEFAULT_BOUND = "bernstein"
_METHOD_OF = {"per_class_binomial": "weighted_ltt_per_class_binomial", "hoeffding": "weighted_ltt_hoeffding",
              "bernstein": "weighted_ltt_bernstein"}
_BOUND_WORDS = {"per_class_binomial": "per-class Clopper-Pearson bounds, Bonferroni over the classes",
                "hoeffding": "weighted Hoeffding p-values",
                "bernstein": "a weighted Bernstein bound with per-class Clopper-Pearson variance bounds"}
#: policies :func:`reweight_policy` refits, and why the others are refused
REWEIGHTABLE = ("threshold", "risk_control")
_WHY_NOT = {
    "conformal_routing": "it routes on conformal prediction sets: reweight the conformal predictor instead "
                         "(calib.shift.LabelShiftConformal), the routing rule needs no change",
    "cost": "it routes each item on its own probabilities: prior-correct them instead (calib.shift.adjust_probs)",
}


@dataclasses.dataclass(frozen=True)
class WeightedThreshold:
    """What :func:`reweight_policy` did. ``threshold``: the returned policy's fixed threshold (above every possible
    confidence when nothing is certified for a risk target: every item escalated; below every one when a budget
    alone is not certified: every item answered). ``weighted_selective_risk`` / ``weighted_coverage``: point
    estimates under the target prior at that threshold (calibration rows weighted by ``w(y_i)``);
    ``original_threshold``: the unweighted policy's threshold (the fitted one's, or a fit on the same rows);
    ``effective_sample_size``: ``(sum_i w(y_i))^2 / sum_i w(y_i)^2``; ``risk_pvalue``: the Hoeffding p-value at
    the returned threshold (``bound="hoeffding"``; None otherwise, without a risk target or when nothing is
    certified); ``risk_upper_bound``: ``sum_y q_y U_y / sum_y q_y L_y`` at the returned threshold
    (``bound="per_class_binomial"``, the bound its test compared with the target risk there, at the level of the
    walk that certified it; None otherwise or when nothing is certified)."""

    threshold: float
    certified: bool | None
    method: str
    target_risk: float | None
    delta: float | None
    max_escalation: float | None
    target_coverage: float | None
    weighted_selective_risk: float | None
    weighted_coverage: float
    original_threshold: float
    effective_sample_size: float
    n_calibration: int
    n_tested: int
    risk_pvalue: float | None
    family: str | None
    statement: str
    notes: tuple = ()
    risk_upper_bound: float | None = None

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        return d


def hoeffding_pvalues(cum_loss, sum_sq):
    """``exp(-2 max(0, -S)^2 / sum_sq)`` elementwise (1 where ``S >= 0``): the Hoeffding p-value of
    ``H0: E S > 0`` for ``S`` a sum of independent terms of ranges ``c_i`` with ``sum_i c_i^2 = sum_sq``.

    >>> hoeffding_pvalues(np.array([-0.1, 0.0, 0.2]), 0.01).round(6).tolist()
    [0.135335, 1.0, 1.0]
    """
    s = np.minimum(np.asarray(cum_loss, dtype=np.float64), 0.0)
    return np.exp(-2.0 * s * s / float(sum_sq))


def _start_size(r, level, n, rho):
    """Smallest m in 1..n with 2 (r/2)^2 m^2 / (m + (n - m) rho^2) >= log(1 / level); n + 1 when none."""
    m = np.arange(1, n + 1, dtype=np.float64)
    expo = 2.0 * (r / 2.0) ** 2 * m * m / (m + (n - m) * rho * rho)
    ok = expo >= math.log(1.0 / level)
    return int(m[np.argmax(ok)]) if ok.any() else n + 1


def _sorted_weighted(conf, row_w, grid_size):
    """Shared by the risk and budget tests: rows sorted by decreasing confidence, ``c_i = w(y_i) / sum_j w(y_j)`` in
    that order, ``sum_i c_i^2``, the grid (descending, :func:`calib.policy.ltt_threshold`'s) and the number of rows
    answered at each grid threshold (``conf >= lam``, ascending along the grid)."""
    n = conf.size
    order = np.argsort(-conf, kind="stable")
    cs = conf[order]
    c = row_w[order] / row_w.sum()  # float64
    grid = ltt_grid(cs, grid_size)
    n_ans = n - np.searchsorted(cs[::-1], grid, side="left")
    return order, c, float(np.dot(c, c)), grid, n_ans


def _prefix(cum, n_ans):
    """``cum[n_ans - 1]`` (a sum over the answered rows), 0 where nothing is answered."""
    return np.where(n_ans > 0, cum[np.maximum(n_ans - 1, 0)], 0.0)


def weighted_risk_pvalues(confidence, wrong, row_weights, target_risk, *, grid_size=None):
    """``(grid, S, p)``: for each threshold ``lam`` of the grid (descending), ``S(lam) = sum_i c_i (1{answered &
    wrong} - r 1{answered})`` with ``c_i = row_weights[i] / sum_j row_weights[j]``, and its Hoeffding p-value
    ``exp(-2 max(0, -S)^2 / sum_i c_i^2)`` of ``H0: R_q(lam) > r`` (see the module docstring). Inputs are taken as
    they come (float64 (n,) arrays; :func:`reweight_policy` validates them).

    >>> g, s, p = weighted_risk_pvalues(np.array([0.9, 0.6]), np.array([0.0, 1.0]), np.array([1.0, 1.0]), 0.25)
    >>> g.tolist(), s.tolist()
    ([0.9, 0.6], [-0.125, 0.25])
    """
    conf = np.asarray(confidence, dtype=np.float64)
    wrong = np.asarray(wrong, dtype=np.float64)
    order, c, sum_sq, grid, n_ans = _sorted_weighted(conf, np.asarray(row_weights, dtype=np.float64), grid_size)
    s = _prefix(np.cumsum(c * (wrong[order] - target_risk)), n_ans)
    return grid, s, hoeffding_pvalues(s, sum_sq)


def _per_class_sums(conf, wrong, labels, w, grid_size, alpha_risk, alpha_esc, var=None):
    """``(grid, n_ans, sums)``: the grid (descending, :func:`calib.policy.ltt_threshold`'s), rows answered at each
    threshold, and over the classes with ``q_y = w_y n_y / sum_j w_j n_j > 0`` the sums (each an array over the
    grid) ``risk_upper = sum_y q_y U_y``, ``risk_lower = sum_y q_y L_y`` (``alpha_risk`` given) and
    ``esc_upper = sum_y q_y V_y`` (``alpha_esc`` given): one-sided Clopper-Pearson bounds at level ``alpha_*`` each,
    ``U_y`` upper of ``P(answered & wrong | y)``, ``L_y`` lower of ``P(answered | y)``, ``V_y`` upper of
    ``P(escalated | y)``. ``var = (alpha, r)``: also ``var_upper = sum_y q_y^2 s_y / n_y`` with ``s_y`` the bound
    :func:`_variance_upper` of ``Var(l | y)``, ``l = 1{answered & wrong} - r 1{answered}``, from upper
    Clopper-Pearson bounds of ``a_y`` and ``b_y`` at level ``alpha`` each.

    No loop: walking down the sorted rows, each row changes only its own class's counts ``(m_y, e_y)``, so each sum
    is its value with nothing answered plus the cumulative sum of the per-row changes; each bound is tabulated once
    for every count ``0..n_y`` of every class (``n + k`` Beta quantiles a table) and looked up (``O(n + k)`` memory
    whatever the number of classes)."""
    from scipy.stats import beta

    n, k = conf.size, w.size
    order = np.argsort(-conf, kind="stable")
    cs = conf[order]
    grid = ltt_grid(cs, grid_size)
    n_ans = n - np.searchsorted(cs[::-1], grid, side="left")
    ys = labels[order]
    ws = (wrong[order] != 0).astype(np.int64)
    counts = np.bincount(ys, minlength=k)
    q = w * counts
    q = q / q.sum()
    # per row (sorted order): its class's counts just after it is answered (inclusive running counts)
    by = np.argsort(ys, kind="stable")  # rows grouped by class, in sorted order within each class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    m_after = np.empty(n, dtype=np.int64)
    m_after[by] = np.arange(n) - np.repeat(starts, counts) + 1
    cw = np.concatenate([[0], np.cumsum(ws[by])])
    e_after = np.empty(n, dtype=np.int64)
    e_after[by] = cw[1:] - np.repeat(cw[starts], counts)
    m_before, e_before = m_after - 1, e_after - ws
    n_row = counts[ys].astype(np.float64)
    q_row = q[ys]
    live = np.flatnonzero(q > 0)
    n_live = counts[live].astype(np.float64)
    # tables: entry offsets[y] + j is the bound after j events in n_y trials, j = 0..n_y, for every class
    offsets = np.concatenate([[0], np.cumsum(counts + 1)[:-1]])
    j_all = (np.arange(int((counts + 1).sum())) - np.repeat(offsets, counts + 1)).astype(np.float64)
    n_all = np.repeat(counts, counts + 1).astype(np.float64)
    row_off = offsets[ys]

    def upper_tab(a):
        return binomial_upper_bound(j_all, n_all, a)  # 1.0 where j = n_y (and for an empty class)

    def lower_tab(a):
        with np.errstate(invalid="ignore"):
            lo = beta.ppf(a, np.maximum(j_all, 1e-300), n_all - j_all + 1.0)
        return np.where(j_all > 0, lo, 0.0)

    def accumulate(base, after, before, row_scale):
        """base (nothing answered) + cumulative per-row changes, read at each grid threshold."""
        delta = np.where(q_row > 0, row_scale * (after - before), 0.0)
        return base + _prefix(np.cumsum(delta), n_ans)

    sums = {}
    if alpha_risk is not None:
        up, lo = upper_tab(alpha_risk), lower_tab(alpha_risk)
        sums["risk_upper"] = accumulate(float(q[live] @ up[offsets[live]]), up[row_off + e_after],
                                        up[row_off + e_before], q_row)
        sums["risk_lower"] = accumulate(0.0, lo[row_off + m_after], lo[row_off + m_before], q_row)
    if alpha_esc is not None:
        up = upper_tab(alpha_esc)  # escalated = n_y - m
        sums["esc_upper"] = accumulate(float(q[live].sum()), up[row_off + counts[ys] - m_after],
                                       up[row_off + counts[ys] - m_before], q_row)
    if var is not None:
        a, r = var
        up = upper_tab(a)
        base_v = _variance_upper(up[offsets[live]], up[offsets[live]], r)
        sums["var_upper"] = accumulate(
            float(np.sum(q[live] ** 2 / n_live * base_v)),
            _variance_upper(up[row_off + e_after], up[row_off + m_after], r),
            _variance_upper(up[row_off + e_before], up[row_off + m_before], r), q_row * q_row / n_row)
    return grid, n_ans, sums


def _variance_upper(a_up, b_up, r):
    """Upper bound of ``Var(l | y)``, ``l = 1{answered & wrong} - r 1{answered}``, given ``a_y <= a_up`` and
    ``b_y <= b_up``: ``Var <= E[l^2] = (1 - r)^2 a + r^2 (b - a) = a (1 - 2r) + r^2 b``, largest at
    ``a = min(a_up, b_up)`` (``r <= 1/2``) or ``a = 0`` (``r > 1/2``) and ``b = b_up``; and ``Var <= 1/4`` (a
    variable of range 1, Popoviciu)."""
    a = np.minimum(a_up, b_up) if r <= 0.5 else 0.0
    return np.minimum(a * (1.0 - 2.0 * r) + r * r * b_up, 0.25)


def bernstein_deviation(var_upper, m_range, level):
    """``t`` with ``exp(-t^2 / (2 (V + M t / 3))) = level``: ``t = M L / 3 + sqrt((M L / 3)^2 + 2 V L)``,
    ``L = log(1 / level)`` (Bernstein's inequality, one-sided: ``P(sum_i Y_i >= t) <= level`` for independent
    zero-mean ``Y_i <= M`` with ``sum_i Var Y_i <= V``).

    >>> level = math.exp(-1)  # L = 1
    >>> round(float(bernstein_deviation(0.0, 0.3, level)), 12), round(float(bernstein_deviation(2.0, 0.0, level)), 12)
    (0.2, 2.0)
    """
    lg = math.log(1.0 / level)
    h = m_range * lg / 3.0
    return h + np.sqrt(h * h + 2.0 * np.asarray(var_upper, dtype=np.float64) * lg)


def per_class_risk_bounds(confidence, wrong, labels, class_weights, alpha, *, grid_size=None):
    """``(grid, upper, lower)``: for each threshold ``lam`` of the grid (descending), ``upper = sum_y q_y U_y(lam)``
    and ``lower = sum_y q_y L_y(lam)`` with ``q_y = class_weights[y] n_y / sum_j class_weights[j] n_j`` and
    ``U_y`` / ``L_y`` the one-sided Clopper-Pearson upper bound of ``P(answered & wrong | y)`` / lower bound of
    ``P(answered | y)`` at level ``alpha`` each (the caller divides its level by ``2K``). The per-class binomial
    test rejects ``H0: R_q(lam) > r`` iff ``upper <= r * lower`` (see the module docstring). Inputs are taken as
    they come (float64 confidences and 0/1 errors, int labels, (k,) weights; :func:`reweight_policy` validates).

    >>> g, u, l = per_class_risk_bounds(np.array([0.9, 0.6]), np.array([0.0, 1.0]), np.array([0, 0]), np.ones(1), 0.1)
    >>> g.tolist(), u.round(4).tolist(), l.round(4).tolist()
    ([0.9, 0.6], [0.6838, 0.9487], [0.0513, 0.3162])
    """
    conf = np.asarray(confidence, dtype=np.float64)
    grid, _, sums = _per_class_sums(conf, np.asarray(wrong, dtype=np.float64), np.asarray(labels, dtype=np.int64),
                                    np.asarray(class_weights, dtype=np.float64), grid_size, float(alpha), None)
    return grid, sums["risk_upper"], sums["risk_lower"]


def weighted_risk_bernstein(confidence, wrong, labels, class_weights, target_risk, alpha, *, grid_size=None):
    """``(grid, S, t)``: for each threshold ``lam`` of the grid (descending), ``S(lam) = sum_i c_i (1{answered &
    wrong} - r 1{answered})`` (``c_i = class_weights[y_i] / sum_j class_weights[y_j]``, as
    :func:`weighted_risk_pvalues`) and the Bernstein deviation ``t(lam) = t(V^(lam))`` of the level-``alpha`` test
    of ``H0: R_q(lam) > r``, which rejects iff ``S <= -t``: per-class Clopper-Pearson variance bounds at level
    ``alpha / (4K)`` each, Bernstein at ``alpha / 2`` (see the module docstring). Inputs are taken as they come.

    >>> g, s, t = weighted_risk_bernstein(np.array([0.9, 0.6]), np.array([0.0, 1.0]), np.array([0, 0]), np.ones(1),
    ...                                   0.25, 0.1)
    >>> g.tolist(), s.tolist(), (t > 0.5).tolist()
    ([0.9, 0.6], [-0.125, 0.25], [True, True])
    """
    conf = np.asarray(confidence, dtype=np.float64)
    wrong = np.asarray(wrong, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    w = np.asarray(class_weights, dtype=np.float64)
    order, c, _, grid, n_ans = _sorted_weighted(conf, w[labels], grid_size)
    n_cls = int(((w > 0) & (np.bincount(labels, minlength=w.size) > 0)).sum())
    _, _, sums = _per_class_sums(conf, wrong, labels, w, grid_size, None, None,
                                 var=(alpha / (4 * n_cls), float(target_risk)))
    s = _prefix(np.cumsum(c * (wrong[order] - target_risk)), n_ans)
    return grid, s, bernstein_deviation(sums["var_upper"], float(c.max()), alpha / 2)


def _binomial_start_size(r, alpha, n, n_y, q):
    """Label-free start of the per-class binomial walk: the smallest ``m`` in ``1..n`` (bisection; ``n + 1`` when
    ``m = n`` does not qualify) for which every class answered in the share ``m / n`` (``m_y = m n_y / n``) with an
    error rate ``r / 2`` (``e_y = r m_y / 2``) would be rejected: ``sum q_y U_y <= r sum q_y L_y``, Clopper-Pearson
    bounds at level ``alpha`` with real-valued counts. ``n_y``, ``q``: the classes with ``q_y > 0``."""
    from scipy.stats import beta

    def rejects(m):
        m_y = m * n_y / n
        e_y = 0.5 * r * m_y
        upper = beta.ppf(1.0 - alpha, e_y + 1.0, n_y - e_y)
        lower = beta.ppf(alpha, m_y, n_y - m_y + 1.0)
        return float(q @ upper) <= r * float(q @ lower)

    return _bisect_start(rejects, n)


def _bisect_start(rejects, n):
    """Smallest m in 1..n with rejects(m), by bisection (n + 1 when not rejects(n))."""
    if not rejects(n):
        return n + 1
    lo, hi = 0, n  # rejects(hi); m = 0 answers nothing and never rejects
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if rejects(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _bernstein_start_size(r, alpha_var, level, n, n_y, q):
    """Label-free start of the Bernstein walk: as :func:`_binomial_start_size` (every class answered in the share
    ``m / n`` with an error rate ``r / 2``, so ``S = -(m / n) r / 2``), rejected when ``-S >= t`` with the variance
    bound from real-valued counts. ``n_y``, ``q`` (summing to 1): the classes with ``q_y > 0``."""
    from scipy.stats import beta

    m_range = float((q / n_y).max())

    def rejects(m):
        m_y = m * n_y / n
        e_y = 0.5 * r * m_y
        a_up = beta.ppf(1.0 - alpha_var, e_y + 1.0, n_y - e_y)
        b_up = np.where(m_y < n_y, beta.ppf(1.0 - alpha_var, m_y + 1.0, np.maximum(n_y - m_y, 1e-300)), 1.0)
        v = float(np.sum(q * q / n_y * _variance_upper(a_up, b_up, r)))
        return 0.5 * r * m / n >= float(bernstein_deviation(v, m_range, level))

    return _bisect_start(rejects, n)


def _leading(ok):
    """Number of leading True values (fixed-sequence testing: rejections up to the first non-rejection)."""
    fail = np.flatnonzero(~ok)
    return int(fail[0]) if fail.size else int(ok.size)


def _weighted_ltt(conf, wrong, labels, w, *, bound, target_risk, delta, max_escalation, grid_size, family):
    """Weighted Learn then Test (``bound``: one of :data:`BOUNDS`); ``w``: (k,) class weights, max 1.
    Returns (threshold, certified, n_tested, risk p-value at it or None, risk upper bound at it or None, message).
    ``threshold`` is +inf (risk target, nothing certified) or -inf (budget alone)."""
    n = conf.size
    n_starts = FAMILIES[family]
    level = delta / 2 if (target_risk is not None and max_escalation is not None) else delta
    lvl = level / n_starts  # each risk sequence
    rej_b = rej_r = p_r = ratio = None
    if bound in ("hoeffding", "bernstein"):
        order, c, sum_sq, grid, n_ans = _sorted_weighted(conf, w[labels], grid_size)
        if max_escalation is not None:
            # S_b(lam) = sum_i c_i (1{escalated} - b) = (sum c - answered mass) - b (Hoeffding for both)
            cum_c = np.cumsum(c)
            rej_b = hoeffding_pvalues((cum_c[-1] - _prefix(cum_c, n_ans)) - max_escalation, sum_sq) <= level
        if target_risk is not None and bound == "bernstein":
            counts = np.bincount(labels, minlength=w.size)
            present = (w > 0) & (counts > 0)
            n_cls = int(present.sum())
            alpha_var = lvl / (4 * n_cls)  # half the level for the 2K variance bounds, half for Bernstein
            _, s_r, t_r = weighted_risk_bernstein(conf, wrong, labels, w, target_risk, lvl, grid_size=grid_size)
            rej_r = s_r <= -t_r
            q = w[present] * counts[present]
            m_min = _bernstein_start_size(target_risk, alpha_var, lvl / 2, n, counts[present].astype(np.float64),
                                          q / q.sum())
        elif target_risk is not None:
            m_min = _start_size(target_risk, lvl, n, float(w.min()) / float(w.max()))  # label-free: weight range
            p_r = hoeffding_pvalues(_prefix(np.cumsum(c * (wrong[order] - target_risk)), n_ans), sum_sq)
            rej_r = p_r <= lvl
    else:
        counts = np.bincount(labels, minlength=w.size)
        present = (w > 0) & (counts > 0)
        n_cls = int(present.sum())
        grid, n_ans, sums = _per_class_sums(conf, wrong, labels, w, grid_size,
                                            None if target_risk is None else lvl / (2 * n_cls),
                                            None if max_escalation is None else level / n_cls)
        if max_escalation is not None:
            rej_b = sums["esc_upper"] <= max_escalation
        if target_risk is not None:
            q = w[present] * counts[present]
            m_min = _binomial_start_size(target_risk, lvl / (2 * n_cls), n, counts[present].astype(np.float64), q)
            rej_r = sums["risk_upper"] <= target_risk * sums["risk_lower"]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = sums["risk_upper"] / sums["risk_lower"]

    ok = np.ones(grid.size, dtype=bool)
    n_tested = 0
    if rej_b is not None:
        k_b = _leading(rej_b[::-1])  # walk up from the lowest threshold
        n_tested += grid.size if k_b == grid.size else k_b + 1
        ok_b = np.zeros(grid.size, dtype=bool)
        ok_b[grid.size - k_b:] = True
        ok &= ok_b
    if rej_r is not None:
        first = int(np.searchsorted(n_ans, m_min, side="left"))
        starts = (np.unique(np.linspace(first, grid.size, n_starts + 1)[:-1].astype(np.int64)) if first < grid.size
                  else np.array([], dtype=np.int64))
        ok_r = np.zeros(grid.size, dtype=bool)
        for start in starts:
            k_r = _leading(rej_r[start:])
            n_tested += (grid.size - start) if k_r == grid.size - start else k_r + 1
            ok_r[start:start + k_r] = True
        ok &= ok_r
    if ok.any():
        i = int(np.flatnonzero(ok)[-1]) if target_risk is not None else int(np.flatnonzero(ok)[0])
        return (float(grid[i]), True, n_tested, None if p_r is None else float(p_r[i]),
                None if ratio is None else float(ratio[i]), "")
    row_w = w[labels]
    if target_risk is not None:
        msg = (f"No confidence threshold certified target selective risk <= {target_risk} with probability >= "
               f"1 - {delta} on {n} weighted calibration items (effective sample size "
               f"{row_w.sum() ** 2 / np.dot(row_w, row_w):.0f})"
               + (f" within escalation budget {max_escalation}" if max_escalation is not None else "")
               + "; escalating every item.")
        return math.inf, False, n_tested, None, None, msg
    msg = (f"No threshold certified target escalation rate <= {max_escalation} with probability >= 1 - {delta}; "
           "answering every item (no escalation).")
    return -math.inf, False, n_tested, None, None, msg


def _as_weights(weights, k, counts):
    """(k,) float64 weights from an array or a LabelShiftEstimate, plus notes."""
    notes = []
    if isinstance(weights, LabelShiftEstimate):
        if weights.n_classes != k:
            raise ValueError(f"Expected weights (a LabelShiftEstimate) for {k} classes (as cal_probs), got an "
                             f"estimate for {weights.n_classes} classes.")
        src = weights.source_prior
        freq = counts / counts.sum()
        if not np.allclose(src, freq, rtol=0, atol=1e-12):
            notes.append("The LabelShiftEstimate was fitted on other calibration rows (its source prior differs from "
                         f"these labels' frequencies by up to {np.abs(src - freq).max():.3g}); its weights are read "
                         "relative to these rows' frequencies.")
        weights = weights.weights
    elif isinstance(weights, (str, bytes, dict)) or weights is None:
        raise TypeError(f"Expected weights as an array of shape ({k},) (importance weights q(y)/p(y)) or a "
                        f"calib.shift.LabelShiftEstimate, got {type(weights).__name__} {weights!r}.")
    w = check_weights(weights, k, "weights")
    absent = np.flatnonzero((w > 0) & (counts == 0))
    if absent.size:
        raise ValueError(f"Expected weights of 0 for classes with no calibration row (nothing measures the policy on "
                         f"them), got positive weights for classes {absent[:10].tolist()} absent from cal_labels.")
    if not (w[counts > 0] > 0).any():
        raise ValueError("Expected a positive weight for at least one class present in cal_labels, got weight 0 on "
                         "every calibration row.")
    return w, notes


def _check_policy(policy, k):
    if not isinstance(policy, RoutingPolicy):
        raise TypeError(f"Expected policy as a calib.policy routing policy (kind one of {list(REWEIGHTABLE)}), got "
                        f"{type(policy).__name__} {policy!r}.")
    if type(policy) not in (ThresholdPolicy, RiskControlPolicy):
        why = _WHY_NOT.get(policy.kind, "it has no single confidence threshold to re-choose")
        raise ValueError(f"Expected policy of kind {' or '.join(repr(x) for x in REWEIGHTABLE)} (the policies that "
                         f"answer above one confidence threshold, which label-shift weights can re-choose), got kind "
                         f"{policy.kind!r}: {why}.")
    if policy.is_fitted and policy.n_classes_ != k:
        raise ValueError(f"Expected policy fitted on {k} classes (as cal_probs), got a policy fitted on "
                         f"{policy.n_classes_} classes.")


def reweight_policy(policy, cal_probs, cal_labels, weights, *, fallback=None, bound=DEFAULT_BOUND):
    """Re-choose a routing threshold for a label-shifted target: returns ``(fitted ThresholdPolicy,
    WeightedThreshold)`` (see the module docstring for the method and what is guaranteed).

    Parameters
    ----------
    policy : ThresholdPolicy or RiskControlPolicy, fitted or not
        Its parameters are used (``target_coverage`` / ``threshold``; ``target_risk``, ``delta``, ``max_escalation``,
        ``grid_size``, ``family``) and its confidence score, ``fallback_threshold``, fallback mode and costs are
        carried over. Other kinds are refused (``ValueError``).
    cal_probs : (n, k) calibrated calibration probabilities
    cal_labels : (n,) calibration labels
    weights : (k,) importance weights ``w(y) = q(y) / p^(y)`` (finite, ``>= 0``, not all 0; only ratios matter), or
        a :class:`~calib.shift.LabelShiftEstimate` (its ``weights``).
    fallback : (n,) per-item fallback labels of the calibration rows, optional (needed for ``fallback="extras"``).
    bound : {"bernstein", "hoeffding", "per_class_binomial"}, default "bernstein"
        The test of ``H0: R_q(lam) > r`` (and of the escalation budget) for ``RiskControlPolicy`` (see the module
        docstring); all are valid. Bernstein (with per-class Clopper-Pearson variance bounds) certifies the most
        on the c10lt benchmark (``python bench/shift_policy.py``: 6 of 12 (model, r) cases with the true weights,
        Hoeffding 2, per-class binomial 1): rare errors have a small variance, which Hoeffding ignores, and a bound
        on the whole weighted sum adds the classes' slacks in quadrature, where per-class bounds add them
        linearly. Choose before seeing the labels (trying all and keeping the best is not covered). Ignored (but
        checked) for ``ThresholdPolicy``.

    The returned policy is ``ThresholdPolicy(threshold=t, ...)`` fitted on the calibration rows; when the fallback
    mode is ``"majority"`` its majority class is that of the target prior the weights stand for. ``ThresholdPolicy``
    takes only finite thresholds, so "escalate every item" (nothing certified) is the threshold
    ``nextafter(hi, inf)`` with ``hi`` the top of the confidence score's range (:func:`calib.selective.
    confidence_domain`), which no item reaches; "answer every item" (a budget alone, not certified) is
    ``nextafter(lo, -inf)``. Such a policy's route reasons read ``low_confidence`` / ``confident``.

    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]]); y = np.array([0, 0, 1, 1])
    >>> pol, rep = reweight_policy(ThresholdPolicy(target_coverage=0.5), p, y, [1.0, 3.0])
    >>> rep.method, pol.threshold_, rep.weighted_coverage
    ('weighted_quantile', 0.7, 0.625)
    """
    bound = check_choice(bound, "bound", BOUNDS)
    p = check_probs(cal_probs, "cal_probs")
    n, k = p.shape
    y = check_labels(cal_labels, "cal_labels", n_samples=n, n_classes=k, rows_of="cal_probs")
    _check_policy(policy, k)
    counts = np.bincount(y, minlength=k)
    w, notes = _as_weights(weights, k, counts)
    w = w / w.max()  # only ratios matter; equal weights become exactly 1.0, so unit-weight sums are exact integers
    params = policy.get_params()
    conf_name = params["confidence"]
    pred = p.argmax(axis=1)
    conf = _confidence_scores(p, conf_name, pred)
    wrong = (pred != y).astype(np.float64)
    row_w = w[y]
    total = float(row_w.sum())
    ess = total * total / float(np.dot(row_w, row_w))
    lo, hi = confidence_domain(conf_name, k)

    if policy.is_fitted:
        original = float(policy.threshold_)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nothing certified unweighted: reported as +inf below
            original = float(policy.clone().fit(p, y, fallback=fallback).threshold_)

    g = {"target_risk": None, "delta": None, "max_escalation": None, "target_coverage": None, "family": None,
         "n_tested": 0, "risk_pvalue": None, "risk_upper_bound": None, "certified": None}
    if isinstance(policy, ThresholdPolicy) and params["threshold"] is not None:
        t, method = float(params["threshold"]), "fixed"
        statement = ("A fixed threshold: unchanged under label shift (the weights change how many target items it "
                     "answers and how often it errs, estimated in weighted_coverage / weighted_selective_risk, not "
                     "the threshold). No guarantee.")
        notes.append("fixed threshold kept as it is; set target_coverage or use RiskControlPolicy to re-choose it.")
    elif isinstance(policy, ThresholdPolicy):
        cov = params["target_coverage"]
        order = np.argsort(-conf, kind="stable")
        cum = np.cumsum(row_w[order])
        j = int(np.argmax(cum >= cov * cum[-1]))  # first position reaching the weighted share (always exists)
        t, method = float(conf[order][j]), "weighted_quantile"
        g["target_coverage"] = cov
        statement = (f"The highest calibration confidence whose weighted share answered is >= {cov:g}: a point "
                     "estimate of the target automation rate, if the weights are the true q/p; no guarantee.")
    else:
        fam = params["family"]
        t, certified, n_tested, pval, r_ub, msg = _weighted_ltt(
            conf, wrong, y, w, bound=bound, target_risk=params["target_risk"], delta=params["delta"],
            max_escalation=params["max_escalation"], grid_size=params["grid_size"], family=fam)
        method = _METHOD_OF[bound]
        g.update(target_risk=params["target_risk"], delta=params["delta"], max_escalation=params["max_escalation"],
                 family=fam, n_tested=n_tested, risk_pvalue=pval, risk_upper_bound=r_ub, certified=certified)
        events = []
        if params["target_risk"] is not None:
            events.append(f"R_q(threshold) > {params['target_risk']:g}")
        if params["max_escalation"] is not None:
            events.append(f"E_q(threshold) > {params['max_escalation']:g}")
        statement = (f"P({' or '.join(events)}) <= {params['delta']:g} over the calibration draw, where R_q is the "
                     "selective risk P(wrong | answered) and E_q the escalation rate under the target prior q the "
                     "weights stand for (q(y) proportional to w(y) n_y), *if the weights are the true q/p*; estimated "
                     f"weights carry their own error, not covered (Learn then Test with {_BOUND_WORDS[bound]}, "
                     f"{FAMILIES[fam]} fixed sequence(s) from label-free starts). Requires label shift: p(x | y) "
                     "unchanged between calibration and serving.")
        if msg:
            notes.append(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
        notes.append(_conservativeness(conf, wrong, y, params, bound))
        if t == math.inf:
            t = float(np.nextafter(hi, math.inf))
        elif t == -math.inf:
            t = float(np.nextafter(lo, -math.inf))

    answered = conf >= t
    a_mass = float(row_w[answered].sum())
    risk = float(np.dot(row_w[answered], wrong[answered]) / a_mass) if a_mass > 0 else None
    out = ThresholdPolicy(threshold=t, confidence=conf_name, fallback_threshold=params["fallback_threshold"],
                          fallback=params["fallback"], costs=params["costs"]).fit(p, y, fallback=fallback)
    target_majority = int(np.argmax(w * counts))
    if params["fallback"] == "majority" and target_majority != out.majority_class_:
        notes.append(f"fallback='majority': the majority class of the target prior, {target_majority}, replaces the "
                     f"calibration majority {out.majority_class_}.")
        out.majority_class_ = target_majority
    if ess < 0.1 * n:
        notes.append(f"Effective sample size {ess:.0f} of {n} calibration rows: the weights are very uneven, estimates "
                     "under the target rest on few rows.")
    report = WeightedThreshold(
        threshold=t, method=method, weighted_selective_risk=risk, weighted_coverage=a_mass / total,
        original_threshold=original, effective_sample_size=ess, n_calibration=n, statement=statement,
        notes=tuple(notes), **g)
    return out, report


def _conservativeness(conf, wrong, labels, params, bound):
    """A note measuring, on these rows with unit weights, the chosen test against RiskControlPolicy's pooled
    binomial one."""
    kw = {k: params[k] for k in ("target_risk", "delta", "max_escalation", "grid_size", "family")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        binom = ltt_threshold(conf, wrong == 0, **kw).threshold
    ours = _weighted_ltt(conf, wrong, labels, np.ones(int(labels.max()) + 1), bound=bound, **kw)[0]
    share = {t: float(np.mean(conf >= t)) for t in (ours, binom)}
    name, why = {"hoeffding": ("Hoeffding", "Hoeffding ignores the variance of the losses"),
                 "bernstein": ("Bernstein", "half the level spent on per-class variance bounds"),
                 "per_class_binomial": ("Per-class binomial", "2 bounds per class, Bonferroni")}[bound]
    return (f"{name} vs binomial Learn then Test on these rows with unit weights (no shift): thresholds {ours:.6g} "
            f"vs {binom:.6g}, answering {share[ours]:.1%} vs {share[binom]:.1%} of calibration rows ({why}; the "
            "price of a bound that allows weights).")
