"""The sweep summary figure (``summary.png`` of :func:`calib.evaluation.results.aggregate`): calibrated
test metrics per configuration, mean ± std over seeds, uncalibrated means marked.

:func:`calib.evaluation.results.summary_data` prepares :class:`SummaryData`; :func:`plot_summary` draws it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SummaryData", "plot_summary"]


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


def plot_summary(data: SummaryData):
    """Horizontal bars (calibrated, with std error bars) and open circles (uncalibrated); returns the figure."""
    import matplotlib.pyplot as plt

    n_configs = len(data.labels)
    fig, axs = plt.subplots(1, len(data.metrics), figsize=(5 * len(data.metrics), 0.45 * n_configs + 1.5),
                            squeeze=False, layout="constrained")
    if data.title is not None:
        fig.suptitle(data.title, fontsize=8)
    y = np.arange(n_configs)
    for i, (ax, metric) in enumerate(zip(axs[0], data.metrics)):
        ax.barh(y, data.means[i].tolist(), xerr=data.errors[i].tolist(), color="tab:blue", alpha=0.8,
                label="calibrated")
        if data.before[i] is not None:
            ax.plot(data.before[i].tolist(), y, "o", mfc="none", color="tab:red", label="uncalibrated")
        ax.set_yticks(y, list(data.labels), fontsize=7)
        ax.set_xlabel(f"test {metric} (mean ± std over seeds)")
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    return fig
