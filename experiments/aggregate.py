"""Collect every run of a Hydra multirun folder into one tidy table, a summary and a figure.

    python experiments/aggregate.py multirun/kull2019/2026-01-01_12-00-00
    python experiments/aggregate.py SWEEP_DIR --out reports/ --published     # force the published comparison
    python experiments/aggregate.py SWEEP_DIR --strict                       # exit 1 if any job failed

Reads each run's ``metrics.json`` and ``.hydra/overrides.yaml`` (plus ``.hydra/hydra.yaml`` for the group
choices and ``.hydra/config.yaml`` for the seed) and writes, into SWEEP_DIR unless ``--out`` is given:

* ``results.csv``: one row per run x split x metric (columns ``run``, one per override key, ``seed``,
  ``split``, ``metric``, ``value``). Splits are the sections of metrics.json: ``uncalibrated``,
  ``calibrated``, ``calibrator`` (fitted scalars), conformal/policy sections when present, ``info``.
* ``summary.md``: per configuration (the overrides except ``seed``), mean ± sample std over seeds of each
  section's scalar metrics (list entries and nested values are in results.csv only).
* ``summary.png``: calibrated ECE and NLL per configuration (error bars: std over seeds), uncalibrated marked.
* ``report.html``: one self-contained page comparing the configurations metric by metric (decision rates first when
  the runs routed), each against the best with the interval of the difference, not-distinguishable differences marked
  (``calib report SWEEP_DIR`` writes the same page; docs/report.md). ``--no-report`` skips it.
* ``published.md`` (with ``--published``, or automatically for ``experiment=kull2019``): our numbers beside
  the published ones in ``conf/published/kull2019.yaml``, with deltas.

Failed or incomplete jobs (a job folder with ``.hydra/`` but no ``metrics.json``, or whose ``metrics.json`` and
``artifact/`` do not belong together: ``artifact_id``) are listed with their overrides and the last ERROR line of their
``calibrate.log``, on stdout, on stderr (a count) and at the end of ``summary.md``. Exit status: 0, or 1 with
``--strict`` when any job failed; 2 when nothing can be aggregated (a missing folder, no complete run, a bad
option).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from calib.evaluation.results import aggregate, metric_sections  # noqa: F401  (metric_sections: used by tests)

os.environ.setdefault("MPLBACKEND", "Agg")  # files only; before anything imports matplotlib
log = logging.getLogger("aggregate")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PUBLISHED = REPO / "conf" / "published" / "kull2019.yaml"
#: Presets whose sweeps are compared with published numbers automatically.
PUBLISHED_PRESETS = {"kull2019": DEFAULT_PUBLISHED}


def main(argv=None):
    # --help: the whole module docstring (what it reads, what it writes, exit status), then the options.
    parser = argparse.ArgumentParser(prog="aggregate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder (hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: SWEEP_DIR)")
    parser.add_argument("--published", nargs="?", const=DEFAULT_PUBLISHED, default=None, type=Path,
                        help=f"compare with published numbers (default file: {DEFAULT_PUBLISHED.relative_to(REPO)}); "
                             "automatic for experiment=kull2019")
    parser.add_argument("--no-figure", action="store_true", help="skip summary.png")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when any job of the sweep failed or is incomplete")
    parser.add_argument("--pivot", metavar="ROW,COL", default=None,
                        help="also write pivot.md: calibrated test NLL / ECE / classwise-ECE / Brier, a row per ROW "
                             "override value and columns per COL value (e.g. --pivot calibrator,data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        result = aggregate(args.sweep_dir, args.out, published=args.published, figure=not args.no_figure,
                           published_presets=PUBLISHED_PRESETS,
                           pivot=None if args.pivot is None else tuple(args.pivot.split(",", 1)))
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"aggregate.py: {err}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else args.sweep_dir
    page = Path(out) / "report.html"
    if args.no_report:
        page.unlink(missing_ok=True)  # no stale page from an earlier aggregation beside the new tables
    else:
        from calib.evaluation.report import write_report

        try:
            write_report(args.sweep_dir, out=page)
        except (ValueError, OSError) as err:
            page.unlink(missing_ok=True)
            print(f"aggregate.py: report.html: {err}", file=sys.stderr)
            return 2
    print(result["summary"])
    if "pivot" in result:
        print(result["pivot"])
    if "published" in result:
        print(result["published"])
    log.info("Aggregated %d runs; wrote results.csv, summary.md%s%s%s to %s", result["n_runs"],
             ", summary.png" if result.get("figure") else "", ", published.md" if "published" in result else "",
             "" if args.no_report else ", report.html", out)
    if result["n_failed"]:
        print(f"aggregate.py: {result['n_failed']} of {result['n_runs'] + result['n_failed']} jobs failed or are "
              f"incomplete (listed above and in summary.md); the tables hold the other {result['n_runs']}.",
              file=sys.stderr)
        for job in result["failed"]:
            print(f"  FAILED {job['run']}: {job['error'] or job['reason']}", file=sys.stderr)
        if args.strict:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
