"""Sweep results: collect every run of a Hydra multirun folder into one tidy table, a summary and a figure.

Used by ``experiments/aggregate.py``. Reads each run's ``metrics.json`` and ``.hydra/overrides.yaml`` (plus
``.hydra/hydra.yaml`` for the group choices and ``.hydra/config.yaml`` for the seed) and writes:

* ``results.csv``: one row per run x split x metric (columns ``run``, one per override key, ``seed``,
  ``split``, ``metric``, ``value``). Splits are the sections of metrics.json: ``uncalibrated``,
  ``calibrated``, ``calibrator`` (fitted scalars), conformal/policy sections when present, ``info``.
* ``summary.md``: per configuration (the overrides except ``seed``), mean ± sample std over seeds of each
  section's scalar metrics (list entries and nested values are in results.csv only).
* ``summary.png``: calibrated ECE and NLL per configuration (error bars: std over seeds), uncalibrated marked
  (prepared here by :func:`summary_data`, drawn by :func:`calib.plotting.results.plot_summary`).
* ``published.md``: our numbers beside published ones (a YAML table such as ``conf/published/kull2019.yaml``),
  with deltas.

Nothing is left out silently: a job folder (it holds ``.hydra/overrides.yaml``) without ``metrics.json`` (the job
failed, was killed or still runs), with an unreadable one, or whose ``metrics.json`` ``artifact_id`` is not its
``artifact/``'s :func:`calib.artifacts.content_id` (outputs of two different runs) is listed as failed or incomplete, with its overrides and
the last ERROR line of its log (``<job>/<task>.log``), in the result, ``summary.md`` and by ``aggregate.py``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SPLIT_ORDER = ("uncalibrated", "calibrated")
_SKIP_SECTIONS = ("data_fingerprint",)
_MAX_LIST = 20  # lists of scalars up to this length are indexed as metric[i]; longer ones (per class) skipped


def _load_yaml(path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _parse_override(text):
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def _flatten(prefix, value, out):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        out[prefix] = float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list) and len(value) <= _MAX_LIST:
        for i, item in enumerate(value):
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                out[f"{prefix}[{i}]"] = float(item)


def metric_sections(metrics):
    """``{split: {metric: value}}`` from a metrics.json dict (numeric leaves only, nested keys dotted)."""
    sections = defaultdict(dict)
    for key, value in metrics.items():
        if key in _SKIP_SECTIONS:
            continue
        if isinstance(value, dict):
            _flatten("", value, sections[key])
        else:
            _flatten(key, value, sections["info"])
    return {k: v for k, v in sections.items() if v}


def check_sweep_dir(sweep_dir):
    """``sweep_dir`` as a Path; FileNotFoundError naming it when it is missing or not a folder."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise FileNotFoundError(f"Expected a sweep folder at {str(sweep_dir)!r}, got no such folder.")
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"Expected a sweep folder at {str(sweep_dir)!r}, got a file.")
    return sweep_dir


_ERROR_MARKERS = ("[ERROR]", "[CRITICAL]")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit))(: .*)?$")
_MAX_ERROR = 500


def last_error_line(job_dir):
    """The last ERROR line of the job's log (``<job_dir>/*.log``, e.g. calibrate.log), its message part only;
    else the last line that looks like an exception (``ValueError: ...``); None when there is neither."""
    found = None
    for log_file in sorted(Path(job_dir).glob("*.log"), key=lambda p: p.stat().st_mtime):
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        marked = [ln for ln in lines if any(m in ln for m in _ERROR_MARKERS)]
        if marked:
            line = marked[-1]
            found = line.split("] - ", 1)[1] if "] - " in line else line
            continue
        plain = [ln.strip() for ln in lines if _EXCEPTION_LINE.match(ln.strip())]
        if plain:
            found = plain[-1]
    if found is not None and len(found) > _MAX_ERROR:
        found = found[:_MAX_ERROR] + " ..."
    return found


def _read_overrides(job_dir):
    try:
        overrides = _load_yaml(job_dir / ".hydra" / "overrides.yaml")
        return [str(o) for o in overrides] if isinstance(overrides, list) else [str(overrides)]
    except Exception as err:  # a half-written or edited file: report, do not fail the whole aggregation
        return [f"(unreadable .hydra/overrides.yaml: {type(err).__name__}: {err})"]


def _job_problem(job_dir):
    """None when ``job_dir`` holds a complete run, else why not (one line)."""
    metrics_path = job_dir / "metrics.json"
    if not metrics_path.is_file():
        return "no metrics.json: the job failed, was killed or is still running"
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable metrics.json ({type(err).__name__}: {err})"
    if not isinstance(metrics, dict):
        return f"metrics.json holds a {type(metrics).__name__}, not an object"
    artifact_id = metrics.get("artifact_id")
    if artifact_id is None:
        return None  # written before artifact ids (older calib): the pairing cannot be checked (logged by find_jobs)
    from calib import artifacts

    try:
        actual = artifacts.content_id(artifacts.read_manifest(job_dir / "artifact"))
    except (OSError, ValueError) as err:
        return f"metrics.json names artifact {artifact_id[:12]}… but artifact/ is missing or unreadable ({err})"
    if actual != artifact_id:
        return (f"metrics.json belongs to artifact {artifact_id[:12]}… but artifact/ holds {actual[:12]}…: "
                "outputs of two different runs")
    return None


def find_jobs(sweep_dir):
    """``(runs, failed)`` under ``sweep_dir``.

    A job folder holds ``.hydra/overrides.yaml``. ``runs``: the complete ones (sorted paths): metrics.json
    readable and, when it carries an ``artifact_id``, the ``content_id`` of ``artifact/``. ``failed``:
    one dict per other job folder with ``run`` (folder relative to ``sweep_dir``), ``overrides`` (list of
    str), ``reason`` and ``error`` (the last ERROR line of its log, or None).
    """
    sweep_dir = check_sweep_dir(sweep_dir)
    job_dirs = sorted({p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"})
    jobs = set(job_dirs)
    for path in sorted(sweep_dir.rglob("metrics.json")):
        if path.parent not in jobs:
            log.warning("Skipping %s: no .hydra/overrides.yaml beside it (not a Hydra job folder).", path)
    runs, failed, legacy = [], [], 0
    for job_dir in job_dirs:
        problem = _job_problem(job_dir)
        if problem is None:
            runs.append(job_dir)
            if "artifact_id" not in json.loads((job_dir / "metrics.json").read_text()):
                legacy += 1
            continue
        failed.append({"run": job_dir.relative_to(sweep_dir).as_posix(), "overrides": _read_overrides(job_dir),
                       "reason": problem, "error": last_error_line(job_dir)})
    if legacy:
        log.info("%d of %d runs have no artifact_id (written by an older calib): their pairing with artifact/ is not "
                 "checked.", legacy, len(runs))
    return runs, failed


def find_runs(sweep_dir):
    """Every complete run folder under ``sweep_dir`` (see :func:`find_jobs`; failed jobs are not in it)."""
    return find_jobs(sweep_dir)[0]


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def failed_markdown(failed, n_jobs):
    """The "Failed or incomplete jobs" section of summary.md (empty string when there are none)."""
    if not failed:
        return ""
    lines = [f"## Failed or incomplete jobs ({len(failed)} of {n_jobs}; not in the tables above)", "",
             "| job | overrides | problem | last error in the job's log |", "|---|---|---|---|"]
    for job in failed:
        lines.append(f"| {_cell(job['run'])} | {_cell(' '.join(job['overrides']) or '(defaults)')} | "
                     f"{_cell(job['reason'])} | {_cell(job['error'] or '(none found)')} |")
    return "\n".join(lines) + "\n"


def load_run(run_dir, sweep_dir):
    """One run as a dict: run, overrides (key -> value), choices (group -> option), seed, metrics."""
    hydra_dir = run_dir / ".hydra"
    overrides = dict(_parse_override(o) for o in _load_yaml(hydra_dir / "overrides.yaml"))
    choices = {}
    if (hydra_dir / "hydra.yaml").is_file():
        choices = _load_yaml(hydra_dir / "hydra.yaml")["hydra"]["runtime"]["choices"] or {}
    config = _load_yaml(hydra_dir / "config.yaml") if (hydra_dir / "config.yaml").is_file() else {}
    seed = overrides.get("seed", config.get("seed", ""))
    with open(run_dir / "metrics.json") as fh:
        metrics = json.load(fh)
    return {"run": run_dir.relative_to(sweep_dir).as_posix(), "overrides": overrides, "choices": choices,
            "config": config, "seed": str(seed), "metrics": metrics}


def fill_key(run, key):
    """The value of configuration key ``key`` for one loaded run: its override, else its Hydra group choice, else the
    value in its resolved config (JSON for a list or dict); '' when the run has none."""
    if key in run["overrides"]:
        return run["overrides"][key]
    if key in run["choices"] and run["choices"][key] is not None:
        return str(run["choices"][key])
    node = run["config"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    return json.dumps(node) if isinstance(node, (dict, list)) else str(node)


def override_columns(runs):
    """Override keys over all runs (minus seed, which has its own column), in first-seen order."""
    keys = []
    for run in runs:
        for key in run["overrides"]:
            if key != "seed" and key not in keys:
                keys.append(key)
    return keys


def tidy_rows(runs):
    """Rows of results.csv: run, <override keys>, seed, split, metric, value."""
    columns = override_columns(runs)
    rows = []
    for run in runs:
        base = {"run": run["run"], **{k: fill_key(run, k) for k in columns}, "seed": run["seed"]}
        for split, values in metric_sections(run["metrics"]).items():
            for metric, value in values.items():
                rows.append({**base, "split": split, "metric": metric, "value": value})
    return ["run", *columns, "seed", "split", "metric", "value"], rows


def write_csv(header, rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "value": repr(row["value"])})
    return buf.getvalue()


def _config_key(row, columns):
    return tuple((k, row[k]) for k in columns if k not in ("experiment",))


def _label(key, fixed=()):
    return ", ".join(f"{k}={v}" for k, v in key if k not in fixed) or "(defaults)"


def _fixed_keys(configs):
    """Override keys with one value over all configurations (shown once, not on every row)."""
    if len(configs) < 2:
        return set()
    values = {}
    for config in configs:
        for k, v in config:
            values.setdefault(k, set()).add(v)
    return {k for k, vs in values.items() if len(vs) == 1 and all(k in dict(c) for c in configs)}


def group_over_seeds(header, rows):
    """``{(config key, split, metric): [values over seeds]}`` in row order."""
    columns = header[1:header.index("seed")]
    groups = defaultdict(list)
    for row in rows:
        groups[(_config_key(row, columns), row["split"], row["metric"])].append(row["value"])
    return groups


def _mean_std(values):
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else math.nan), int(a.size)


def format_number(x, *, decimals=4, integer=False):
    """One number of a table, formatted by kind: ``integer`` (counts) as an integer (one decimal when a mean of
    counts is not whole), 0 and values of magnitude in ``[10**-(decimals-1), 1e5)`` with ``decimals`` fixed
    decimals, others (tiny or huge) with 3 significant digits; non-finite as ``nan`` / ``inf``.

    >>> [format_number(v) for v in (0.5, 1e-5, 0.000123, 0.0, 2.5e7, float("nan"))]
    ['0.5000', '1e-05', '0.000123', '0.0000', '2.5e+07', 'nan']
    >>> format_number(10216, integer=True), format_number(10216.5, integer=True), format_number(3.14159, decimals=2)
    ('10216', '10216.5', '3.14')
    """
    x = float(x)
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if integer:
        return f"{x:.0f}" if x.is_integer() else f"{x:.1f}"
    if x == 0 or 10.0 ** -(decimals - 1) <= abs(x) < 1e5:
        return f"{x:.{decimals}f}"
    return f"{x:.3g}"


def _is_count(values):
    """Every value an int (a count in metrics.json), not a bool."""
    return bool(values) and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                for v in values)


def _fmt(mean, std, *, integer=False):
    """``mean`` or ``mean ± std``, both formatted alike (:func:`format_number`: the std takes the mean's form, so
    a column reads at one precision)."""
    m = format_number(mean, integer=integer)
    if math.isnan(std):
        return m
    if integer:
        return f"{m} ± {std:.1f}"
    fixed = mean == 0 or 1e-3 <= abs(mean) < 1e5
    return f"{m} ± {std:.4f}" if fixed else f"{m} ± {std:.2g}"


def _is_scalar_name(metric):
    return "[" not in metric and "." not in metric


def summary_markdown(header, rows):
    """One markdown table per split: rows = configurations, cells = mean ± std over seeds.

    Only a section's own scalars are shown (not list entries ``x[i]`` or nested ``a.b`` values, e.g. per-class
    coverages or bootstrap intervals); results.csv has them all.
    """
    groups = {k: v for k, v in group_over_seeds(header, rows).items() if _is_scalar_name(k[2])}
    splits = [s for s in SPLIT_ORDER if any(g[1] == s for g in groups)]
    splits += sorted({g[1] for g in groups} - set(splits) - {"info"})
    lines = [f"# Sweep summary: mean ± std over seeds ({len({r['run'] for r in rows})} runs)", ""]
    all_configs = list(dict.fromkeys(g[0] for g in groups))
    fixed = _fixed_keys(all_configs)
    if fixed:
        lines += ["All runs: " + ", ".join(f"{k}={v}" for k, v in all_configs[0] if k in fixed), ""]
    for split in splits:
        metrics = list(dict.fromkeys(g[2] for g in groups if g[1] == split))
        configs = list(dict.fromkeys(g[0] for g in groups if g[1] == split))
        lines += [f"## {split}", "", "| configuration | seeds | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for config in configs:
            cells, n_seeds = [], 0
            for metric in metrics:
                values = groups.get((config, split, metric))
                if values is None:
                    cells.append("")
                    continue
                mean, std, n = _mean_std(values)
                n_seeds = max(n_seeds, n)
                cells.append(_fmt(mean, std, integer=_is_count(values)))
            lines.append(f"| {_label(config, fixed)} | {n_seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def summary_data(header, rows):
    """The numbers of summary.png (:class:`calib.plotting.results.SummaryData`): calibrated ECE and NLL per
    configuration (mean ± std over seeds), uncalibrated means; None when there is nothing to draw."""
    from calib.plotting.results import SummaryData

    groups = group_over_seeds(header, rows)
    configs = list(dict.fromkeys(g[0] for g in groups if g[1] == "calibrated"))
    metrics = [m for m in ("ece", "nll") if any(g[2] == m and g[1] == "calibrated" for g in groups)]
    if not configs or not metrics:
        return None
    fixed = _fixed_keys(configs)
    means, errors, befores = [], [], []
    for metric in metrics:
        stats = [_mean_std(groups[(c, "calibrated", metric)]) for c in configs]
        means.append([s[0] for s in stats])
        errors.append([0.0 if math.isnan(s[1]) else s[1] for s in stats])
        before = [groups.get((c, "uncalibrated", metric)) for c in configs]
        befores.append(np.array([_mean_std(b)[0] for b in before]) if all(b is not None for b in before) else None)
    title = ("All runs: " + ", ".join(f"{k}={v}" for k, v in configs[0] if k in fixed)) if fixed else None
    return SummaryData(tuple(metrics), tuple(_label(c, fixed) for c in configs), np.array(means), np.array(errors),
                       tuple(befores), title)


def summary_figure(header, rows, path):
    """Write summary.png: calibrated ECE and NLL per configuration (mean ± std over seeds), uncalibrated as
    open circles; returns ``path``, or None when no run has calibrated ECE or NLL."""
    from calib.plotting import save_figure
    from calib.plotting.results import plot_summary

    data = summary_data(header, rows)
    if data is None:
        return None
    save_figure(plot_summary(data), path, dpi=110, bbox_inches=None)
    return path


# --- published comparison -------------------------------------------------------------------------------

def _derived(section, n_classes):
    out = dict(section)
    if "accuracy" in section:
        out["error_pct"] = 100.0 * (1.0 - section["accuracy"])
    if "brier" in section and n_classes:
        out["brier_per_entry"] = section["brier"] / n_classes
    return out


def published_comparison(runs, published):
    """Rows (dataset, method, metric, ours, published, delta, n_runs) for every published value we can match.

    ``ours`` is the mean over the matching runs (data option x calibrator option; ``Uncalibrated`` uses the
    uncalibrated section of every run on that dataset).
    """
    methods = published["methods"]
    ours = defaultdict(lambda: defaultdict(list))  # (dataset, method) -> metric -> values
    for run in runs:
        data, calibrator = run["choices"].get("data"), run["choices"].get("calibrator")
        if data not in published["results"]:
            continue
        n_classes = run["metrics"].get("n_classes")
        for split, method in (("uncalibrated", methods.get("uncalibrated")), ("calibrated", methods.get(calibrator))):
            if method is None or split not in run["metrics"]:
                continue
            for metric, value in _derived(run["metrics"][split], n_classes).items():
                ours[(data, method)][metric].append(value)
    rows = []
    for dataset, table in published["results"].items():
        for method, values in table.items():
            found = ours.get((dataset, method))
            if not found:
                continue
            for metric, pub in values.items():
                if metric in found:
                    mean = float(np.mean(found[metric]))
                    rows.append((dataset, method, metric, mean, float(pub), mean - float(pub), len(found[metric])))
    return rows


def pivot_markdown(rows, *, row_key, col_key, split="calibrated", metrics=("nll", "ece", "classwise_ece", "brier")):
    """One markdown table: a row per ``row_key`` value, a column per (``col_key`` value, metric).

    Cells are means over seeds (and any other override) of ``split``'s metric; ``-`` when no run has it.

    >>> rows = [{"calibrator": "ts", "data": "a", "split": "calibrated", "metric": "nll", "value": 0.5}]
    >>> print(pivot_markdown(rows, row_key="calibrator", col_key="data", metrics=("nll",)))
    | calibrator | a nll |
    |---|---|
    | ts | 0.5000 |
    """
    cells = defaultdict(list)
    for row in rows:
        if row.get("split") == split and row.get("metric") in metrics:
            cells[(row.get(row_key, ""), row.get(col_key, ""), row["metric"])].append(row["value"])
    if not cells:
        raise ValueError(f"Expected runs with overrides {row_key!r} and {col_key!r} and {split!r} metrics "
                         f"{list(metrics)}, found none.")
    row_values = sorted({k[0] for k in cells})
    col_values = sorted({k[1] for k in cells})
    header = [f"{c} {m}" for c in col_values for m in metrics]
    lines = ["| " + " | ".join([row_key, *header]) + " |", "|" + "---|" * (len(header) + 1)]
    for r in row_values:
        vals = [cells.get((r, c, m)) for c in col_values for m in metrics]
        lines.append("| " + " | ".join([r, *("-" if v is None else format_number(np.mean(v), integer=_is_count(v))
                                              for v in vals)]) + " |")
    return "\n".join(lines)


def published_markdown(rows, source):
    lines = [f"# Ours vs published ({source})", "",
             "| dataset | method | metric | ours | published | delta (ours - published) | runs |",
             "|---|---|---|---|---|---|---|"]
    for dataset, method, metric, ours, pub, delta, n in rows:
        lines.append(f"| {dataset} | {method} | {metric} | {ours:.6f} | {pub:.6f} | {delta:+.6f} | {n} |")
    if not rows:
        lines.append("| (no run matches a published dataset x method) | | | | | | |")
    return "\n".join(lines) + "\n"


def _warn_duplicates(header, rows):
    columns = header[1:header.index("seed")]
    seen = defaultdict(set)
    for row in rows:
        seen[(_config_key(row, columns), row["seed"])].add(row["run"])
    for (config, seed), runs in seen.items():
        if len(runs) > 1:
            log.warning("%d runs share configuration %s and seed %s (%s): the summary averages them as if they were "
                        "different seeds.", len(runs), _label(config), seed or "(none)", ", ".join(sorted(runs)))


def aggregate(sweep_dir, out_dir=None, *, published=None, figure=True, published_presets=None, pivot=None):
    """Write results.csv, summary.md, summary.png (and published.md) for ``sweep_dir``; return their texts.

    ``published``: a YAML file of published numbers to compare with; when None, the file that
    ``published_presets`` (experiment preset name -> YAML path) names for the sweep's preset, if any.
    ``pivot``: ``(row_key, col_key)`` adds ``pivot.md``, one table of calibrated test metrics (see
    :func:`pivot_markdown`); both must be override keys of the sweep.

    The returned dict also holds ``n_runs``, ``failed`` (see :func:`find_jobs`) and ``n_failed``; failed jobs
    are listed at the end of summary.md. Raises FileNotFoundError for a missing ``sweep_dir`` and ValueError
    when it holds no complete run (the message lists the failed jobs).
    """
    from calib._atomic import write_text_atomic

    sweep_dir = check_sweep_dir(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir
    run_dirs, failed = find_jobs(sweep_dir)
    if not run_dirs:
        if failed:
            listing = "; ".join(f"{job['run']}: {job['error'] or job['reason']}" for job in failed[:10])
            raise ValueError(f"Expected at least one complete run under {str(sweep_dir)!r}, got none: all "
                             f"{len(failed)} job folders failed or are incomplete ({listing}"
                             f"{'; ...' if len(failed) > 10 else ''}).")
        raise ValueError(f"Expected run folders (metrics.json + .hydra/overrides.yaml) under {str(sweep_dir)!r}, "
                         "found none.")
    runs = [load_run(d, sweep_dir) for d in run_dirs]
    header, rows = tidy_rows(runs)
    if pivot is not None:
        columns = header[1:header.index("seed")]
        missing = [k for k in pivot if k not in columns]
        if len(pivot) != 2 or missing:
            raise ValueError(f"Expected pivot as two override keys of the sweep (ROW,COL) among {columns}, got "
                             f"{','.join(pivot)!r}.")
    _warn_duplicates(header, rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_markdown(header, rows)
    if failed:
        title, _, rest = summary.partition("\n")
        warning = (f"**{len(failed)} of {len(runs) + len(failed)} jobs failed or are incomplete; they are listed at "
                   "the end and are not in the tables.**")
        summary = (title + "\n\n" + warning + "\n" + rest).rstrip("\n") + "\n\n" + failed_markdown(
            failed, len(runs) + len(failed))
    result = {"n_runs": len(runs), "n_failed": len(failed), "failed": failed, "csv": write_csv(header, rows),
              "summary": summary}
    write_text_atomic(out_dir / "results.csv", result["csv"])
    write_text_atomic(out_dir / "summary.md", result["summary"])
    if figure:
        result["figure"] = summary_figure(header, rows, out_dir / "summary.png")
        if result["figure"] is None:
            log.warning("No summary.png: no run has calibrated ECE or NLL.")
    if pivot is not None:
        result["pivot"] = pivot_markdown(rows, row_key=pivot[0], col_key=pivot[1]) + "\n"
        write_text_atomic(out_dir / "pivot.md", result["pivot"])
    if published is None:
        presets = {run["choices"].get("experiment") for run in runs}
        table_of = published_presets or {}
        published = next((table_of[p] for p in presets if p in table_of), None)
    stale = [name for name, kept in (("summary.png", result.get("figure")), ("pivot.md", "pivot" in result),
                                      ("published.md", published)) if not kept and (out_dir / name).is_file()]
    for name in stale:  # left by an earlier aggregation: they would not match the new results.csv
        (out_dir / name).unlink()
    if stale:
        log.info("Removed %s of an earlier aggregation from %s.", ", ".join(stale), out_dir)
    if published:
        if not Path(published).is_file():
            raise FileNotFoundError(f"Expected a published-numbers YAML file at {str(published)!r}, got no such file.")
        table = _load_yaml(published)
        result["published"] = published_markdown(published_comparison(runs, table), table.get("source", published))
        write_text_atomic(out_dir / "published.md", result["published"])
    return result
