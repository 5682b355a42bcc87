"""Plots of a routing policy as compute-then-draw pairs: ``prepare_*`` returns a frozen dataclass of
arrays, ``plot_*`` draws it (matplotlib imported inside ``plot_*`` only)."""

from __future__ import annotations

import dataclasses

import numpy as np

from calib._validation import check_fraction, check_positive_int
from calib.plotting import axes
from calib.selective import risk_coverage_curve

__all__ = ["RiskCoverageData", "prepare_risk_coverage", "plot_risk_coverage", "FrontierData",
           "prepare_completion_frontier", "plot_completion_frontier", "SliceData", "prepare_slices", "plot_slices",
           "slices_figure_size", "ComparisonData", "prepare_comparison", "plot_comparison", "check_policy_name",
           "MatchedData", "prepare_matched_comparison", "plot_matched_comparison"]

_SIZE = (4.5, 3.5)


@dataclasses.dataclass(frozen=True)
class RiskCoverageData:
    coverage: np.ndarray
    risk: np.ndarray
    chosen_coverage: float | None
    chosen_risk: float | None
    target_risk: float | None


def prepare_risk_coverage(confidence, correct, *, threshold=None, target_risk=None) -> RiskCoverageData:
    """Risk–coverage curve plus the operating point of ``threshold`` (answer when confidence >= threshold).

    >>> d = prepare_risk_coverage(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), threshold=0.85)
    >>> d.chosen_coverage, d.chosen_risk
    (0.3333333333333333, 0.0)
    """
    rc = risk_coverage_curve(confidence, correct)
    if target_risk is not None:
        target_risk = check_fraction(target_risk, "target_risk", inclusive=True)
    cov = risk = None
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
                or not np.isfinite(threshold):
            raise ValueError(f"Expected threshold as a finite number, got {threshold!r}.")
        c = np.asarray(confidence, dtype=np.float64)
        answered = c >= threshold
        cov = float(answered.mean())
        risk = float((~np.asarray(correct, bool)[answered]).mean()) if answered.any() else None
    return RiskCoverageData(rc.coverage, rc.risk, cov, risk, target_risk)


def plot_risk_coverage(data: RiskCoverageData, *, ax=None, label=None):
    ax = axes(ax, size=_SIZE)
    ax.plot(data.coverage, data.risk, lw=1.5, label=label or "selective risk")
    if data.target_risk is not None:
        ax.axhline(data.target_risk, color="tab:red", ls="--", lw=1, label=f"target r = {data.target_risk:g}")
    if data.chosen_coverage is not None:
        ax.axvline(data.chosen_coverage, color="k", ls=":", lw=1)
        if data.chosen_risk is not None:
            ax.plot([data.chosen_coverage], [data.chosen_risk], "ko", ms=5, label="chosen threshold (test)")
    ax.set_xlabel("coverage (share answered)")
    ax.set_ylabel("selective risk")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7)
    return ax


@dataclasses.dataclass(frozen=True)
class FrontierData:
    escalation_rate: np.ndarray
    completion_rate: np.ndarray
    point_escalation: float | None
    point_completion: float | None


def prepare_completion_frontier(confidence, correct, *, human_accuracy, point=None) -> FrontierData:
    """Task completion vs escalation rate when escalating the least confident items first (no fallback).

    completion(i answered) = (right among the i most confident + human_accuracy * (n - i)) / n.

    >>> d = prepare_completion_frontier(np.array([0.9, 0.8]), np.array([True, False]), human_accuracy=1.0)
    >>> d.escalation_rate.tolist(), d.completion_rate.tolist()
    ([1.0, 0.5, 0.0], [1.0, 1.0, 0.5])
    """
    human_accuracy = check_fraction(human_accuracy, "human_accuracy", inclusive=True)
    rc = risk_coverage_curve(confidence, correct)
    n = rc.errors.size
    i = np.arange(n + 1, dtype=np.float64)
    errors = np.r_[0.0, rc.errors]
    completion = (i - errors + human_accuracy * (n - i)) / n
    pe, pc = (None, None) if point is None else point
    return FrontierData(1.0 - i / n, completion, pe, pc)


def plot_completion_frontier(data: FrontierData, *, ax=None, label=None):
    ax = axes(ax, size=_SIZE)
    ax.plot(data.escalation_rate, data.completion_rate, lw=1.5, label=label or "threshold sweep")
    if data.point_escalation is not None:
        ax.plot([data.point_escalation], [data.point_completion], "ko", ms=5, label="policy")
    ax.set_xlabel("escalation rate")
    ax.set_ylabel("task-completion rate")
    ax.legend(fontsize=7)
    return ax


@dataclasses.dataclass(frozen=True)
class SliceData:
    """The bars of the slice figure, top to bottom: ``names`` (``slice_type=slice``), silent-failure
    ``rates``, ``flagged`` (red bars) and the ``target`` line (None: no line)."""

    names: tuple
    rates: np.ndarray
    flagged: np.ndarray
    target: float | None


def prepare_slices(table, *, target=None, top=20) -> SliceData:
    """The ``top`` first rows of a slice table (:func:`calib.evaluation.slices.silent_failure_slices`).

    >>> d = prepare_slices([{"slice_type": "class", "slice": "3", "silent_failure_rate": 0.1, "flagged": True}])
    >>> d.names, d.flagged.tolist()
    (('class=3',), [True])
    """
    top = check_positive_int(top, "top")
    if target is not None:
        target = check_fraction(target, "target", inclusive=True)
    rows = list(table)[:top]
    return SliceData(tuple(f"{r['slice_type']}={r['slice']}" for r in rows),
                     np.array([r["silent_failure_rate"] for r in rows], dtype=np.float64),
                     np.array([bool(r["flagged"]) for r in rows], dtype=bool), target)


def slices_figure_size(n_slices, top=20):
    """Figure size of the slice bars: 0.25 inch per bar (at most ``top``) plus room for the axis and legend."""
    return (5, max(2.6, 0.25 * min(n_slices, top) + 1.2))


def plot_slices(data, *, ax=None, target=None, top=20):
    """Horizontal bars of the silent-failure rate per slice (flagged slices in red), from :class:`SliceData`
    (or a slice table, with ``target`` and ``top``), with a legend saying what red means (the slice's exact
    binomial test against the target, Holm-corrected) and the target line. Slices are named
    ``class=<class name>`` when the table was built with class names."""
    from matplotlib.patches import Patch

    from calib.plotting.style import COLORS

    if not isinstance(data, SliceData):
        data = prepare_slices(data, target=target, top=top)
    ax = axes(ax, size=slices_figure_size(len(data.names), top))
    names = list(data.names[::-1])
    vals = data.rates[::-1].tolist()
    colors = [COLORS["flagged"] if f else COLORS["main"] for f in data.flagged[::-1]]
    ax.barh(np.arange(len(names)), vals, color=colors)
    ax.set_yticks(np.arange(len(names)), names)
    n_flagged = int(np.sum(data.flagged))
    handles = [Patch(color=COLORS["flagged"], label=f"flagged: above target, Holm-corrected binomial test "
                                                     f"({n_flagged})"),
               Patch(color=COLORS["main"], label="not flagged")]
    if data.target is not None:
        handles.append(ax.axvline(data.target, color=COLORS["reference"], ls="--", lw=1,
                                  label=f"target {data.target:g}"))
    ax.legend(handles=handles, loc="lower right")
    ax.set_xlabel("silent-failure rate (answered and wrong)")
    ax.tick_params(axis="y", labelsize=7)
    return ax


def _short_names(names):
    """Drop the prefix every name shares up to its last ``_`` (``cifar10_resnet20`` -> ``resnet20``)."""
    import os

    prefix = os.path.commonprefix(list(names)) if len(names) > 1 else ""
    cut = prefix.rfind("_") + 1
    return {n: n[cut:] or n for n in names}


def check_policy_name(rows, policy_name):
    """Raise a ValueError naming the models of ``rows`` that have no metrics for ``policy_name``."""
    missing = [r["model"] for r in rows if policy_name not in r["policies"]]
    if missing:
        raise ValueError(f"Unknown policy {policy_name!r} for models {missing}; "
                         f"valid options: {sorted(rows[0]['policies']) if rows else []}.")


@dataclasses.dataclass(frozen=True)
class ComparisonData:
    """Per model (short name): test accuracy, automation rate and its CI under ``policy_name``; per curve
    ``(label, coverage, risk)``; ``certified``: per model the policy's guarantee verdict (True / False, None:
    the policy certifies nothing)."""

    policy_name: str
    labels: tuple
    accuracy: np.ndarray
    automation_rate: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    curves: tuple
    target_risk: float | None
    certified: tuple = None

    @property
    def nothing_certified(self) -> bool:
        """Every model's policy has a guarantee and none certified its target (its automation rate is 0)."""
        return bool(self.certified) and all(c is False for c in self.certified)


def prepare_comparison(result, policy_name, *, target_risk=None) -> ComparisonData:
    """The plotted numbers of a :func:`calib.evaluation.compare.compare_models` result under ``policy_name``."""
    rows = result["rows"]
    check_policy_name(rows, policy_name)
    short = _short_names([r["model"] for r in rows])
    ms = [r["policies"][policy_name] for r in rows]
    return ComparisonData(
        policy_name, tuple(short[r["model"]] for r in rows),
        np.array([r["accuracy"] for r in rows], dtype=np.float64),
        np.array([m["automation_rate"] for m in ms], dtype=np.float64),
        np.array([m["ci"]["automation_rate"][0] for m in ms], dtype=np.float64),
        np.array([m["ci"]["automation_rate"][1] for m in ms], dtype=np.float64),
        tuple((short.get(name, name), rc.coverage, rc.risk) for name, rc in result["curves"].items()),
        target_risk, tuple((m.get("guarantee") or {}).get("certified") for m in ms))


def plot_comparison(result, policy_name=None, *, target_risk=None, title=None):
    """Two panels from :func:`calib.evaluation.compare.compare_models` (or :class:`ComparisonData`):
    automation rate (with its CI, axis from 0) against accuracy under ``policy_name``, one marker and colour per
    model named in the legend, "nothing certified" written when no model's policy certified its target; and
    every model's risk-coverage curve. ``title``: the figure's title (what and which data). Returns the
    figure."""
    import matplotlib.pyplot as plt

    data = result if isinstance(result, ComparisonData) else prepare_comparison(result, policy_name,
                                                                                  target_risk=target_risk)
    from calib.plotting import style

    style.apply()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if title is not None:
        fig.suptitle(title)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*Xh<>p"
    color_of = {}
    for i, (label, acc, rate, lo, hi) in enumerate(zip(data.labels, data.accuracy.tolist(),
                                                       data.automation_rate.tolist(), data.ci_low.tolist(),
                                                       data.ci_high.tolist())):
        color_of[label] = colors[i % len(colors)]
        # one colour and marker per model, named in the legend: labels never overlap, whatever the points do
        left.errorbar(100 * acc, 100 * rate, yerr=[[100 * max(rate - lo, 0.0)], [100 * max(hi - rate, 0.0)]],
                      fmt=markers[i % len(markers)], color=color_of[label], capsize=3, label=label,
                      clip_on=False)  # a point at 0 drawn whole on the axis
    top = float(np.nanmax(np.r_[data.ci_high, data.automation_rate])) if data.labels else 0.0
    left.set_ylim(0, min(100.0, max(5.0, 110 * top)))
    if data.labels:
        acc = 100 * data.accuracy
        pad = max(0.5, 0.1 * float(np.ptp(acc)))
        left.set_xlim(float(acc.min()) - pad, float(acc.max()) + pad)
    if data.nothing_certified:
        left.text(0.5, 0.5, "nothing certified at this target\n(no model's threshold passed the test)",
                  transform=left.transAxes, ha="center", va="center", color=style.COLORS["flagged"])
    left.set_xlabel("test accuracy (%)")
    left.set_ylabel(f"automation rate (%) at {data.policy_name}")
    left.set_title("share answered automatically at the same target")
    left.legend(loc="upper left", ncol=2 if len(data.labels) > 6 else 1)
    for label, coverage, risk in data.curves:
        right.plot(coverage, risk, lw=1, label=label, color=color_of.get(label))
    if data.target_risk is not None:
        right.axhline(data.target_risk, color=style.COLORS["reference"], ls="--", lw=1,
                      label=f"target r = {data.target_risk:g}")
    right.set_xlabel("coverage (share answered)")
    right.set_ylabel("selective risk")
    right.set_xlim(0, 1)
    right.set_ylim(0, None)
    right.legend(fontsize=6, ncol=2)
    right.set_title("risk vs coverage (test, calibrated max-prob)")
    fig.tight_layout()
    return fig


@dataclasses.dataclass(frozen=True)
class MatchedData:
    """The matched-operating-point figure: per model (short ``labels``) its task-completion vs escalation
    ``frontiers`` ``(label, escalation_rate, completion_rate)`` and, at each escalation budget of ``budgets``,
    ``completion`` (n_models, n_budgets) with ``completion_lo`` / ``completion_hi``; the paired completion
    differences ``diff_labels`` ("a − b @ point"), ``diff`` with ``diff_lo`` / ``diff_hi`` and
    ``distinguishable`` (False: the interval contains 0)."""

    labels: tuple
    frontiers: tuple
    budgets: np.ndarray
    completion: np.ndarray
    completion_lo: np.ndarray
    completion_hi: np.ndarray
    diff_labels: tuple
    diff: np.ndarray
    diff_lo: np.ndarray
    diff_hi: np.ndarray
    distinguishable: np.ndarray


def prepare_matched_comparison(result) -> MatchedData:
    """The plotted numbers of a :func:`calib.evaluation.compare.compare_models` result with ``matched``."""
    matched = result.get("matched") if isinstance(result, dict) else None
    if not matched:
        raise ValueError("Expected a compare_models result with matched operating points (budgets or target_risks "
                         f"given), got {'no matched entry' if isinstance(result, dict) else type(result).__name__}.")
    names = list(matched["models"])
    short = _short_names(names)
    frontiers = tuple((short[n], f.escalation_rate, f.completion_rate)
                      for n, f in (result.get("frontiers") or {}).items() if n in short)
    blocks = matched["budgets"]
    budgets = np.array([b["escalation_budget"] for b in blocks], dtype=np.float64)

    def grid(key, part=None):
        out = np.full((len(names), len(blocks)), np.nan)
        for j, b in enumerate(blocks):
            for i, n in enumerate(names):
                m = b["models"][n]
                v = m[key] if part is None else (m["ci"][key] or [np.nan, np.nan])[part]
                out[i, j] = np.nan if v is None else v
        return out

    dl, d, lo, hi, ok = [], [], [], [], []
    for b in blocks + matched["targets"]:
        point = (f"esc {100 * b['escalation_budget']:g}%" if "escalation_budget" in b else f"risk {b['target_risk']:g}")
        for row in b["differences"]:
            x = row["task_completion_rate"]
            if x["difference"] is None or x["ci"] is None:
                continue
            dl.append(f"{short[row['a']]} − {short[row['b']]} @ {point}")
            d.append(x["difference"])
            lo.append(x["ci"][0])
            hi.append(x["ci"][1])
            ok.append(bool(x["distinguishable"]))
    return MatchedData(tuple(short[n] for n in names), frontiers, budgets,
                       grid("task_completion_rate"), grid("task_completion_rate", 0), grid("task_completion_rate", 1),
                       tuple(dl), np.array(d, dtype=np.float64), np.array(lo, dtype=np.float64),
                       np.array(hi, dtype=np.float64), np.array(ok, dtype=bool))


def plot_matched_comparison(result, *, title=None):
    """Two panels from a :func:`calib.evaluation.compare.compare_models` result (or :class:`MatchedData`): each
    model's task completion against its escalation rate (escalating its least confident items first), with
    its operating points and paired-bootstrap intervals at the matched budgets; and every paired completion
    difference with its interval (grey: not distinguishable from 0). ``title``: the figure's title (what and
    which data). Returns the figure."""
    import matplotlib.pyplot as plt

    from calib.plotting import style

    style.apply()
    data = result if isinstance(result, MatchedData) else prepare_matched_comparison(result)
    n_diff = len(data.diff_labels)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(4.5, 0.22 * n_diff + 1.5)),
                                      gridspec_kw={"width_ratios": [1, 1.2]})
    if title is not None:
        fig.suptitle(title)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(data.labels):
        color = colors[i % len(colors)]
        for flabel, esc, comp in data.frontiers:
            if flabel == label:
                left.plot(100 * esc, 100 * comp, lw=1, color=color, label=label)
        if data.budgets.size:
            y = 100 * data.completion[i]
            left.errorbar(100 * data.budgets, y, yerr=[y - 100 * data.completion_lo[i], 100 * data.completion_hi[i] - y],
                          fmt="o", ms=4, capsize=3, color=color)
    for b in data.budgets.tolist():
        left.axvline(100 * b, color="k", ls=":", lw=0.8)
    if data.budgets.size:
        left.set_xlim(0, min(100, 100 * float(data.budgets.max()) * 1.6 + 5))
        lo = np.nanmin(data.completion_lo) if np.isfinite(data.completion_lo).any() else 0.0
        left.set_ylim(100 * max(0.0, lo - 0.03), 100.5)
    left.set_xlabel("escalation rate (%) — least confident items escalated first")
    left.set_ylabel("task completion (%)")
    left.set_title("matched escalation budgets (dotted): 95% paired-bootstrap intervals", fontsize=9)
    left.legend(fontsize=7)
    ys = np.arange(n_diff)[::-1]
    for y, d, lo, hi, ok in zip(ys, data.diff, data.diff_lo, data.diff_hi, data.distinguishable):
        right.errorbar([100 * d], [y], xerr=[[100 * (d - lo)], [100 * (hi - d)]], fmt="o", ms=4, capsize=3,
                       color="tab:blue" if ok else "0.6")
    right.axvline(0, color="k", lw=0.8)
    right.set_yticks(ys)
    right.set_yticklabels(data.diff_labels, fontsize=7)
    right.set_xlabel("Δ task completion, a − b (points of %); grey: not distinguishable (interval contains 0)")
    right.set_title("paired differences (same resampled test items)", fontsize=9)
    fig.tight_layout()
    return fig
