"""What the analysis notebooks (``notebooks/*.ipynb``) need more than once: tables of finished runs, as text.

* :func:`load_sweep` — the tidy rows of a finished Hydra multirun folder (:mod:`calib.evaluation.results`), with
  a column for each named config group even when the sweep did not override it (a ``model_comparison`` sweep
  keeps the preset's calibrator), and the failed jobs.
* :func:`prepare_interval_table` — one calibration metric per (``row_key``, ``col_key``) cell of a finished
  sweep (e.g. calibrator x model), from the tidy rows of :func:`calib.evaluation.results.tidy_rows`, with the
  run's percentile bootstrap 95 % intervals (``calibration_ci`` of its metrics.json: calibrated, uncalibrated
  and their paired difference). :func:`interval_markdown` writes it as a markdown table;
  :meth:`IntervalTable.summary_lines` as plain sentences; :func:`plot_interval_table` draws it on an ``ax``.
* :func:`metrics_table` — chosen entries of several metrics dicts (one per configuration) as a markdown table.

No maths here beyond reading the numbers a run wrote; the intervals are those of
:func:`calib.evaluation.intervals.calibration_bootstrap` (conditional on the fitted calibrator: they describe
test-set sampling, not the calibration split). matplotlib is imported inside :func:`plot_interval_table` only.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import numpy as np

__all__ = ["Sweep", "load_sweep", "IntervalTable", "prepare_interval_table", "interval_markdown", "plot_interval_table",
           "metrics_table"]

_CI = "calibration_ci"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A finished sweep as :func:`load_sweep` reads it: ``header``/``rows`` as
    :func:`calib.evaluation.results.tidy_rows` (plus the ``keys`` columns), ``n_runs`` complete runs and
    ``failed`` (:func:`calib.evaluation.results.find_jobs`: one dict per failed or incomplete job)."""

    sweep_dir: str
    header: list
    rows: list
    n_runs: int
    failed: list


def load_sweep(sweep_dir, *, keys=()):
    """Every complete run of the multirun folder ``sweep_dir`` as tidy rows (:class:`Sweep`).

    ``keys``: config keys that must be columns (e.g. ``("calibrator", "data")``): an override key is one
    already; any other is filled from the run's Hydra choices (``calibrator`` -> ``temperature``) or its
    resolved config (a dotted key), as :func:`calib.evaluation.results.tidy_rows` fills override keys that only
    some runs set. Raises FileNotFoundError for a missing folder and ValueError when it holds no complete run.
    """
    from pathlib import Path

    from calib.evaluation import results

    if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
        raise TypeError(f"Expected keys as a list of config keys (str), got {keys!r:.60}.")
    sweep_dir = results.check_sweep_dir(sweep_dir)
    run_dirs, failed = results.find_jobs(sweep_dir)
    if not run_dirs:
        raise ValueError(f"Expected at least one complete run under {str(sweep_dir)!r}, got none "
                         f"({len(failed)} failed or incomplete job folders).")
    runs = [results.load_run(d, Path(sweep_dir)) for d in run_dirs]
    header, rows = results.tidy_rows(runs)
    extra = [k for k in keys if k not in header]
    if extra:
        by_name = {run["run"]: run for run in runs}
        for row in rows:
            row.update({k: results.fill_key(by_name[row["run"]], k) for k in extra})
        at = header.index("seed")
        header = [*header[:at], *extra, *header[at:]]
    return Sweep(str(sweep_dir), header, rows, len(runs), failed)


@dataclasses.dataclass(frozen=True)
class IntervalTable:
    """One metric of a sweep, a cell per (row value, column value) of one seed, with 95 % intervals.

    Arrays are float64 (n_rows, n_cols), NaN where the sweep has no such run. ``point``/``low``/``high``: the
    calibrated test metric and its percentile bootstrap interval; ``before``/``before_low``/``before_high``:
    the uncalibrated one; ``diff``/``diff_low``/``diff_high``: calibrated - uncalibrated and the interval of
    that paired difference (same resampled test items for both). ``seed``: the seed whose runs are shown.
    """

    row_key: str
    col_key: str
    metric: str
    seed: str
    rows: tuple
    cols: tuple
    point: np.ndarray
    low: np.ndarray
    high: np.ndarray
    before: np.ndarray
    before_low: np.ndarray
    before_high: np.ndarray
    diff: np.ndarray
    diff_low: np.ndarray
    diff_high: np.ndarray

    def summary_lines(self):
        """One sentence per column: the row with the lowest calibrated point estimate, and for how many rows the
        interval of the change from uncalibrated lies entirely below 0 / above 0 / contains 0."""
        lines = []
        for j, col in enumerate(self.cols):
            filled = np.flatnonzero(np.isfinite(self.point[:, j]))
            if filled.size == 0:
                lines.append(f"{col}: no run.")
                continue
            best = int(filled[np.argmin(self.point[filled, j])])
            below = int(np.sum(self.diff_high[filled, j] < 0))
            above = int(np.sum(self.diff_low[filled, j] > 0))
            which = ("lowest calibrated {m} (point estimate) with" if filled.size > 1 else "calibrated {m} with"
                     ).format(m=self.metric)
            lines.append(
                f"{col}: {which} {self.rows[best]} "
                f"({_num(self.point[best, j])} [{_num(self.low[best, j])}, {_num(self.high[best, j])}]; "
                f"uncalibrated {_num(self.before[best, j])}); the 95% interval of the change lies below 0 for "
                f"{below} of {filled.size} {self.row_key} values, above 0 for {above}, and contains 0 for "
                f"{filled.size - below - above}.")
        return lines


def _num(x, decimals=4):
    from calib.evaluation.results import format_number

    return format_number(x, decimals=decimals)


def _check_key(name, value):
    if not isinstance(value, str) or not value:
        raise TypeError(f"Expected {name} as a non-empty str, got {type(value).__name__} {value!r}.")
    return value


def prepare_interval_table(rows, *, row_key, col_key, metric="ece", seed=None) -> IntervalTable:
    """:class:`IntervalTable` of ``metric`` from tidy sweep rows (:func:`calib.evaluation.results.tidy_rows`).

    ``row_key``/``col_key``: two override keys of the sweep (e.g. ``"calibrator"``, ``"data"``). ``seed``: the
    seed whose runs fill the cells (a str or int; None: the smallest seed in the sweep) — each run's interval is
    its own bootstrap, so runs of several seeds are not averaged into one cell. Raises ValueError when a key,
    the metric or the runs' ``calibration_ci`` (``eval.calibration_bootstrap=0``) are missing, or when two runs
    of the seed share a cell (another override varies: filter ``rows`` first).
    """
    _check_key("row_key", row_key)
    _check_key("col_key", col_key)
    _check_key("metric", metric)
    rows = list(rows)
    if not rows:
        raise ValueError("Expected rows as the tidy rows of a sweep (calib.evaluation.results.tidy_rows), got none.")
    for name, key in (("row_key", row_key), ("col_key", col_key)):
        if key not in rows[0]:
            columns = [k for k in rows[0] if k not in ("run", "seed", "split", "metric", "value")]
            raise ValueError(f"Expected {name} as an override key of the sweep, one of {columns}, got {key!r}.")
    seeds = sorted({str(r["seed"]) for r in rows}, key=lambda s: (not s.lstrip("-").isdigit(), int(s)
                                                                   if s.lstrip("-").isdigit() else 0, s))
    if seed is None:
        seed = seeds[0]
    elif str(seed) not in seeds:
        raise ValueError(f"Expected seed as one of the sweep's seeds {seeds}, got {seed!r}.")
    seed = str(seed)
    wanted = {("calibrated", metric): "point", ("uncalibrated", metric): "before"}
    for split in ("calibrated", "uncalibrated", "difference"):
        for i, end in enumerate(("low", "high")):
            wanted[(_CI, f"{split}.{metric}[{i}]")] = {"calibrated": end, "uncalibrated": f"before_{end}",
                                                       "difference": f"diff_{end}"}[split]
    cells = defaultdict(dict)
    runs_of = defaultdict(set)
    for r in rows:
        if str(r["seed"]) != seed:
            continue
        field = wanted.get((r["split"], r["metric"]))
        if field is None:
            continue
        cell = (str(r[row_key]), str(r[col_key]))
        runs_of[cell].add(r["run"])
        cells[cell][field] = float(r["value"])
    if not any("point" in v for v in cells.values()):
        raise ValueError(f"Expected metric as a calibrated metric of the sweep's runs, got {metric!r}: no run of seed "
                         f"{seed} has it.")
    if not any("low" in v for v in cells.values()):
        raise ValueError(f"Expected runs with calibration_ci intervals of {metric!r}, got none: run the sweep with "
                         "eval.calibration_bootstrap > 0 (the default).")
    shared = {c: sorted(r) for c, r in runs_of.items() if len(r) > 1}
    if shared:
        cell, names = next(iter(shared.items()))
        raise ValueError(f"Expected one run per ({row_key}, {col_key}) cell for seed {seed}, got {len(names)} for "
                         f"{cell}: {names}; another override varies, filter the rows first.")
    row_values = tuple(sorted({c[0] for c in cells}))
    col_values = tuple(sorted({c[1] for c in cells}))
    fields = ("point", "low", "high", "before", "before_low", "before_high", "diff", "diff_low", "diff_high")
    arrays = {f: np.full((len(row_values), len(col_values)), np.nan) for f in fields}
    for (rv, cv), values in cells.items():
        i, j = row_values.index(rv), col_values.index(cv)
        for f, v in values.items():
            arrays[f][i, j] = v
    arrays["diff"] = arrays["point"] - arrays["before"]
    return IntervalTable(row_key, col_key, metric, seed, row_values, col_values, **arrays)


def _interval_cell(p, lo, hi, decimals, mark_zero=False):
    if not math.isfinite(p):
        return "-"
    text = f"{_num(p, decimals)} [{_num(lo, decimals)}, {_num(hi, decimals)}]"
    if mark_zero and math.isfinite(lo) and math.isfinite(hi) and lo <= 0 <= hi:
        text += " (contains 0)"
    return text


def interval_markdown(table: IntervalTable, *, which="calibrated", decimals=4):
    """``table`` as markdown: a row per ``row_key`` value, a column per ``col_key`` value, cells
    ``value [low, high]``.

    ``which``: ``"calibrated"`` (with an ``uncalibrated`` first row when it is the same run data in every row of
    a column, as for a sweep of calibrators on the same splits), ``"difference"`` (calibrated - uncalibrated;
    cells whose interval contains 0 are marked ``(contains 0)``: not distinguishable from no change).
    """
    from calib._validation import check_choice, check_positive_int

    if not isinstance(table, IntervalTable):
        raise TypeError(f"Expected table as an IntervalTable (prepare_interval_table), got {type(table).__name__}.")
    check_choice(which, "which", ("calibrated", "difference"))
    decimals = check_positive_int(decimals, "decimals")
    what = "calibrated - uncalibrated" if which == "difference" else "calibrated"
    lines = [f"{table.metric} ({what}, test part) [95% bootstrap interval], seed {table.seed}", "",
             "| " + " | ".join([table.row_key, *table.cols]) + " |", "|" + "---|" * (len(table.cols) + 1)]
    if which == "calibrated":
        b, bl, bh = table.before, table.before_low, table.before_high
        same = all(np.unique(col[np.isfinite(col)]).size <= 1 for col in b.T)
        if same:
            first = [int(np.flatnonzero(np.isfinite(b[:, j]))[0]) if np.isfinite(b[:, j]).any() else 0
                     for j in range(b.shape[1])]
            lines.append("| uncalibrated | " + " | ".join(
                _interval_cell(b[i, j], bl[i, j], bh[i, j], decimals) for j, i in enumerate(first)) + " |")
        arrays = (table.point, table.low, table.high)
    else:
        arrays = (table.diff, table.diff_low, table.diff_high)
    for i, rv in enumerate(table.rows):
        cells = [_interval_cell(arrays[0][i, j], arrays[1][i, j], arrays[2][i, j], decimals,
                                mark_zero=which == "difference") for j in range(len(table.cols))]
        lines.append("| " + " | ".join([rv, *cells]) + " |")
    return "\n".join(lines)


def _lookup(metrics, path):
    node = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _format_value(value, decimals):
    from calib.evaluation.results import format_number

    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_number(value, decimals=decimals)
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v, decimals) for v in value) if value else "(none)"
    return str(value).replace("|", "\\|")


def metrics_table(named_metrics, columns, *, decimals=4, first="configuration"):
    """A markdown table: a row per ``name -> metrics dict`` of ``named_metrics`` (e.g. ``{"lac":
    res.metrics}``), a column per ``(header, dotted path)`` of ``columns`` (e.g. ``("coverage p-value",
    "conformal.coverage_test.p_value")``).

    Floats via :func:`calib.evaluation.results.format_number`, ints as they are, bools as yes/no, lists joined
    by commas; ``-`` where one dict lacks the path. Raises ValueError naming a path no dict has (a typo).

    >>> print(metrics_table({"a": {"x": {"y": 0.5}, "n": 3}}, [("y", "x.y"), ("n", "n")]))
    | configuration | y | n |
    |---|---|---|
    | a | 0.5000 | 3 |
    """
    from calib._validation import check_positive_int

    if not isinstance(named_metrics, dict) or not named_metrics:
        raise TypeError(f"Expected named_metrics as a non-empty dict of name -> metrics dict, got "
                        f"{type(named_metrics).__name__} {named_metrics!r:.60}.")
    bad = [n for n, m in named_metrics.items() if not isinstance(m, dict)]
    if bad:
        raise TypeError(f"Expected named_metrics values as metrics dicts, got {type(named_metrics[bad[0]]).__name__} "
                        f"for {bad[0]!r}.")
    columns = list(columns)
    if not columns or not all(isinstance(c, (tuple, list)) and len(c) == 2 and all(isinstance(s, str) for s in c)
                              for c in columns):
        raise ValueError(f"Expected columns as a non-empty list of (header, dotted path) str pairs, got "
                         f"{columns!r:.80}.")
    decimals = check_positive_int(decimals, "decimals")
    for header, path in columns:
        if all(_lookup(m, path) is _MISSING for m in named_metrics.values()):
            raise ValueError(f"Expected each column's path in some metrics dict, got {path!r} (column {header!r}) "
                             f"in none of {list(named_metrics)}.")
    lines = ["| " + " | ".join([first, *(h for h, _ in columns)]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, m in named_metrics.items():
        cells = [("-" if (v := _lookup(m, path)) is _MISSING else _format_value(v, decimals)) for _, path in columns]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)
