"""The ``calib`` command: look inside, verify, apply and export a saved pipeline (an artifact folder).

::

    calib inspect ARTIFACT [--json] [--key-file PATH]
    calib verify  ARTIFACT [--json] [--key-file PATH]
    calib apply   ARTIFACT LOGITS --out FILE.{csv,npz,parquet} [--groups-key KEY] [--fallback-key KEY]
                  [--chunk-rows N] [--progress | --no-progress] [--overwrite] [--key-file PATH]
    calib export  ARTIFACT --format onnx --out FILE.onnx [--strict] [--fallback-input] [--overwrite]
                  [--key-file PATH]
    calib monitor ARTIFACT TARGET_LOGITS [--out DIR] [--json] [--alpha A] [--fdr Q] [--novelty-score S]
                  [--label-shift em|bbse] [--n-bootstrap B] [--accuracy-tolerance T] [--seed N]
                  [--groups-key KEY] [--fallback-key KEY] [--overwrite] [--key-file PATH]
    calib report  RUN_OR_SWEEP_DIR [--out FILE]
    calib --version

Built on :mod:`argparse` (standard library), so a serving install needs nothing beyond numpy; optional
packages (tqdm for the progress bar, pyarrow for ``.parquet``, onnx/onnxruntime for ``export``) are imported
inside the functions that use them.

Exit codes (``docs/cli.md``): 0 ok; 1 a check failed (``verify`` found a mismatch, ``export`` was refused or
its onnxruntime check failed, ``monitor`` raised an alarm); 2 a usage error or bad input (arguments, a bad or unreadable logits file, an
existing ``--out``, a missing optional package, an output that cannot be written); 3 a bad artifact (missing,
corrupted, tampered, truncated, newer schema, missing or wrong signature when a key is configured, not
portable; for ``monitor``, no reference statistics); 70 an internal error (a bug: please report it); 130 interrupted. Every error is exactly one line
on stderr, ``calib <command>: error: <message>``; ``CALIB_DEBUG=1`` prints the traceback too.

``calib apply`` writes nothing on any error: the output is written in a hidden temporary folder beside
``--out`` and moved into place (exclusively, unless ``--overwrite``) only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np

from calib.deploy import set_strings

__all__ = ["main", "CLIError", "EXIT_OK", "EXIT_CHECK", "EXIT_INPUT", "EXIT_ARTIFACT", "EXIT_INTERNAL",
           "OUTPUT_FORMATS", "PROGRESS_MIN_ROWS"]

EXIT_OK = 0
#: a check failed: ``verify`` mismatch, ``export`` refused or its onnxruntime check failed
EXIT_CHECK = 1
#: usage error (argparse's own code) or bad input: arguments, logits, --out, a missing optional package
EXIT_INPUT = 2
#: bad artifact: missing, corrupted, tampered, truncated, newer schema, signature, not portable
EXIT_ARTIFACT = 3
#: an unexpected exception: a bug in calib
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

#: ``--out`` suffix -> format of ``calib apply``
OUTPUT_FORMATS = {".csv": "csv", ".npz": "npz", ".parquet": "parquet"}
#: default rows per chunk of a ``.csv`` / ``.parquet`` output (its per-row strings dominate memory);
#: ``.npz`` uses :meth:`calib.deploy.FittedPipeline.chunk_rows` (about 16 MB of logits)
TABLE_CHUNK_ROWS = 1 << 16
#: without ``--progress`` / ``--no-progress``, a bar is drawn when stderr is a terminal and the input has
#: at least this many rows
PROGRESS_MIN_ROWS = 100_000


class CLIError(Exception):
    """An error reported as one line on stderr with exit code ``code``."""

    def __init__(self, message, code=EXIT_INPUT, prog=None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.prog = prog


def _one_line(text):
    return " ".join(str(text).split()) or "(no message)"


def _text(err):
    msg = str(err)
    if isinstance(err, OSError) and err.strerror and not msg.startswith("Expected"):
        msg = f"{err.strerror}: {err.filename!r}" if err.filename else err.strerror
    return msg or type(err).__name__


@contextlib.contextmanager
def _stage(code, prefix="", *, classes=(ValueError, TypeError, OSError, KeyError, IndexError), imports=True):
    """Library exceptions of one stage become a :class:`CLIError` with that stage's exit code; an ImportError
    (a missing optional package) is bad input, or passes through with ``imports=False``."""
    try:
        yield
    except CLIError:
        raise
    except ImportError as err:
        if not imports:
            raise  # the caller says which component needed it
        raise CLIError(f"{prefix}a package is missing: {_text(err)}", EXIT_INPUT) from err
    except classes as err:
        raise CLIError(prefix + _text(err), code) from err


# --- shared steps ----------------------------------------------------------------------------------------
def _key(args):
    """The signing key from ``--key-file`` (bytes), or None (then the environment decides)."""
    path = getattr(args, "key_file", None)
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(1 << 16).rstrip(b"\r\n")
    except OSError as err:
        raise CLIError(f"Expected --key-file as a readable file holding the signing key, got {path!r}: "
                       f"{err.strerror or err}.", EXIT_INPUT) from None
    from calib.artifacts import SignatureError, signing_key

    try:
        return signing_key(raw)
    except SignatureError:
        raise CLIError(f"Expected --key-file {path!r} to hold a signing key of at least 16 bytes, got "
                       f"{len(raw)} bytes.", EXIT_INPUT) from None


def _load_pipeline(path, key):
    """``FittedPipeline.load``: checksums, signature when a key is configured, every component's state."""
    from calib.deploy import FittedPipeline

    try:
        with _stage(EXIT_ARTIFACT, imports=False):
            return FittedPipeline.load(path, key=key)
    except ImportError as err:  # a non-portable component rebuilds its third-party model on load
        raise CLIError(f"Artifact {str(path)!r} is not portable: it needs a package that is not installed to load "
                       f"({_text(err)}); install it, or serve a portable artifact (calib.runtime: numpy alone).",
                       EXIT_ARTIFACT) from err


def _check_new_out(out, overwrite, what="--out"):
    if out.is_dir():
        raise CLIError(f"Expected {what} as a file path, got the folder {str(out)!r}.", EXIT_INPUT)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise CLIError(f"Expected {what} to be a new file, got {str(out)!r}, which exists (pass --overwrite to "
                       "replace it).", EXIT_INPUT)


# --- inspect ---------------------------------------------------------------------------------------------
def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _metrics_summary(metrics):
    """Fit-time metrics worth a glance (the manifest's ``metrics``, written by the experiment; any field may
    be missing): calibration before -> after, conformal coverage, policy rates."""
    if not isinstance(metrics, dict):
        return None
    out = {}
    for name in ("n_cal", "n_test"):
        if _num(metrics.get(name)) is not None:
            out[name] = int(metrics[name])
    before, after = metrics.get("uncalibrated"), metrics.get("calibrated")
    before = before if isinstance(before, dict) else {}
    after = after if isinstance(after, dict) else {}
    cal = {name: {"before": _num(before.get(name)), "after": _num(after.get(name))}
           for name in ("accuracy", "nll", "brier", "ece")
           if _num(before.get(name)) is not None or _num(after.get(name)) is not None}
    if cal:
        out["calibration"] = cal
    for block, names in (("conformal", ("alpha", "coverage", "mean_set_size", "singleton_rate", "empty_rate",
                                        "min_class_coverage")),
                         ("policy", ("automation_rate", "escalation_rate", "fallback_rate", "selective_accuracy",
                                     "silent_failure_rate", "expected_cost"))):
        b = metrics.get(block)
        if isinstance(b, dict):
            got = {k: _num(b.get(k)) for k in names if _num(b.get(k)) is not None}
            if got:
                out[block] = got
    return out or None


def _inspect_info(path, pipe, signature):
    from calib.artifacts import content_id

    m = pipe.manifest
    d = pipe.describe()
    comps = {}
    for name, entry in d["components"].items():
        stored = (m.get("components") or {}).get(name) or {}
        state = stored.get("state") if isinstance(stored.get("state"), dict) else {}
        arrays = stored.get("arrays") if isinstance(stored.get("arrays"), dict) else {}
        comps[name] = {**entry,
                       "state": {k: v for k, v in state.items() if isinstance(v, (int, float, str, bool)) or v is None},
                       "arrays": {k: spec.get("shape") for k, spec in arrays.items() if isinstance(spec, dict)}}
    files = sorted(m.get("files") or {})
    return {
        "artifact": str(path),
        "verified": {"checksums": files, "state": list(comps), "signature": signature},
        "format": m.get("format"),
        "schema_version": m.get("schema_version"),
        "calib_version": m.get("calib_version"),
        "created_utc": m.get("created_utc"),
        "content_id": content_id(m),
        "portable": pipe.portable,
        "input": pipe.input_contract,
        "class_names": None if pipe.class_names is None else list(pipe.class_names),
        "components": comps,
        "reliability": d.get("reliability"),
        "probe_rows": 0 if pipe.probe is None else int(pipe.probe["logits"].shape[0]),
        "metrics": _metrics_summary(m.get("metrics")),
        "provenance": {"data_fingerprint": m.get("data_fingerprint"), "config_yaml": "config.yaml" in files,
                       **({"pipeline": pipe.provenance} if pipe.provenance else {})},
    }


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"), default=str)
    return str(v)


def _pct(v):
    return "n/a" if v is None else f"{v:.1%}"


def _inspect_text(info):
    lines = []
    add = lines.append
    v = info["verified"]
    add(f"artifact     {info['artifact']}")
    add(f"verified     checksums of {', '.join(v['checksums'])}; state of {', '.join(v['state'])}; "
        f"signature: {v['signature']}")
    add(f"schema       {info['schema_version']} (written by calib {info['calib_version']} at {info['created_utc']})")
    add(f"content id   {info['content_id']}")
    add("portable     " + ("yes (calib.runtime serves it with numpy alone)" if info["portable"]
                           else "no (a component needs its third-party package to predict)"))
    inp = info["input"]
    add(f"input        {inp['kind']} {inp['dtype']} of shape (n, {inp['n_classes']})")
    names = info["class_names"]
    if names is None:
        add(f"classes      {inp['n_classes']} (no names stored: shown as indices 0..{inp['n_classes'] - 1})")
    else:
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        add(f"classes      {len(names)}: {shown}")
    for name, c in info["components"].items():
        add(f"{name:<12} {c['kind']}")
        if c["params"]:
            add("  params     " + " ".join(f"{k}={_fmt(x)}" for k, x in c["params"].items()))
        state = {k: x for k, x in c["state"].items() if k != "n_classes"}
        if state:
            add("  state      " + " ".join(f"{k}={_fmt(x)}" for k, x in state.items()))
        if c["arrays"]:
            add("  arrays     " + " ".join(f"{k}{tuple(s) if isinstance(s, list) else s}" for k, s in c["arrays"].items()))
        if "qhat" in c:
            add(f"  qhat       {_fmt(c['qhat'])}")
        if c.get("threshold") is not None:
            add(f"  threshold  {_fmt(c['threshold'])}")
        if c.get("guarantee"):
            add("  guarantee  " + " ".join(f"{k}={_fmt(x)}" for k, x in c["guarantee"].items()))
    rel = info["reliability"]
    if rel is None:
        add("reliability  none stored (no confidence bands)")
    else:
        add(f"reliability  accuracy of calibration items per confidence bin, {rel['level']:.0%} Clopper-Pearson band")
        add(f"  {'confidence':<17} {'n':>7} {'accuracy':>9}  band")
        for b in rel["bins"]:
            acc = "n/a" if b["accuracy"] is None else f"{b['accuracy']:.3f}"
            add(f"  [{b['from']:.3f}, {b['to']:.3f}{']' if b['to'] >= 1 else ')'}   {b['n']:>7} {acc:>9}  "
                f"[{b['lower']:.3f}, {b['upper']:.3f}]")
    add(f"probe        {info['probe_rows']} rows stored (calib verify recomputes them)" if info["probe_rows"]
        else "probe        none stored")
    mt = info["metrics"]
    if not mt:
        add("fit metrics  none stored")
    else:
        sizes = ", ".join(f"{k[2:]} {mt[k]} items" for k in ("n_cal", "n_test") if k in mt)
        add("fit metrics" + (f"  ({sizes})" if sizes else ""))
        for name, ba in (mt.get("calibration") or {}).items():
            b = "n/a" if ba["before"] is None else f"{ba['before']:.4f}"
            a = "n/a" if ba["after"] is None else f"{ba['after']:.4f}"
            add(f"  {name:<10} {b} -> {a}")
        cf = mt.get("conformal")
        if cf:
            target = "" if cf.get("alpha") is None else f" (target {1 - cf['alpha']:.0%})"
            parts = [f"coverage {cf['coverage']:.4f}{target}" if "coverage" in cf else None,
                     f"mean set size {cf['mean_set_size']:.3f}" if "mean_set_size" in cf else None,
                     f"singletons {_pct(cf.get('singleton_rate'))}" if "singleton_rate" in cf else None,
                     f"empty {_pct(cf.get('empty_rate'))}" if "empty_rate" in cf else None]
            add("  conformal  " + ", ".join(p for p in parts if p))
        pol = mt.get("policy")
        if pol:
            parts = [f"{k.replace('_rate', '').replace('_', ' ')} {_pct(x)}" if k.endswith("rate")
                     else f"{k.replace('_', ' ')} {x:.4f}" for k, x in pol.items()]
            add("  policy     " + ", ".join(parts))
    prov = info["provenance"]
    fp = prov.get("data_fingerprint")
    if isinstance(fp, dict):
        add(f"provenance   calibration data sha256 {fp.get('sha256')} ({fp.get('n_samples')} items, "
            f"{fp.get('n_classes')} classes)" + ("; config.yaml stored" if prov.get("config_yaml") else ""))
    else:
        add("provenance   no data fingerprint" + ("; config.yaml stored" if prov.get("config_yaml") else ""))
    if prov.get("pipeline"):
        add(f"  pipeline   {_fmt(prov['pipeline'])}")
    return "\n".join(lines)


def cmd_inspect(args):
    from calib.artifacts import signature_status

    key = _key(args)
    path = Path(args.artifact)
    pipe = _load_pipeline(path, key)
    with _stage(EXIT_ARTIFACT):
        signature = signature_status(path, key)
    info = _inspect_info(path, pipe, signature)
    print(json.dumps(_jsonable(info), indent=2) if args.json else _inspect_text(info))
    return EXIT_OK


def _jsonable(obj):
    from calib._json import to_json

    return to_json(obj)


# --- verify ----------------------------------------------------------------------------------------------
def _reliability_check(pipe):
    """Recompute the stored Clopper-Pearson bounds of every bin (needs scipy) and compare."""
    t = pipe.reliability
    if t is None:
        return {"ok": True, "bins": 0, "recomputed": False, "note": "no reliability table stored"}
    out = {"ok": True, "bins": int(t["n"].size), "n_items": int(t["n"].sum()), "recomputed": False}
    try:
        import scipy  # noqa: F401  (calib.stats.clopper_pearson needs it)
    except ImportError:
        out["note"] = "bounds not recomputed: scipy is not installed (sizes, orders and ranges were checked)"
        return out
    from calib.stats import clopper_pearson

    worst, bad = 0.0, None
    for i, (c, n, lo, hi) in enumerate(zip(t["correct"], t["n"], t["lower"], t["upper"])):
        want = clopper_pearson(int(c), int(n), t["level"])
        diff = max(abs(want[0] - lo), abs(want[1] - hi))
        worst = max(worst, diff)
        if diff > 1e-9 and bad is None:
            bad = (i, int(n), int(c), want, (float(lo), float(hi)))
    out.update(recomputed=True, max_abs_diff=worst)
    if bad is not None:
        i, n, c, want, got = bad
        out["ok"] = False
        out["error"] = (f"reliability bin {i} (n={n}, correct={c}): stored {t['level']:.0%} band "
                        f"[{got[0]:.6g}, {got[1]:.6g}], recomputed Clopper-Pearson [{want[0]:.6g}, {want[1]:.6g}]")
    return out


def cmd_verify(args):
    from calib.artifacts import read_manifest, signature_status

    key = _key(args)
    path = Path(args.artifact)
    with _stage(EXIT_ARTIFACT):
        manifest = read_manifest(path, key=key)
        signature = signature_status(path, key)
    pipe = _load_pipeline(path, key)
    with _stage(EXIT_CHECK, "recomputing the probe rows failed: "):
        probe = pipe.verify()
    rel = _reliability_check(pipe)
    files = sorted(manifest["files"])
    report = {"artifact": str(path), "ok": bool(probe["ok"] and rel["ok"]),
              "checks": {"checksums": {"ok": True, "files": files},
                         "signature": {"ok": True, "status": signature},
                         "state": {"ok": True, "components": {n: c.kind for n, c in pipe.components.items()}},
                         "probe": probe, "reliability": rel}}
    if args.json:
        print(json.dumps(_jsonable(report), indent=2))
    if not probe["ok"]:
        rows = probe["probe_rows"]
        what = ", ".join(f"{name} on {cnt} of {rows} rows" for name, cnt in probe["mismatches"].items())
        diff = probe["max_abs_diff_probs"]
        raise CLIError(f"probe outputs of {str(path)!r} differ from those stored at fit time: {what}"
                       + ("" if diff is None else f" (max |probs difference| {diff:.3g})")
                       + "; this environment does not reproduce the fitted pipeline.", EXIT_CHECK)
    if not rel["ok"]:
        raise CLIError(f"{rel['error']} in {str(path)!r}.", EXIT_CHECK)
    if not args.json:
        probe_text = (f"{probe['probe_rows']} probe rows recomputed bit for bit ({', '.join(probe['checked'])})"
                      if probe["checked"] else "no probe rows stored (nothing to recompute)")
        rel_text = (rel.get("note") if rel["bins"] == 0 else
                    f"reliability table of {rel['bins']} bins consistent"
                    + (" (Clopper-Pearson bounds recomputed)" if rel["recomputed"] else f" ({rel['note']})"))
        print(f"OK {path}: checksums of {', '.join(files)}; signature: {signature}; state of "
              f"{', '.join(f'{n} {k!r}' for n, k in report['checks']['state']['components'].items())}; "
              f"{probe_text}; {rel_text}.")
    return EXIT_OK


# --- apply -----------------------------------------------------------------------------------------------
def _table(start, d):
    """The flat table of one chunk: ``row`` then :meth:`calib.deploy.Decisions.columns` (its ``set`` column,
    class names joined by ``|``, built once per distinct set rather than once per row)."""
    cols = d.columns(sets=False)
    per_alpha = [] if d.sets is None else [d.sets] if d.sets.ndim == 2 else \
        [d.sets[:, :, m] for m in range(d.sets.shape[2])]  # one set_size column per alpha, in this order
    sets = dict(zip([name for name in cols if name.startswith("set_size")], per_alpha))
    out = {"row": np.arange(start, start + len(d), dtype=np.int64)}
    for name, a in cols.items():
        out[name] = a
        if name in sets:
            out["set" + name[len("set_size"):]] = set_strings(sets[name], d.pipeline.class_names_or_indices())
    return out


def _strings(a):
    """Text of one column for CSV: floats as the shortest text that reads back to the same value (formatted
    once per distinct value: bands take a few values only)."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        uniq, inverse = np.unique(a, return_inverse=True)
        if uniq.size * 4 < a.size:
            return uniq.astype(str)[inverse.reshape(-1)]
        return a.astype(str)
    if a.dtype.kind in "iub":
        return a.astype(str)
    return a


class _CsvWriter:
    def __init__(self, path):
        self.fh = open(path, "w", newline="", encoding="utf-8")
        self.w = csv.writer(self.fh)
        self.header = False

    def write(self, start, d):
        cols = _table(start, d)
        if not self.header:
            self.w.writerow(list(cols))
            self.header = True
        self.w.writerows(zip(*(_strings(a).tolist() for a in cols.values())))

    def close(self, pipe):
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()

    def abort(self):
        self.fh.close()


class _ParquetWriter:
    def __init__(self, path):
        self.path = path
        self.writer = None

    def write(self, start, d):
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = _table(start, d)
        table = pa.table({k: pa.array(v.tolist() if v.dtype == object else v) for k, v in cols.items()})
        if self.writer is None:
            self.writer = pq.ParquetWriter(str(self.path), table.schema)
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self, pipe):
        if self.writer is not None:
            self.writer.close()
        with open(self.path, "rb+") as fh:
            os.fsync(fh.fileno())

    def abort(self):
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()


#: arrays of a ``.npz`` output, in order
NPZ_ARRAYS = ("probs", "label", "confidence", "band_low", "band_high", "sets", "actions", "output", "reasons")


class _NpzWriter:
    """Each array goes to its own ``.npy`` in the staging folder, written chunk by chunk with plain file writes (the
    chunks come in row order); ``close`` streams them into one zip (uncompressed, as :func:`numpy.savez`): memory
    bounded by a chunk. (Not a writable memory map: its dirty pages count in the resident set until written
    back, so a 4 GB output would show a 4 GB peak.)"""

    def __init__(self, path, n):
        self.path, self.n = path, n
        self.dir = path.parent
        self.files = None
        self.rows = 0

    def write(self, start, d):
        if self.files is None:
            self.files = {}
            for name in NPZ_ARRAYS:
                a = getattr(d, name)
                if a is None:
                    continue
                fh = open(self.dir / f"part-{name}.npy", "wb")
                self.files[name] = fh
                np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(a.dtype),
                                                          "fortran_order": False, "shape": (self.n, *a.shape[1:])})
        if start != self.rows:
            raise ValueError(f"Expected the chunk at row {self.rows} (chunks in row order), got one at row {start}.")
        for name, fh in self.files.items():
            fh.write(memoryview(np.ascontiguousarray(getattr(d, name))).cast("B"))
        self.rows += len(d)

    def close(self, pipe):
        import io
        import zipfile

        from calib.policy.routing import ACTIONS, REASONS

        names = list(self.files or {})
        for fh in (self.files or {}).values():
            fh.close()
        self.files = None
        if self.rows != self.n:
            raise ValueError(f"Expected {self.n} rows written, got {self.rows}.")
        small = {"reason_names": np.array(REASONS), "action_names": np.array(ACTIONS),
                 "class_names": np.array(pipe.class_names_or_indices())}
        with zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in names:
                zf.write(self.dir / f"part-{name}.npy", arcname=f"{name}.npy")
                os.unlink(self.dir / f"part-{name}.npy")
            for name, a in small.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, a, allow_pickle=False)
                zf.writestr(f"{name}.npy", buf.getvalue())
        with open(self.path, "rb+") as fh:
            os.fsync(fh.fileno())

    def abort(self):
        for fh in (self.files or {}).values():
            with contextlib.suppress(Exception):
                fh.close()
        self.files = None


class _Staging:
    """A hidden temporary folder beside ``out``; :meth:`publish` moves the finished file into place
    (exclusively unless ``overwrite``); :meth:`discard` removes everything this run created, including
    the parent folders it made."""

    def __init__(self, out, overwrite):
        self.out, self.overwrite = out, overwrite
        parent = out.parent if str(out.parent) else Path(".")
        self.created = []
        p = parent.absolute()
        while not p.exists():
            self.created.append(p)
            p = p.parent
        if not p.is_dir():
            raise CLIError(f"Expected --out inside a folder, got {str(out)!r}, whose {str(p)!r} is a file.", EXIT_INPUT)
        parent.mkdir(parents=True, exist_ok=True)
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.calib-tmp-", dir=parent))
        except BaseException:
            self._remove_created()
            raise
        self.file = self.dir / out.name

    def publish(self):
        from calib._atomic import umask

        os.chmod(self.file, 0o666 & ~umask())
        if self.overwrite:
            os.replace(self.file, self.out)
        else:
            try:
                os.link(self.file, self.out)  # exclusive: fails when --out appeared meanwhile
            except FileExistsError:
                raise CLIError(f"Expected --out to be a new file, got {str(self.out)!r}, which exists (pass "
                               "--overwrite to replace it).", EXIT_INPUT) from None
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if self.out.exists():
                    raise CLIError(f"Expected --out to be a new file, got {str(self.out)!r}, which exists.",
                                   EXIT_INPUT) from None
                os.replace(self.file, self.out)
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            fd = os.open(self.out.parent if str(self.out.parent) else ".", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        self._remove_created()

    def _remove_created(self):
        for p in self.created:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(setting, n):
    show = setting if setting is not None else (n >= PROGRESS_MIN_ROWS and sys.stderr.isatty())
    if not show:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()  # the bar is a convenience: its absence never fails a run
    return tqdm(total=n, unit="rows", unit_scale=True, file=sys.stderr, desc="calib apply", leave=False,
                dynamic_ncols=True)


def _per_row(data, key, default, what):
    """The per-row array ``key`` of the logits file (``groups`` or an extra), or None when absent."""
    if key is None:
        key, explicit = default, False
    else:
        explicit = True
    if key == "groups" and data.groups is not None:
        return data.groups
    if key in data.extras:
        return data.extras[key]
    if explicit:
        have = (["groups"] if data.groups is not None else []) + sorted(data.extras)
        raise CLIError(f"Expected a per-row array {key!r} ({what}, from {'--' + what.split()[0] + '-key'}) in the "
                       f"logits file, got {have or 'no per-row arrays'}.", EXIT_INPUT)
    return None


def cmd_apply(args):
    from calib.io import load_logits

    out = Path(args.out)
    fmt = OUTPUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise CLIError(f"Expected --out ending in {', '.join(OUTPUT_FORMATS)}, got {str(out)!r}.", EXIT_INPUT)
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise CLIError(f"Expected pyarrow for a .parquet --out ({str(out)!r}), got none installed: pip install "
                           "pyarrow, or write .csv / .npz.", EXIT_INPUT) from None
    _check_new_out(out, args.overwrite)
    key = _key(args)
    pipe = _load_pipeline(Path(args.artifact), key)
    src = str(args.logits)
    with _stage(EXIT_INPUT):
        data = load_logits(args.logits, mmap=True, require_labels=False)
    if data.n_classes != pipe.n_classes:
        raise CLIError(f"Expected logits with {pipe.n_classes} columns in {src!r} (the pipeline in "
                       f"{str(args.artifact)!r} was fitted on {pipe.n_classes} classes), got {data.n_classes}.",
                       EXIT_INPUT)
    if data.class_names is not None and pipe.class_names is not None and tuple(data.class_names) != pipe.class_names:
        diff = next(j for j, (a, b) in enumerate(zip(data.class_names, pipe.class_names)) if a != b)
        raise CLIError(f"Expected the classes of {src!r} in the pipeline's order, got {data.class_names[diff]!r} "
                       f"where the pipeline has {pipe.class_names[diff]!r} (column {diff}); reorder the columns.",
                       EXIT_INPUT)
    groups = _per_row(data, args.groups_key, "groups", "groups ids")
    fallback = _per_row(data, args.fallback_key, "fallback", "fallback labels")
    n = data.n_samples
    writing = f"writing {str(out)!r}: "
    with _stage(EXIT_INPUT, writing):
        stage = _Staging(out, args.overwrite)
    writer = None
    bar = _NoBar()
    counts = np.zeros(3, dtype=np.int64)
    rows = args.chunk_rows
    if rows is None and fmt != "npz":  # text and parquet tables hold Python strings per row: smaller chunks
        rows = max(1, min(pipe.chunk_rows(), TABLE_CHUNK_ROWS))
    try:
        with _stage(EXIT_INPUT, writing):
            writer = {"csv": lambda: _CsvWriter(stage.file), "parquet": lambda: _ParquetWriter(stage.file),
                      "npz": lambda: _NpzWriter(stage.file, n)}[fmt]()
        bar = _progress_bar(args.progress, n)
        chunks = pipe.iter_apply(data.logits, groups=groups, fallback=fallback, chunk_rows=rows)
        while True:
            try:
                with _stage(EXIT_INPUT, f"applying the pipeline to {src!r}: ", imports=False):
                    item = next(chunks, None)
            except ImportError as err:  # only a non-portable component imports a package while predicting
                kinds = ", ".join(f"{name} {c.kind!r}" for name, c in pipe.components.items() if not type(c).portable)
                raise CLIError(f"Artifact {str(args.artifact)!r} is not portable: {kinds or 'a component'} needs a "
                               f"package that is not installed to predict ({_text(err)}); install it, or serve a "
                               "portable artifact.", EXIT_ARTIFACT) from err
            if item is None:
                break
            start, d = item
            with _stage(EXIT_INPUT, writing):
                writer.write(start, d)
            counts += np.bincount(d.actions, minlength=3)[:3]
            bar.update(len(d))
        with _stage(EXIT_INPUT, writing):
            writer.close(pipe)
            writer = None
            stage.publish()
    except BaseException:
        if writer is not None:
            writer.abort()
        stage.discard()
        raise
    finally:
        bar.close()
    rates = counts / max(n, 1)
    print(f"calib apply: {n} rows -> {out} ({fmt}): automation {rates[0]:.1%}, escalation {rates[1]:.1%}, "
          f"fallback {rates[2]:.1%}")
    return EXIT_OK


# --- export ----------------------------------------------------------------------------------------------
def cmd_export(args):
    if args.format != "onnx":
        raise CLIError(f"Expected --format onnx, got {args.format!r}: TorchScript export is not supported (export "
                       "ONNX, or serve the artifact with calib.runtime).", EXIT_INPUT)
    out = Path(args.out)
    _check_new_out(out, args.overwrite)
    try:
        from calib.export_onnx import ExportError, export_onnx
    except ImportError as err:
        raise CLIError(f"calib export needs calib.export_onnx, which this calib cannot import: {_text(err)}",
                       EXIT_INPUT) from None
    import inspect

    from calib.artifacts import content_id

    key = _key(args)
    pipe = _load_pipeline(Path(args.artifact), key)
    params = inspect.signature(export_onnx).parameters
    kwargs = {"conformal": pipe.conformal, "policy": pipe.policy, "class_names": pipe.class_names, "check": True,
              "strict": args.strict,
              "metadata": {"calib_content_id": content_id(pipe.manifest),
                           "calib_artifact_schema": str(pipe.manifest.get("schema_version")),
                           "calib_artifact_calib_version": str(pipe.manifest.get("calib_version"))}}
    if "overwrite" in params:
        kwargs["overwrite"] = args.overwrite
    if args.fallback_input:
        kwargs["fallback_input"] = True
    if "sample" in params and pipe.probe is not None:
        kwargs["sample"] = pipe.probe["logits"]  # the stored probe rows join the check
    try:
        res = export_onnx(pipe.calibrator, out, **kwargs)
    except ExportError as err:
        raise CLIError(f"export refused: {_text(err)}", EXIT_CHECK) from err
    except ImportError as err:
        raise CLIError(f"{_text(err)} (pip install 'calib[onnx]')", EXIT_INPUT) from err
    except FileExistsError as err:
        raise CLIError(_text(err), EXIT_INPUT) from err
    except (ValueError, TypeError, OSError) as err:
        raise CLIError(_text(err), EXIT_INPUT) from err
    diff = (res.get("max_abs_diff") or {}).get("probs")
    check = "" if diff is None else f"; checked with onnxruntime against calib: max |probs difference| {diff:.3g}"
    print(f"calib export: wrote {res.get('path', out)}: outputs {', '.join(res.get('outputs', []))}{check}")
    for name, reason in (res.get("omitted") or {}).items():
        print(f"  omitted {name}: {_one_line(reason)}")
    return EXIT_OK


# --- monitor ---------------------------------------------------------------------------------------------
def cmd_monitor(args):
    from calib.evaluation.monitor import MissingReferenceError, monitor_batch
    from calib.io import load_logits

    out = None if args.out is None else Path(args.out)
    if out is not None:
        if out.exists() and not out.is_dir():
            raise CLIError(f"Expected --out as a folder path, got the file {str(out)!r}.", EXIT_INPUT)
        if out.exists() and not args.overwrite:
            raise CLIError(f"Expected --out to be a new folder, got {str(out)!r}, which exists (pass --overwrite to "
                           "replace it).", EXIT_INPUT)
    key = _key(args)
    pipe = _load_pipeline(Path(args.artifact), key)
    if pipe.reference is None:
        from calib.evaluation.monitor import REFIT_HINT

        m = pipe.manifest or {}
        raise CLIError(f"Artifact {str(args.artifact)!r} has no reference statistics to monitor against (written "
                       f"with schema {m.get('schema_version', '?')} by calib {m.get('calib_version', '?')}; artifacts "
                       "of schema <= 2 carry none, nor do pipelines built from parts without attach_reference); "
                       f"{REFIT_HINT}.", EXIT_ARTIFACT)
    src = str(args.target_logits)
    with _stage(EXIT_INPUT, f"reading {src!r}: "):
        data = load_logits(args.target_logits, require_labels=False)
    if data.n_classes != pipe.n_classes:
        raise CLIError(f"Expected logits with {pipe.n_classes} columns in {src!r} (the pipeline in "
                       f"{str(args.artifact)!r} was fitted on {pipe.n_classes} classes), got {data.n_classes}.",
                       EXIT_INPUT)
    groups = _per_row(data, args.groups_key, "groups", "groups ids")
    fallback = _per_row(data, args.fallback_key, "fallback", "fallback labels")
    try:
        with _stage(EXIT_INPUT, f"monitoring {src!r}: ", imports=False):
            result = monitor_batch(pipe, data.logits, alpha=args.alpha, fdr=args.fdr,
                                   novelty_score=args.novelty_score, label_shift=args.label_shift,
                                   n_bootstrap=args.n_bootstrap, accuracy_tolerance=args.accuracy_tolerance,
                                   seed=args.seed, groups=groups, fallback=fallback)
    except MissingReferenceError as err:  # pragma: no cover - checked above
        raise CLIError(_text(err), EXIT_ARTIFACT) from err
    if out is not None:
        with _stage(EXIT_INPUT, f"writing {str(out)!r}: "):
            result.write(out, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(result.report, indent=1, allow_nan=False))
    else:
        print(f"calib monitor: {src} against {args.artifact}")
        for line in result.summary():
            print(f"  {line}")
        if out is not None:
            print(f"  wrote {out}/monitor.json and {len(result.plots)} figures")
        print(f"calib monitor: {'ALARM' if result.alarm else 'no alarm'}")
    return EXIT_CHECK if result.alarm else EXIT_OK


def cmd_report(args):
    from calib.evaluation.report import report_kind, write_report

    folder = Path(args.folder)
    with _stage(EXIT_INPUT, imports=True):
        kind = report_kind(folder)
    out = None if args.out is None else Path(args.out)
    with _stage(EXIT_INPUT, f"writing the report of {str(folder)!r}: "):
        path = write_report(folder, out=out)
    print(f"calib report: wrote {path} ({kind} report, {path.stat().st_size // 1024} KiB, self-contained)")
    return EXIT_OK


# --- the parser ------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (exit 2) instead of the usage block."""

    def error(self, message):
        raise CLIError(f"{message} (see {self.prog} --help)", EXIT_INPUT, prog=self.prog)


def _typed(convert, ok, expected):
    """An argparse ``type``: ``convert(text)`` that must satisfy ``ok``, else "expected <expected>, got 'text'"."""
    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return v
    return parse


_positive_int = _typed(int, lambda v: v >= 1, "a positive integer")
_count = _typed(int, lambda v: v >= 0, "an integer >= 0")
_fraction = _typed(float, lambda v: 0 < v < 1, "a number in (0, 1)")  # NaN and inf fail the comparison
_tolerance = _typed(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def build_parser():
    from calib import __version__

    p = _Parser(prog="calib", description="Inspect, verify, apply, export and monitor a saved calib pipeline (an "
                "artifact folder written by experiments/calibrate.py or FittedPipeline.save); write a run's or a "
                "sweep's report.html.",
                epilog="Exit codes: 0 ok, 1 check failed or monitor alarm, 2 usage error or bad input, 3 bad artifact. "
                       "See docs/cli.md.")
    p.add_argument("--version", action="version", version=f"calib {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp):
        sp.add_argument("artifact", metavar="ARTIFACT", help="artifact folder (with manifest.json)")
        sp.add_argument("--key-file", metavar="PATH", help="signing key file (default: CALIB_SIGNING_KEY_FILE / "
                        "CALIB_SIGNING_KEY); with a key, a missing or wrong signature is refused")

    sp = sub.add_parser("inspect", help="what is inside an artifact (verified)",
                        description="What is inside an artifact, verified on the way (checksums, every component's "
                                    "state; the signature when a key is configured).")
    common(sp)
    sp.add_argument("--json", action="store_true", help="print JSON instead of text")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("verify", help="checksums, signature, state, recomputed probe outputs, reliability table",
                        description="Verify an artifact: checksums, signature (when a key is configured), state "
                                    "validation, the stored probe outputs recomputed bit for bit, the reliability "
                                    "table's Clopper-Pearson bounds recomputed (with scipy).")
    common(sp)
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.set_defaults(func=cmd_verify)

    sp = sub.add_parser("apply", help="decisions for a logits file (.csv, .npz or .parquet out)",
                        description="Apply the pipeline to a logits file (any format calib.load_logits reads; "
                                    "labels optional). A .npy is memory-mapped and streamed in row chunks.")
    common(sp)
    sp.add_argument("logits", metavar="LOGITS", help="logits file: .npy, .npz, .pt/.pth or .csv")
    sp.add_argument("--out", required=True, metavar="FILE", help="output .csv, .npz or .parquet (pyarrow)")
    sp.add_argument("--groups-key", metavar="KEY", help="per-row array of the logits file holding group ids "
                    "(default: its 'groups', when present)")
    sp.add_argument("--fallback-key", metavar="KEY", help="per-row array holding the fallback's label (default: "
                    "'fallback', when present)")
    sp.add_argument("--chunk-rows", type=_positive_int, metavar="N", help="rows per chunk (default: about 16 MB "
                    "of logits)")
    sp.add_argument("--progress", dest="progress", action="store_true", default=None,
                    help="draw a progress bar on stderr (default: when stderr is a terminal and the input is large)")
    sp.add_argument("--no-progress", dest="progress", action="store_false", help="never draw a progress bar")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sp.set_defaults(func=cmd_apply)

    sp = sub.add_parser("export", help="export to ONNX (checked with onnxruntime)",
                        description="Export the pipeline as one ONNX graph, checked against calib with "
                                    "onnxruntime before anything is written.")
    common(sp)
    sp.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="onnx (torchscript: not "
                    "supported)")
    sp.add_argument("--out", required=True, metavar="FILE", help="output .onnx file")
    sp.add_argument("--strict", action="store_true", help="refuse (exit 1) when a component is not expressible, "
                    "instead of omitting its output")
    sp.add_argument("--fallback-input", action="store_true", help="add a per-item 'fallback' input for policies "
                    "with fallback 'auto' / 'extras'")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("monitor", help="compare an unlabeled serving batch with the artifact's reference "
                        "(exit 1 on an alarm)",
                        description="Label-free shift monitor: estimated prior shift and accuracy (with intervals), "
                                    "drift tests, the policy's rates vs fit time, items unlike calibration. Exits 1 "
                                    "when an alarm fires (each alarm a test; see docs/shift.md), 0 otherwise.")
    common(sp)
    sp.add_argument("target_logits", metavar="TARGET_LOGITS", help="logits of the serving batch: .npy, .npz, "
                    ".pt/.pth or .csv (labels not needed, ignored if present)")
    sp.add_argument("--out", metavar="DIR", help="write monitor.json and the figures into this new folder")
    sp.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary")
    sp.add_argument("--alpha", type=_fraction, default=0.05, help="family-wise level of the alarms (default 0.05)")
    sp.add_argument("--fdr", type=_fraction, default=0.1, help="Benjamini-Hochberg level of the flagged items "
                    "(default 0.1)")
    sp.add_argument("--novelty-score", choices=("energy", "max_logit"), default="energy",
                    help="novelty score of the logits (default energy)")
    sp.add_argument("--label-shift", choices=("em", "bbse"), default="em", help="prior estimator (default em)")
    sp.add_argument("--n-bootstrap", type=_count, default=200, help="bootstrap resamples of the intervals "
                    "(default 200; 0: no intervals)")
    sp.add_argument("--accuracy-tolerance", type=_tolerance, default=0.05, help="accuracy drop below calibration "
                    "that raises an alarm (default 0.05)")
    sp.add_argument("--seed", type=_count, default=0, help="seed of the bootstraps (default 0)")
    sp.add_argument("--groups-key", metavar="KEY", help="per-row array holding group ids (default: 'groups', when "
                    "present)")
    sp.add_argument("--fallback-key", metavar="KEY", help="per-row array holding the fallback's label (default: "
                    "'fallback', when present)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    sp.set_defaults(func=cmd_monitor)

    sp = sub.add_parser("report", help="write report.html for a run folder or a sweep folder",
                        description="Write one self-contained page (figures inline, no script, no network request): "
                                    "for a run folder (with metrics.json) the decision, task completion, silent "
                                    "failures, cost and time with intervals, then the specialist's details; for a "
                                    "sweep (multirun) folder the configurations compared, differences not "
                                    "distinguishable from zero marked. See docs/report.md.")
    sp.add_argument("folder", metavar="RUN_OR_SWEEP_DIR", help="a run folder of experiments/calibrate.py or a "
                    "multirun (sweep) folder")
    sp.add_argument("--out", metavar="FILE", help="where to write (default: RUN_OR_SWEEP_DIR/report.html; replaced "
                    "atomically)")
    sp.set_defaults(func=cmd_report)
    return p


# --- entry point -----------------------------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def main(argv=None):
    """Run the ``calib`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    debug = os.environ.get("CALIB_DEBUG", "") not in ("", "0")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CLIError as err:
        print(f"{err.prog or 'calib'}: error: {_one_line(err.message)}", file=sys.stderr)
        return err.code
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if args.command is None:
        print("calib: error: expected a command: inspect, verify, apply, export, monitor or report (see calib --help)",
              file=sys.stderr)
        return EXIT_INPUT
    prog = f"calib {args.command}"
    logger = logging.getLogger("calib")
    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    code, message, exc = EXIT_OK, None, None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                code = args.func(args)
            except CLIError as err:
                code, message, exc = err.code, err.message, err
            except KeyboardInterrupt as err:
                code, message, exc = EXIT_INTERRUPTED, "interrupted", err
            except BrokenPipeError:  # `calib inspect ... | head`: the reader left; not an error of ours
                try:
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
                except (OSError, ValueError, AttributeError):
                    pass
                return EXIT_OK
            except Exception as err:  # a bug: still one line, with the way to see more
                code, exc = EXIT_INTERNAL, err
                message = (f"internal error {type(err).__name__}: {err} (a bug in calib; set CALIB_DEBUG=1 for the "
                           "traceback)")
            if exc is not None and debug:
                traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    if message is not None:
        if debug:
            for w in caught:
                print(f"{prog}: warning: {_one_line(w.message)}", file=sys.stderr)
        print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
        return code
    for w in caught:
        print(f"{prog}: warning: {_one_line(w.message)}", file=sys.stderr)
    for m in handler.messages:
        print(f"{prog}: warning: {_one_line(m)}", file=sys.stderr)
    return code
