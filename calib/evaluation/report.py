"""report.html: one self-contained page per run and per sweep, for the people who decide whether a model ships.

    calib report RUN_OR_SWEEP_DIR [--out FILE]          # also written by calibrate.py and aggregate.py

A **run report** reads a run folder (``metrics.json``, the figures beside it, ``monitor/`` when the shift monitor
ran, ``.hydra/config.yaml``) and puts first what a product owner needs: the decision (automation / escalation /
fallback rates), task completion, silent failures and the slices where they concentrate, expected cost and time,
each with its interval and one plain sentence, and any guarantee that the test part contradicts; then the
specialist's details (calibration metrics with paired intervals, conformal coverage with its exact test,
selective metrics, the monitor). A **sweep report** reads a multirun folder (every complete job's
``metrics.json``, through :mod:`calib.evaluation.results`) and compares the configurations metric by metric
(:func:`calib.evaluation.sweep_compare.compare_configurations`): a difference whose interval contains zero is
marked *not distinguishable*.

The page is one HTML file: figures are inline ``data:`` PNGs, the style sheet is inline, there is no script, and
a Content-Security-Policy (``default-src 'none'``) forbids the browser any request. It is rendered with Jinja2
(autoescaping on: a data name or override value cannot inject markup). Each key number carries
``data-metric="<path in metrics.json>"`` and ``data-value="<the exact JSON number>"`` so a check (CI opens the
page in headless chromium) can compare the page with ``metrics.json``. Writes are atomic.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

__all__ = ["render_run_report", "render_sweep_report", "write_report", "report_kind", "PNG_MAX_BYTES",
           "fmt_pct", "fmt_num"]

#: largest figure embedded (bytes); a larger file is listed as skipped, not read
PNG_MAX_BYTES = 8 * 2**20
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: run-folder figures in page order: (file, caption)
RUN_FIGURES = {
    "decision": [("silent_failure_slices.png", "Silent failures per slice: bars past the line exceed the target."),
                 ("completion_frontier.png", "Task completion against escalation: the chosen operating point on "
                                             "the frontier of every threshold.")],
    "calibration": [("reliability.png", "Reliability on the test part, before and after calibration: a "
                                        "calibrated model's bars follow the diagonal.")],
    "conformal": [("conformal_coverage.png", "Coverage against the target for every α, with the exact "
                                             "finite-sample band."),
                  ("set_size_histogram.png", "How many classes the prediction sets hold."),
                  ("class_coverage.png", "Coverage per class: classes below the band miss the target.")],
    "selective": [("risk_coverage.png", "Error rate among answered items against the share answered.")],
    "monitor": [("prior_shift.png", "Class priors: calibration against the batch's estimate."),
                ("confidence_drift.png", "Confidence distribution: calibration against the batch."),
                ("policy_rates.png", "Routing rates at fit time against the batch."),
                ("novelty_by_class.png", "Items flagged unlike the calibration rows, per predicted class.")],
}

#: calibration metrics of the specialist table: (key, label, lower is better)
CALIBRATION_ROWS = (("accuracy", "accuracy", False), ("ece", "ECE (top label, 15 bins)", True),
                    ("ece_debiased", "debiased ECE", True), ("classwise_ece", "classwise ECE", True),
                    ("smece", "smooth ECE", True), ("nll", "NLL", True), ("brier", "Brier score", True))


# --- formatting (Jinja filters; the browser check formats metrics.json the same documented way) ------------------
def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_pct(x, digits=1):
    """A share as a percentage with ``digits`` decimals (``0.14235 -> '14.2%'``); non-numbers as ``n/a``.

    >>> fmt_pct(0.14235), fmt_pct(0.0007914, 2), fmt_pct(None)
    ('14.2%', '0.08%', 'n/a')
    """
    return f"{100 * x:.{digits}f}%" if _finite(x) else "n/a"


def fmt_num(x, digits=3):
    """A number with ``digits`` decimals (``-`` sign kept), tiny or huge ones with 3 significant digits.

    >>> fmt_num(0.68155), fmt_num(51.459, 1), fmt_num(1.2e-6), fmt_num(float("nan"))
    ('0.682', '51.5', '1.2e-06', 'n/a')
    """
    if not _finite(x):
        return "n/a"
    if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e6):
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def fmt_p(p):
    """A p-value: 3 significant digits, ``< 1e-300`` at the floor."""
    if not _finite(p):
        return "n/a"
    return "< 1e-300" if p < 1e-300 else f"{p:.3g}"


def _interval(ci):
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(v) for v in ci):
        return [float(ci[0]), float(ci[1])]
    return None


# --- reading ------------------------------------------------------------------------------------------------------
def _read_json(path, what):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"Expected {what} at {str(path)!r}, could not read it: {err.strerror or err}.") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"Expected {what} at {str(path)!r} as JSON, got invalid JSON ({err.msg}, line {err.lineno})."
                         ) from None
    if not isinstance(value, dict):
        raise ValueError(f"Expected {what} at {str(path)!r} as a JSON object, got {type(value).__name__}.")
    return value


def _png(path):
    """The figure at ``path`` as a ``data:`` URI, or None when absent; a non-PNG or oversized file is refused."""
    path = Path(path)
    if not path.is_file() or path.is_symlink():
        return None
    size = path.stat().st_size
    if size > PNG_MAX_BYTES:
        raise ValueError(f"Expected figure {str(path)!r} of at most {PNG_MAX_BYTES} bytes, got {size} bytes.")
    data = path.read_bytes()
    if not data.startswith(_PNG_MAGIC):
        raise ValueError(f"Expected figure {str(path)!r} as a PNG file, got other content.")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figures(folder, group):
    out = []
    for name, caption in RUN_FIGURES[group]:
        uri = _png(Path(folder) / name)
        if uri is not None:
            out.append({"name": name, "caption": caption, "uri": uri})
    return out


def _get(d, path):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _config_summary(run_dir):
    """(data name, calibrator, conformal, policy, the resolved config text) of a run folder's config."""
    for candidate in (Path(run_dir) / ".hydra" / "config.yaml", Path(run_dir) / "artifact" / "config.yaml"):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8", errors="replace")
            break
    else:
        return {}, None
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except Exception:  # a config that does not parse is shown as text only
        return {}, text
    if not isinstance(cfg, dict):
        return {}, text

    def target(node):
        return (node or {}).get("_target_", "").rsplit(".", 1)[-1] if isinstance(node, dict) else None

    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    info = {"data": data.get("name") or (Path(str(data["path"])).name if data.get("path") else None),
            "calibrator": target(cfg.get("calibrator")), "conformal": target(cfg.get("conformal")),
            "policy": target(cfg.get("policy")), "seed": cfg.get("seed")}
    return info, text


def report_kind(path):
    """``"run"`` (a folder with metrics.json) or ``"sweep"`` (a multirun folder); a clear error otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"Expected a run folder (with metrics.json) or a sweep folder, got {str(path)!r}: "
                         f"{'not a folder' if path.exists() else 'no such folder'}.")
    if (path / "metrics.json").is_file():
        return "run"
    from calib.evaluation.results import find_jobs

    runs, failed = find_jobs(path)
    if runs or failed:
        return "sweep"
    raise ValueError(f"Expected a run folder (with metrics.json) or a sweep folder (job folders with .hydra/), got "
                     f"{str(path)!r} holding neither: a run that failed writes no metrics.json (see its "
                     f"calibrate.log).")


# --- the run report ----------------------------------------------------------------------------------------------
def _metric(metrics, path, fmt="pct", digits=1, ci_path=None, proc_key=None):
    """One key number: its value, text, interval text and the attributes the browser check reads. ``proc_key``: its
    name in ``procedure_ci.ci`` (the interval that refits everything, when the run has one)."""
    value = _get(metrics, path)
    ci = _interval(_get(metrics, ci_path)) if ci_path else None
    proc = _interval(_get(metrics, f"procedure_ci.ci.{proc_key}")) if proc_key else None
    f = (lambda v: fmt_pct(v, digits)) if fmt == "pct" else (lambda v: fmt_num(v, digits))
    return {"path": path, "value": value, "json": json.dumps(value), "text": f(value),
            "ci": ci, "ci_text": None if ci is None else f"{f(ci[0])} – {f(ci[1])}",
            "proc_key": proc_key, "proc": proc, "proc_text": None if proc is None else f"{f(proc[0])} – {f(proc[1])}"}


def _decision(metrics):
    pol = metrics.get("policy")
    if not isinstance(pol, dict):
        return None
    costs = pol.get("costs") or {}
    keys = {k: _metric(metrics, f"policy.{k}", ci_path=f"policy.ci.{k}", proc_key=k)
            for k in ("automation_rate", "escalation_rate", "fallback_rate", "task_completion_rate",
                      "silent_failure_rate", "selective_risk", "recovery_rate")}
    keys["silent_failure_rate"] = _metric(metrics, "policy.silent_failure_rate", digits=2,
                                          ci_path="policy.ci.silent_failure_rate", proc_key="silent_failure_rate")
    keys["selective_risk"] = _metric(metrics, "policy.selective_risk", digits=2, ci_path="policy.ci.selective_risk",
                                     proc_key="selective_risk")
    keys["expected_cost"] = _metric(metrics, "policy.expected_cost", fmt="num", digits=3,
                                    ci_path="policy.ci.expected_cost", proc_key="expected_cost")
    keys["expected_time"] = _metric(metrics, "policy.expected_time", fmt="num", digits=1,
                                    ci_path="policy.ci.expected_time", proc_key="expected_time")
    keys["model_accuracy"] = _metric(metrics, "policy.model_accuracy")
    n = pol.get("n")
    sf = pol.get("silent_failure_rate")
    slices = pol.get("slices") or {}
    top = [r for r in (slices.get("top") or []) if isinstance(r, dict)]
    total_silent = round(sf * n) if _finite(sf) and isinstance(n, int) else None
    rows = []
    for r in top:
        k = r.get("silent_failures")
        rows.append({**r, "share_of_all": (k / total_silent) if total_silent and isinstance(k, int) else None})
    guarantee = pol.get("guarantee") or {}
    risk_test = pol.get("test_risk_test") or None
    return {"kind": pol.get("kind"), "n": n, "keys": keys, "costs": costs, "slices": rows,
            "slices_target": slices.get("target"), "n_slices": slices.get("n_slices"),
            "n_flagged": len(slices.get("flagged") or []), "total_silent": total_silent,
            "guarantee": guarantee, "risk_test": risk_test, "ci_method": pol.get("ci_method"),
            "procedure": metrics.get("procedure_ci") if isinstance(metrics.get("procedure_ci"), dict) else None}


def _calibration(metrics):
    before, after = metrics.get("uncalibrated") or {}, metrics.get("calibrated") or {}
    ci = metrics.get("calibration_ci") or {}
    rows = []
    for key, label, lower in CALIBRATION_ROWS:
        if key not in after:
            continue
        diff_ci = _interval(_get(ci, f"difference.{key}"))
        verdict = None
        if diff_ci is not None:
            verdict = ("not distinguishable" if diff_ci[0] <= 0 <= diff_ci[1] else
                       "better" if (diff_ci[1] < 0) == lower else "worse")
        rows.append({"key": key, "label": label,
                     "before": _metric(metrics, f"uncalibrated.{key}", fmt="num", digits=4,
                                       ci_path=f"calibration_ci.uncalibrated.{key}"),
                     "after": _metric(metrics, f"calibrated.{key}", fmt="num", digits=4,
                                      ci_path=f"calibration_ci.calibrated.{key}"),
                     "diff_ci": None if diff_ci is None else f"{fmt_num(diff_ci[0], 4)} – {fmt_num(diff_ci[1], 4)}",
                     "verdict": verdict})
    params = {k: v for k, v in (metrics.get("calibrator") or {}).items() if _finite(v) or isinstance(v, str)}
    return {"rows": rows, "params": params, "method": ci.get("method"), "level": ci.get("level")}


def _conformal(metrics):
    c = metrics.get("conformal")
    if not isinstance(c, dict):
        return None
    test = c.get("coverage_test") or {}
    cls = c.get("class_coverage_test") or {}
    return {"kind": c.get("kind"), "score": c.get("score"), "alpha": c.get("alpha"),
            "coverage": _metric(metrics, "conformal.coverage"),
            "mean_set_size": _metric(metrics, "conformal.mean_set_size", fmt="num", digits=2),
            "singleton_rate": _metric(metrics, "conformal.singleton_rate"),
            "empty_rate": _metric(metrics, "conformal.empty_rate"),
            "min_class_coverage": _metric(metrics, "conformal.min_class_coverage"),
            "test": test, "class_test": cls}


def _monitor(run_dir):
    path = Path(run_dir) / "monitor" / "monitor.json"
    if not path.is_file():
        return None
    report = _read_json(path, "the shift monitor's report")
    alarms = [a for a in (report.get("alarms") or []) if isinstance(a, dict)]
    acc = _get(report, "accuracy.atc") or {}
    return {"alarm": bool(report.get("alarm")), "alarms": alarms, "n_target": report.get("n_target"),
            "tv": _get(report, "label_shift.total_variation"), "accuracy": acc,
            "calibration_accuracy": _get(report, "accuracy.calibration_accuracy"),
            "novelty": report.get("novelty") or {}, "figures": _figures(Path(run_dir) / "monitor", "monitor")}


def render_run_report(run_dir) -> str:
    """The HTML of one run folder's report (nothing written)."""
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / "metrics.json", "the run's metrics.json")
    info, config_text = _config_summary(run_dir)
    context = {
        "title": f"calib run report — {info.get('data') or run_dir.name}",
        "run_name": run_dir.name, "info": info, "config_text": config_text, "m": metrics,
        "n_cal": metrics.get("n_cal"), "n_test": metrics.get("n_test"), "n_classes": metrics.get("n_classes"),
        "artifact_id": metrics.get("artifact_id"),
        "warnings": [w for w in (metrics.get("warnings") or []) if isinstance(w, str)],
        "accuracy": _metric(metrics, "calibrated.accuracy", ci_path="calibration_ci.calibrated.accuracy"),
        "decision": _decision(metrics), "calibration": _calibration(metrics), "conformal": _conformal(metrics),
        "selective": metrics.get("selective") if isinstance(metrics.get("selective"), dict) else None,
        "monitor": _monitor(run_dir),
        "figs": {g: _figures(run_dir, g) for g in ("decision", "calibration", "conformal", "selective")},
        "version": _version(),
    }
    return _env().get_template("run_report.html.j2").render(**context)


# --- the sweep report ----------------------------------------------------------------------------------------------
#: plain names of the compared metrics (metrics.json paths); unknown paths are shown as they are
METRIC_LABELS = {
    "policy.automation_rate": "answered by the model", "policy.escalation_rate": "escalated to a person",
    "policy.fallback_rate": "deterministic fallback", "policy.task_completion_rate": "task completion",
    "policy.silent_failure_rate": "silent failures", "policy.selective_risk": "errors among answered items",
    "policy.expected_cost": "expected cost per item", "policy.expected_time": "expected handling time per item (s)",
    "calibrated.accuracy": "accuracy", "calibrated.ece": "ECE (calibrated)", "calibrated.nll": "NLL (calibrated)",
    "calibrated.brier": "Brier score (calibrated)", "calibrated.classwise_ece": "classwise ECE (calibrated)",
    "calibrated.ece_debiased": "debiased ECE (calibrated)", "conformal.coverage": "prediction-set coverage",
    "conformal.mean_set_size": "mean prediction-set size",
}
_PCT_METRICS = {"policy.automation_rate", "policy.escalation_rate", "policy.fallback_rate",
                "policy.task_completion_rate", "policy.silent_failure_rate", "policy.selective_risk",
                "calibrated.accuracy", "conformal.coverage"}


def _sweep_block(block):
    metric = block["metric"]
    pct = metric in _PCT_METRICS
    digits = 2 if pct else 4

    def f(v):
        return fmt_pct(v, digits) if pct else fmt_num(v, digits)

    rows = []
    for row in block["rows"]:
        iv, div = _interval(row.get("interval")), _interval(row.get("difference_interval"))
        rows.append({**row, "is_best": row["config"] == block["best"], "mean_json": json.dumps(row.get("mean")),
                     "mean_text": f(row.get("mean")),
                     "interval_text": None if iv is None else f"{f(iv[0])} – {f(iv[1])}",
                     "difference_text": f(row.get("difference")),
                     "difference_interval_text": None if div is None else f"{f(div[0])} – {f(div[1])}"})
    others = [r for r in rows if not r["is_best"]]
    tied = sum(1 for r in others if r.get("distinguishable") is False)
    unknown = sum(1 for r in others if r.get("distinguishable") is None)
    sentence = f"Best: {block['best']}."
    if others:
        sentence += (f" {tied} of the other {len(others)} configurations are not distinguishable from it"
                     + (f", {unknown} have no interval" if unknown else "") + ".")
    methods = sorted({r.get("method") for r in others if r.get("method")})
    means = {r.get("mean") for r in rows}
    spans = [_interval(r.get("interval")) for r in rows]
    constant = len(means) == 1 and all(iv is None or iv[0] == iv[1] for iv in spans)
    if constant:  # e.g. no fallback configured: one line, not a table of equal numbers
        sentence = f"{rows[0]['mean_text']} in every configuration and every run."
    return {"metric": metric, "label": METRIC_LABELS.get(metric, metric), "lower": block["direction"] == "lower",
            "best": block["best"], "rows": rows, "sentence": sentence, "constant": constant,
            "methods": "Intervals of the differences: " + "; ".join(methods) + "." if methods else ""}


def render_sweep_report(sweep_dir, *, level=0.95, assets_dir=None) -> str:
    """The HTML of a multirun folder's report: configurations compared metric by metric (nothing written).
    ``assets_dir``: where aggregate.py wrote summary.png (default ``sweep_dir``)."""
    from calib.evaluation.results import find_jobs, load_run
    from calib.evaluation.sweep_compare import compare_configurations

    sweep_dir = Path(sweep_dir)
    run_dirs, failed = find_jobs(sweep_dir)
    if not run_dirs:
        raise ValueError(f"Expected at least one complete run (a job folder with metrics.json) in {str(sweep_dir)!r}, "
                         f"got none ({len(failed)} failed or incomplete jobs).")
    runs = [load_run(d, sweep_dir) for d in run_dirs]
    blocks = [_sweep_block(b) for b in compare_configurations(runs, level=level)]
    sections = [("The decision", [b for b in blocks if b["metric"].startswith("policy.")]),
                ("Calibration", [b for b in blocks if b["metric"].startswith(("calibrated.", "uncalibrated."))]),
                ("Prediction sets", [b for b in blocks if b["metric"].startswith("conformal.")]),
                ("Other", [b for b in blocks if not b["metric"].startswith(("policy.", "calibrated.", "uncalibrated.",
                                                                            "conformal."))])]
    summary_png = None
    for folder in (assets_dir, sweep_dir):  # aggregate.py --out writes summary.png elsewhere
        if folder is not None and summary_png is None:
            summary_png = _png(Path(folder) / "summary.png")
    context = {"title": f"calib sweep report — {sweep_dir.name}", "n_runs": len(runs), "failed": failed,
               "sections": sections, "level": level, "summary_png": summary_png, "version": _version(),
               "jobs": [{"run": r["run"], "report": (sweep_dir / r["run"] / "report.html").is_file()} for r in runs]}
    return _env().get_template("sweep_report.html.j2").render(**context)


def write_report(path, *, out=None) -> Path:
    """Write ``report.html`` for a run or sweep folder ``path`` (``out``: another file); return its path.

    The page is rendered completely before anything is written, then written atomically: a failure leaves the
    previous report (or none), never half a page.
    """
    from calib._atomic import write_text_atomic

    path = Path(path)
    kind = report_kind(path)
    out = path / "report.html" if out is None else Path(out)
    if out.is_dir():
        raise ValueError(f"Expected --out as a file name (e.g. report.html), got the folder {str(out)!r}.")
    html = render_run_report(path) if kind == "run" else render_sweep_report(path, assets_dir=out.parent)
    write_text_atomic(out, html)
    return out


def _version():
    try:
        from importlib.metadata import version

        return version("calib")
    except Exception:  # not installed (a source tree on sys.path)
        return "unknown"


def _env():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("calib.evaluation", "templates"),
                      autoescape=select_autoescape(["html", "j2"], default=True), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=fmt_pct, num=fmt_num, p=fmt_p)
    return env
