"""Confidence thresholds with a finite-sample guarantee: Learn then Test with fixed-sequence testing.

Angelopoulos, Bates, Candès, Jordan & Lei (2021), "Learn then Test: Calibrating predictive algorithms
to achieve risk control", arXiv:2110.01052. Items are answered when their confidence is >= a threshold
``lam``; the selective risk is R(lam) = P(wrong | answered), a property of the **population** (the
distribution the calibration items were drawn from), not of any finite test set.

What is guaranteed: over the draw of the n calibration items (exchangeable with future items),
P(R(lam_hat) > r) <= delta for the returned threshold lam_hat. The risk measured on a finite test set
scatters around R(lam_hat) with its own binomial noise, so a test-set risk above r is not by itself a
violation; and nothing is claimed when the test distribution differs from the calibration one (shift).

On the calibration split:

1. grid: the distinct calibration confidences (or ``grid_size`` of their quantiles; labels unused),
   ordered from the most conservative (highest) threshold to the least;
2. for each lam, null hypothesis H(lam): R(lam) > r; given the n(lam) answered items, their error count
   e(lam) is Binomial(n(lam), R(lam)), so p(lam) = P(Binomial(n(lam), r) <= e(lam)) is a valid p-value;
3. fixed-sequence testing: walk down the grid rejecting while p(lam) <= level and stop at the first
   failure; every rejected lam has R(lam) <= r, jointly with probability >= 1 - delta (FWER control);
4. return the last rejected (least conservative) lam; when nothing is rejected, say so and answer nothing.

Two families of sequences (``family``; :data:`FAMILIES`):

- ``"fixed_sequence"``: one sequence at level delta, started at the first threshold that answers at least
  ``n_min`` items, where ``n_min`` is the smallest n for which floor(r n / 2) errors would still be rejected
  at that level (a label-free start: it depends on the confidences, n, r and delta only);
- ``"multi_start"`` (the default, and what every artifact written before the choice existed used):
  fixed-sequence testing stops at its first failure, so one cluster of confident errors near the start
  would end the walk before it began. Following LTT's remark on several fixed sequences (Bonferroni over
  them), the walk is run from ``n_starts`` = 4 starting points, each at level delta / 4, and the union of
  the rejections is kept (FWER <= delta). The starts are spread evenly over the grid between the first
  threshold answering at least ``n_min`` items (computed at level delta / 4) and the end. Robust to an
  early cluster of errors, but each walk runs at delta / 4, which costs automation when there is none
  (``python experiments/audit_policy.py --families`` prints both on the same data).

Starts and order depend only on the confidences, n, r and delta, never on the labels, so both families
keep the guarantee.

Budget mode bounds the escalation rate E(lam) = P(confidence < lam) <= b with the same machinery:
p(lam) = P(Binomial(n, b) <= #escalated(lam)), walking up from the lowest threshold. With both a risk
target and a budget each family is tested at delta / 2 (Bonferroni), so both hold jointly w.p. >= 1 - delta.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from calib._validation import as_array, check_choice, check_fraction, check_positive_int
from calib.base import StateError, state_scalar
from calib.selective import _check_conf_correct

__all__ = ["Guarantee", "ltt_threshold", "ltt_grid", "binomial_upper_bound", "guarantee_from_state", "guarantee_statement",
           "FAMILIES"]

METHOD = "learn_then_test_fixed_sequence_binomial"
#: Learn-then-Test families of fixed sequences -> number of sequences (each tested at level delta / n).
FAMILIES = {"multi_start": 4, "fixed_sequence": 1}


def guarantee_statement(*, target_risk, delta, max_escalation=None, family="multi_start", n_starts=None):
    """The guarantee in plain words, as ``metrics.json`` states it.

    >>> guarantee_statement(target_risk=0.02, delta=0.1)[:56]
    'P(R(threshold) > 0.02) <= 0.1 over the draw of the calib'
    """
    n_starts = FAMILIES.get(family, 1) if n_starts is None else n_starts
    how = (f"Learn then Test, {n_starts} fixed sequences from label-free starts, Bonferroni over them"
           if n_starts > 1 else "Learn then Test, one fixed sequence from a label-free start")
    events, defs = [], []
    if target_risk is not None:
        events.append(f"R(threshold) > {target_risk:g}")
        defs.append("R is the population selective risk P(wrong | answered)")
    if max_escalation is not None:
        events.append(f"E(threshold) > {max_escalation:g}")
        defs.append("E the population escalation rate P(escalated)")
    return (f"P({' or '.join(events)}) <= {delta:g} over the draw of the calibration set, where "
            f"{' and '.join(defs)} of the fitted threshold on new items exchangeable with the calibration items "
            f"({how}). Not a bound on the rate measured on a finite test set, which scatters around the population "
            "value with its own binomial noise; no claim under distribution shift.")


@dataclasses.dataclass(frozen=True)
class Guarantee:
    """Outcome of :func:`ltt_threshold`.

    ``threshold`` is +inf when nothing could be certified for a risk target (answer nothing, escalate
    everything) and -inf when only a budget was asked and it could not be certified (answer everything).
    """

    certified: bool
    threshold: float
    target_risk: float | None
    delta: float
    max_escalation: float | None
    risk_upper_bound: float | None
    cal_selective_risk: float | None
    cal_coverage: float
    n_answered: int
    n_tested: int
    method: str = "learn_then_test_fixed_sequence_binomial"
    message: str = ""

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["threshold"] = self.threshold if math.isfinite(self.threshold) else None
        return d


def binomial_upper_bound(errors, n, delta):
    """One-sided (1 - delta) Clopper–Pearson upper bound of a binomial rate; 1.0 when n == 0.

    >>> round(binomial_upper_bound(0, 100, 0.05), 5)
    0.02951
    """
    from scipy.stats import beta

    delta = check_fraction(delta, "delta")
    errors, n = _counts(errors, "errors"), _counts(n, "n")
    try:
        errors, n = np.broadcast_arrays(errors, n)
    except ValueError:
        raise ValueError(f"Expected errors and n of the same shape, got {np.shape(errors)} and "
                         f"{np.shape(n)}.") from None
    if (errors > n).any():
        i = np.flatnonzero((errors > n).ravel())[0]
        raise ValueError(f"Expected errors <= n, got errors={errors.ravel()[i]:g} > n={n.ravel()[i]:g}.")
    with np.errstate(invalid="ignore", divide="ignore"):
        ub = beta.ppf(1.0 - delta, errors + 1.0, np.maximum(n - errors, 1e-300))
    ub = np.where(errors >= n, 1.0, ub)
    out = np.where(n > 0, ub, 1.0)
    return float(out) if out.ndim == 0 else out


def _counts(x, name):
    """Non-negative integral counts (any shape) as float64."""
    a = as_array(x, name)
    if a.dtype.kind not in "biuf" or a.dtype.kind == "b":
        raise TypeError(f"Expected {name} as non-negative integer counts, got dtype {a.dtype}.")
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all() or (a < 0).any() or (a != np.round(a)).any():
        bad = a[~(np.isfinite(a) & (a >= 0) & (a == np.round(a)))]
        raise ValueError(f"Expected {name} as non-negative integer counts, got {bad.size} other values "
                         f"(e.g. {float(bad[0])!r}).")
    return a


def ltt_grid(conf_sorted_desc, grid_size):
    """The thresholds Learn then Test walks, from the most conservative (highest) down: every distinct
    calibration confidence, or ``grid_size`` of their inverted-CDF quantiles (labels unused). Shared with the
    label-shift-weighted walk of :func:`calib.shift.reweight_policy`."""
    uniq = np.unique(conf_sorted_desc)[::-1]
    if grid_size is None or uniq.size <= grid_size:
        return uniq
    q = np.linspace(0.0, 1.0, grid_size)
    return np.unique(np.quantile(conf_sorted_desc, q, method="inverted_cdf"))[::-1]


def _start_size(r, level, n_max):
    """Smallest n with P(Binomial(n, r) <= floor(r n / 2)) <= level (n_max + 1 when none is <= n_max)."""
    from scipy.stats import binom

    ns = np.arange(1, n_max + 1)
    ok = binom.cdf(np.floor(r * ns / 2.0), ns, r) <= level
    return int(ns[np.argmax(ok)]) if ok.any() else n_max + 1


def _fixed_sequence(pvalues, delta):
    """Number of leading hypotheses rejected by fixed-sequence testing at level delta."""
    fail = np.flatnonzero(~(pvalues <= delta))
    return int(fail[0]) if fail.size else int(pvalues.size)


def ltt_threshold(confidence, correct, *, target_risk=None, delta=0.1, max_escalation=None, grid_size=None,
                  n_starts=None, family="multi_start"):
    """Choose a confidence threshold with P(R(threshold) > target_risk) <= delta over the draw of the
    calibration set, R the population selective risk (Learn then Test).

    Parameters
    ----------
    confidence : ndarray (n,)
        Calibration confidence scores (higher = more confident).
    correct : ndarray (n,), bool (or 0/1 integers)
        Whether the model's answer is right on each calibration item. Floats are refused, even 0.0/1.0: a
        probability of being right is not an outcome.
    target_risk : float in (0, 1), optional
        Target selective risk r.
    delta : float in (0, 1), default 0.1
        Failure probability.
    max_escalation : float in (0, 1), optional
        Budget b on the escalation rate (share of items not answered).
    grid_size : int, optional
        Number of quantile thresholds (default: every distinct confidence).
    n_starts : int, optional
        Number of fixed sequences for the risk target (each at level delta / n_starts); default: that of
        ``family`` (4 for ``"multi_start"``, 1 for ``"fixed_sequence"``, which allows no other value).
    family : {"multi_start", "fixed_sequence"}, default "multi_start"
        Family of fixed sequences (see the module docstring and :data:`FAMILIES`).

    Returns
    -------
    Guarantee

    >>> conf = np.linspace(0, 1, 1000); correct = conf > 0.3
    >>> g = ltt_threshold(conf, correct, target_risk=0.05, delta=0.1)
    >>> g.certified, 0.26 < g.threshold < 0.3
    (True, True)
    """
    from scipy.stats import binom

    if target_risk is None and max_escalation is None:
        raise ValueError("Expected target_risk or max_escalation (or both), got neither.")
    delta = check_fraction(delta, "delta")
    family = check_choice(family, "family", tuple(FAMILIES))
    if n_starts is None:
        n_starts = FAMILIES[family]
    n_starts = check_positive_int(n_starts, "n_starts")
    if family == "fixed_sequence" and n_starts != 1:
        raise ValueError(f"Expected n_starts=1 (or None) with family='fixed_sequence' (one sequence at level delta), "
                         f"got n_starts={n_starts}.")
    if grid_size is not None:
        grid_size = check_positive_int(grid_size, "grid_size", minimum=2)
    if target_risk is not None:
        target_risk = check_fraction(target_risk, "target_risk")
    if max_escalation is not None:
        max_escalation = check_fraction(max_escalation, "max_escalation")
    # correct: booleans or 0/1 integers only (a float "correctness" read as bool would be all-correct)
    c, h = _check_conf_correct(confidence, correct)
    n = c.size
    level = delta / 2 if (target_risk is not None and max_escalation is not None) else delta

    order = np.argsort(-c, kind="stable")
    cs = c[order]
    cum_err = np.cumsum(~h[order])
    grid = ltt_grid(cs, grid_size)  # descending
    # n_answered(lam) = #(c >= lam); cs is descending so use searchsorted on the ascending reverse
    n_ans = n - np.searchsorted(cs[::-1], grid, side="left")
    e_ans = np.where(n_ans > 0, cum_err[np.maximum(n_ans - 1, 0)], 0)

    ok = np.ones(grid.size, dtype=bool)
    n_tested = 0
    if max_escalation is not None:
        # walk up from the lowest threshold: reversed grid
        n_esc = (n - n_ans)[::-1]
        p_b = binom.cdf(n_esc, n, max_escalation)
        k_b = _fixed_sequence(p_b, level)
        n_tested += grid.size if k_b == grid.size else k_b + 1
        ok_b = np.zeros(grid.size, dtype=bool)
        ok_b[grid.size - k_b:] = True
        ok &= ok_b
    if target_risk is not None:
        lvl = level / n_starts
        n_min = _start_size(target_risk, lvl, n)
        first = int(np.searchsorted(n_ans, n_min, side="left"))  # n_ans ascending along the descending grid
        starts = np.unique(np.linspace(first, grid.size, n_starts + 1)[:-1].astype(np.int64)) if first < grid.size \
            else np.array([], dtype=np.int64)
        p_r = binom.cdf(e_ans, n_ans, target_risk)
        ok_r = np.zeros(grid.size, dtype=bool)
        for start in starts:
            k_r = _fixed_sequence(p_r[start:], lvl)
            n_tested += (grid.size - start) if k_r == grid.size - start else k_r + 1
            ok_r[start:start + k_r] = True
        ok &= ok_r

    if ok.any():
        # least conservative certified threshold when a risk target is set, else the highest within budget
        i = int(np.flatnonzero(ok)[-1]) if target_risk is not None else int(np.flatnonzero(ok)[0])
        thr, na, ea, certified, msg = float(grid[i]), int(n_ans[i]), int(e_ans[i]), True, ""
    else:
        certified = False
        if target_risk is not None:
            thr, na, ea = math.inf, 0, 0
            msg = (f"No confidence threshold certified selective risk <= {target_risk} with probability "
                   f">= 1 - {delta} on {n} calibration items"
                   + (f" within escalation budget {max_escalation}" if max_escalation is not None else "")
                   + "; escalating every item.")
        else:
            thr, na, ea = -math.inf, n, int(cum_err[-1])
            msg = (f"No threshold certified escalation rate <= {max_escalation} with probability >= 1 - {delta}; "
                   "answering every item (no escalation).")
        warnings.warn(msg, UserWarning, stacklevel=2)
    ub = binomial_upper_bound(ea, na, level) if target_risk is not None else None
    if target_risk is None and na > 0:
        ub = binomial_upper_bound(ea, na, delta)
    return Guarantee(
        certified=certified, threshold=thr, target_risk=target_risk, delta=delta, max_escalation=max_escalation,
        risk_upper_bound=None if ub is None else float(ub), cal_selective_risk=(ea / na) if na else None,
        cal_coverage=na / n, n_answered=na, n_tested=int(n_tested), message=msg,
    )


_GUARANTEE_FIELDS = ("certified", "target_risk", "delta", "max_escalation", "risk_upper_bound", "cal_selective_risk",
                     "cal_coverage", "n_answered", "n_tested", "method", "message")


def guarantee_from_state(g, threshold, *, target_risk, delta, max_escalation, domain, owner):
    """A :class:`Guarantee` from stored state (untrusted): every field checked, and against the others, the
    policy's parameters and its ``threshold``; ``domain`` = (lo, hi) of the confidence score. Raises
    :class:`calib.base.StateError` naming the field."""
    who = getattr(owner, "__name__", str(owner))
    if not isinstance(g, dict):
        raise StateError(f"Expected state field 'guarantee' of {who} as a mapping, got {type(g).__name__} {g!r}.")
    g = {f"guarantee.{k}": v for k, v in g.items()}

    def err(field, expected, got):
        return StateError(f"Expected state field 'guarantee.{field}' of {who} {expected}, got {got}.")

    def optional(field, **kw):
        key = f"guarantee.{field}"
        if key not in g:
            raise err(field, "to be present", "a state without it")
        if g[key] is None:
            g.pop(key)
            return None
        return state_scalar(g, key, float, owner=owner, **kw)

    certified = state_scalar(g, "guarantee.certified", bool, owner=owner)
    stored = {"target_risk": optional("target_risk", minimum=0, maximum=1, exclusive=True),
              "delta": state_scalar(g, "guarantee.delta", float, minimum=0, maximum=1, exclusive=True, owner=owner),
              "max_escalation": optional("max_escalation", minimum=0, maximum=1, exclusive=True)}
    for field, want in (("target_risk", target_risk), ("delta", delta), ("max_escalation", max_escalation)):
        if stored[field] != want:
            raise err(field, f"equal to the policy's parameter {field}={want!r}", repr(stored[field]))
    ub = optional("risk_upper_bound", minimum=0, maximum=1)
    risk = optional("cal_selective_risk", minimum=0, maximum=1)
    coverage = state_scalar(g, "guarantee.cal_coverage", float, minimum=0, maximum=1, owner=owner)
    n_answered = state_scalar(g, "guarantee.n_answered", int, minimum=0, owner=owner)
    n_tested = state_scalar(g, "guarantee.n_tested", int, minimum=0, owner=owner)
    method = state_scalar(g, "guarantee.method", str, choices=(METHOD,), owner=owner)
    message = state_scalar(g, "guarantee.message", str, owner=owner)
    if g:
        raise StateError(f"Unexpected state of {who}: guarantee fields {sorted(k[10:] for k in g)} are not written by "
                         f"any fit (expected {list(_GUARANTEE_FIELDS)}).")

    # consistency: what ltt_threshold always returns together
    if (coverage == 0) != (n_answered == 0):
        raise err("cal_coverage", f"0 exactly when n_answered is 0 (n_answered={n_answered})", repr(coverage))
    if (risk is None) != (n_answered == 0):
        raise err("cal_selective_risk", f"null exactly when n_answered is 0 (n_answered={n_answered})", repr(risk))
    if risk is not None and abs(risk * n_answered - round(risk * n_answered)) > 1e-6 * max(1, n_answered):
        raise err("cal_selective_risk", f"a whole number of errors out of n_answered={n_answered}", repr(risk))
    if (ub is None) != (target_risk is None and n_answered == 0):
        raise err("risk_upper_bound", "null exactly when there is no target risk and nothing is answered", repr(ub))
    if ub is not None and risk is not None and ub < risk - 1e-9:
        raise err("risk_upper_bound", f">= cal_selective_risk={risk!r} (an upper bound of it)", repr(ub))
    lo, hi = domain
    if certified:
        if not (np.isfinite(threshold) and lo <= threshold <= hi):
            raise StateError(f"Expected state field 'threshold' of {who} in [{lo:.6g}, {hi:.6g}] (the range of its "
                             f"confidence score) for a certified guarantee, got {threshold!r}.")
        if n_answered < 1 or n_tested < 1:
            raise err("n_answered", "and n_tested >= 1 for a certified guarantee (a tested threshold answers at least "
                      "the item it came from)", f"n_answered={n_answered}, n_tested={n_tested}")
        if message:
            raise err("message", "empty for a certified guarantee", repr(message))
    else:
        want = math.inf if target_risk is not None else -math.inf
        if threshold != want:
            raise StateError(f"Expected state field 'threshold' of {who} {want} when the guarantee is not certified "
                             f"({'escalate' if want > 0 else 'answer'} every item), got {threshold!r}.")
        if (n_answered == 0) != (want > 0) or (want < 0 and coverage != 1.0):
            raise err("n_answered", "0 when nothing is certified for a risk target, every item (cal_coverage 1) for a "
                      "budget alone", f"n_answered={n_answered}, cal_coverage={coverage}")
        if not message:
            raise err("message", "to say why nothing was certified", "an empty message")
    return Guarantee(certified=certified, threshold=float(threshold), target_risk=target_risk, delta=delta,
                     max_escalation=max_escalation, risk_upper_bound=ub, cal_selective_risk=risk,
                     cal_coverage=coverage, n_answered=n_answered, n_tested=n_tested, method=method, message=message)
