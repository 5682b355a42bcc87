"""The sweep summary figure (``summary.png`` of :func:`calib.evaluation.results.aggregate`): calibrated
test metrics per configuration, mean ± std over seeds, uncalibrated means marked.

:func:`calib.evaluation.results.summary_data` prepares :class:`SummaryData`; :func:`axis_limits` chooses each
panel's axis (clipped when one outlier would squash the rest); :func:`plot_summary` draws it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SummaryData", "axis_limits", "plot_summary", "plot_interval_table", "OUTLIER_FACTOR"]

#: A value larger than this many times the panel's median is an outlier: the axis is clipped below it and the
#: value written at the edge.
OUTLIER_FACTOR = 4.0


@dataclasses.dataclass(frozen=True)
class SummaryData:
    """One panel per metric, one bar per configuration (top to bottom).

    ``means``/``errors``: (n_metrics, n_configs) calibrated mean and std over seeds (0 for one seed);
    ``before``: per metric the uncalibrated means (n_configs,), or None when some configuration lacks them;
    ``title``: the settings shared by every run (None: no title).
    """

    metrics: tuple
    labels: tuple
    means: np.ndarray
    errors: np.ndarray
    before: tuple
    title: str | None = None


def axis_limits(data: SummaryData, factor=OUTLIER_FACTOR):
    """Per metric ``(upper limit, clipped)`` of its axis (which starts at 0, or at the smallest value when
    some are negative): the largest bar end (mean + std, and uncalibrated means) with 5 % room, or, when some
    value exceeds ``factor`` times the median of the panel's values, 1.25 times the largest value that does
    not (``clipped`` True: the larger values are written at the edge).

    >>> d = SummaryData(("nll",), ("a", "b", "c"), np.array([[0.3, 0.4, 9.0]]), np.zeros((1, 3)), (None,))
    >>> axis_limits(d)
    [(0.5, True)]
    """
    out = []
    for i in range(len(data.metrics)):
        ends = np.asarray(data.means[i], dtype=np.float64) + np.asarray(data.errors[i], dtype=np.float64)
        vals = ends if data.before[i] is None else np.r_[ends, np.asarray(data.before[i], dtype=np.float64)]
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            out.append((1.0, False))
            continue
        med = float(np.median(np.abs(vals)))
        big = vals > factor * med if med > 0 else np.zeros(vals.size, dtype=bool)
        if big.any() and (~big).any():
            out.append((1.25 * float(vals[~big].max()), True))
        else:
            top = float(vals.max())
            out.append((1.05 * top if top > 0 else 1.0, False))
    return out


def plot_summary(data: SummaryData, *, key_width=32):
    """Horizontal bars (calibrated, with std error bars) and open circles (uncalibrated), one panel per metric
    sharing the configuration axis (labels wrapped to ``key_width`` characters, written once); an axis that one
    outlier would squash is clipped (:func:`axis_limits`), the outlier's value written at the edge and the
    axis label saying so. The figure grows with the number of configurations and metrics. Returns the figure."""
    import matplotlib.pyplot as plt

    from calib.plotting import style

    style.apply()
    n_configs = len(data.labels)
    labels = [style.wrap_label(lab, width=key_width) for lab in data.labels]
    lines = max((lab.count("\n") + 1 for lab in labels), default=1)
    row_h = max(0.32, 0.16 * lines + 0.1)
    label_w = min(0.075 * max((max(map(len, lab.split("\n"))) for lab in labels), default=10), 2.6)
    n_metrics = len(data.metrics)
    fig, axs = plt.subplots(1, n_metrics, figsize=(label_w + 3.4 * n_metrics, row_h * n_configs + 1.6),
                            squeeze=False, sharey=True, layout="constrained")
    fig.suptitle("sweep summary: test metrics per configuration" + ("" if data.title is None else
                                                                     "\n" + style.wrap_label(data.title, 100, 2)))
    y = np.arange(n_configs)
    limits = axis_limits(data)
    for i, (ax, metric) in enumerate(zip(axs[0], data.metrics)):
        means = np.asarray(data.means[i], dtype=np.float64)
        errs = np.asarray(data.errors[i], dtype=np.float64)
        lim, clipped = limits[i]
        low = min(0.0, float(np.nanmin(means - errs)) * 1.05) if means.size else 0.0
        ax.barh(y, np.minimum(means, lim).tolist(), xerr=errs.tolist(), color=style.COLORS["main"], alpha=0.8,
                label="calibrated (mean ± std)")
        if data.before[i] is not None:
            b = np.asarray(data.before[i], dtype=np.float64)
            ax.plot(np.minimum(b, lim).tolist(), y, "o", mfc="none", color=style.COLORS["before"],
                    label="uncalibrated (mean)")
        if clipped:
            for j in np.flatnonzero(means + errs > lim):
                ax.annotate(f"{means[j]:.3g} ▶", (lim, y[j]), ha="right", va="center", fontsize=7,
                            color="white" if means[j] > lim else "black", fontweight="bold")
            if data.before[i] is not None:
                for j in np.flatnonzero(np.asarray(data.before[i]) > lim):
                    ax.annotate(f"uncal. {data.before[i][j]:.3g} ▶", (lim, y[j] + 0.3), ha="right", va="center",
                                fontsize=6, color=style.COLORS["before"])
        ax.set_xlim(low, lim)
        ax.set_xlabel(f"test {metric}" + (f"\n(axis clipped at {lim:.3g}; larger values written)" if clipped
                                          else ""))
        if i == 0:
            ax.set_yticks(y, labels, fontsize=7 if lines > 1 else 8)
    handles = {}
    for ax in axs[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    order = sorted(handles, key=lambda lab: lab.startswith("uncalibrated"))  # calibrated first
    fig.legend([handles[lab] for lab in order], order, loc="outside lower center", ncol=len(order))
    axs[0][0].invert_yaxis()
    return fig


def plot_interval_table(table, *, ax=None, which="calibrated"):
    """A calibrator x model table of :func:`calib.evaluation.notebook.prepare_interval_table`: one group per column value (x axis), one marker per row value, each with its 95 % interval as an error
    bar (``which``: ``"calibrated"`` or ``"difference"``, with a line at 0); returns the ax."""
    from calib._validation import check_choice
    from calib.plotting import axes

    if not all(hasattr(table, a) for a in ("point", "low", "high", "diff", "diff_low", "diff_high", "rows", "cols")):
        raise TypeError(f"Expected table as an IntervalTable (calib.evaluation.notebook.prepare_interval_table), got "
                        f"{type(table).__name__}.")
    check_choice(which, "which", ("calibrated", "difference"))
    point, low, high = ((table.point, table.low, table.high) if which == "calibrated"
                        else (table.diff, table.diff_low, table.diff_high))
    n_rows, n_cols = point.shape
    ax = axes(ax, size=(max(5.0, 1.6 * n_cols + 1.5), 4))
    width = 0.7 / max(n_rows, 1)
    x = np.arange(n_cols, dtype=np.float64)
    for i, rv in enumerate(table.rows):
        xi = x - 0.35 + width * (i + 0.5)
        err = np.vstack([point[i] - low[i], high[i] - point[i]])
        ax.errorbar(xi, point[i], yerr=err, fmt="o", ms=4, capsize=3, label=rv, color=f"C{i % 10}")
    if which == "difference":
        ax.axhline(0.0, color="k", lw=0.8, ls="--")
    elif np.nanmin(low) >= 0:
        ax.set_ylim(bottom=0.0)
    ax.set_xticks(x)
    ax.set_xticklabels([str(c).removeprefix("builtin_") for c in table.cols], rotation=20, ha="right", fontsize=8)
    ax.set_xlabel(table.col_key)
    ylabel = table.metric if which == "calibrated" else f"{table.metric}: calibrated - uncalibrated"
    ax.set_ylabel(f"{ylabel} (test, 95% interval)")
    ax.legend(title=table.row_key, fontsize=7, title_fontsize=7)
    return ax
