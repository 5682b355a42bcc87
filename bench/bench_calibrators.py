"""Fit + transform time of every calibrator beside its netcal / scikit-learn counterparts, in one process.

    python bench/bench_calibrators.py            # 50k x 100 and 50k x 1000 (a few minutes)
    python bench/bench_calibrators.py --quick    # small sizes, smoke run

Synthetic float32 logits (seeded): true logits N(0, 2^2), labels drawn from their softmax, observed
logits x 2.5 (over-confident). Prints one table per size with seconds, the ratio peer/ours and the
largest absolute difference between outputs where both compute the same function.

netcal LogisticCalibration (multiclass vector scaling, temperature_only=False, method="mle") is slow
(about 20 s at 5000 x 100), so it is compared on 5000 x 100 only (``--netcal-lc-size``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, versions  # noqa: E402


def make_data(n, k, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, k))
    y = np.argmax(z + rng.gumbel(size=(n, k)), axis=1)
    return (2.5 * z).astype(np.float32), y.astype(np.int64)


def timed(fn, repeat=1):
    return best_of(fn, repeat)


@contextlib.contextmanager
def quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def nll(p, y):
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y].astype(np.float64), 1e-300))))


def ours(name, x, y, **kwargs):
    from calib.calibrators import REGISTRY

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return REGISTRY[name](**kwargs).fit(x, y).predict_proba(x)
    return run


def sklearn_ovr(x, y):
    from sklearn.isotonic import IsotonicRegression

    from calib.calibrators import softmax

    def run():
        p = softmax(x).astype(np.float64)
        q = np.column_stack([IsotonicRegression(out_of_bounds="clip").fit(p[:, c], y == c).predict(p[:, c])
                             for c in range(p.shape[1])])
        s = q.sum(axis=1, keepdims=True)
        return np.where(s > 0, q / np.where(s > 0, s, 1.0), 1.0 / p.shape[1])
    return run


def netcal_method(cls_name, module, x, y, **kwargs):
    import importlib

    from calib.calibrators import softmax

    def run():
        p = softmax(x.astype(np.float64))
        with quiet():
            m = getattr(importlib.import_module(module), cls_name)(**kwargs)
            m.fit(p, y)
            q = np.asarray(m.transform(p), dtype=np.float64)
        return q / q.sum(axis=1, keepdims=True)
    return run


def row(rows, label, t_ours, peers, out_ours=None, y=None):
    """peers: list of (name, seconds, output or None)."""
    for name, t_peer, out_peer in peers:
        agree = "" if out_peer is None or out_ours is None else f"{np.abs(out_ours - out_peer).max():.1e}"
        extra = "" if y is None or out_peer is None else f"{nll(out_ours, y):.4f} / {nll(out_peer, y):.4f}"
        rows.append((label, f"{t_ours:.2f}", name, f"{t_peer:.2f}", f"{t_peer / t_ours:.1f}x", agree, extra))
    if not peers:
        extra = "" if y is None else f"{nll(out_ours, y):.4f}"
        rows.append((label, f"{t_ours:.2f}", "", "", "", "", extra))


def print_table(title, rows):
    head = ("calibrator", "ours s", "peer", "peer s", "peer/ours", "max |diff|", "NLL ours / peer")
    print(f"\n### {title}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def bench_size(n, k, *, heavy_peers=True, isotonic_only=False):
    x, y = make_data(n, k)
    rows = []
    # isotonic OvR vs scikit-learn and netcal
    # best of 2 for the headline comparison (the first call in a process pays page faults on fresh memory)
    t_iso, q_iso = timed(ours("isotonic", x, y), repeat=2)
    peers = []
    if heavy_peers:
        t_sk, q_sk = timed(sklearn_ovr(x, y), repeat=2)
        peers.append(("sklearn IsotonicRegression OvR", t_sk, q_sk))
        t_nc, q_nc = timed(netcal_method("IsotonicRegression", "netcal.binning", x, y), repeat=2)
        peers.append(("netcal IsotonicRegression", t_nc, q_nc))
    row(rows, "isotonic (ovr)", t_iso, peers, q_iso)
    if isotonic_only:
        print_table(f"{n} x {k} (fit + transform on the same rows; seconds; isotonic rows best of 2, others best of 1)", rows)
        return
    t, q = timed(ours("isotonic", x, y, multiclass="top_label"))
    row(rows, "isotonic (top_label)", t, [], q, y)
    # temperature family
    t_ts, q_ts = timed(ours("temperature", x, y))
    peers = []
    if heavy_peers:
        t_nts, q_nts = timed(netcal_method("TemperatureScaling", "netcal.scaling", x, y))
        peers.append(("netcal TemperatureScaling (float64)", t_nts, q_nts))
    row(rows, "temperature", t_ts, peers, q_ts, y)
    for name in ("ensemble_temperature", "vector_scaling"):
        t, q = timed(ours(name, x, y))
        row(rows, name, t, [], q, y)
    t, q = timed(ours("dirichlet", x, y, matrix="diagonal"))
    row(rows, "dirichlet (diagonal)", t, [], q, y)
    if k <= 100:
        for name in ("matrix_scaling", "dirichlet"):
            t, q = timed(ours(name, x, y, reg_lambda=1e-3, reg_mu=1e-3))
            row(rows, f"{name} (lambda=mu=1e-3)", t, [], q, y)
    t_hb, q_hb = timed(ours("histogram_binning", x, y))
    peers = []
    if heavy_peers:
        # netcal implements equal-width bins only (equal_intervals=False raises): timing, not agreement
        t_nhb, q_nhb = timed(netcal_method("HistogramBinning", "netcal.binning", x, y, bins=15))
        peers.append(("netcal HistogramBinning (equal width)", t_nhb, None))
    row(rows, "histogram_binning (ovr)", t_hb, peers, q_hb, y)
    print_table(f"{n} x {k} (fit + transform on the same rows; seconds; isotonic rows best of 2, others best of 1)", rows)


def bench_vector_scaling(n, k):
    x, y = make_data(n, k, seed=1)
    rows = []
    t_nc, q_nc = timed(netcal_method("LogisticCalibration", "netcal.scaling", x, y, temperature_only=False,
                                     method="mle"))
    t_vs, q_vs = timed(ours("vector_scaling", x, y))
    row(rows, "vector_scaling", t_vs, [("netcal LogisticCalibration (vector, mle)", t_nc, q_nc)], q_vs, y)
    t_dd, q_dd = timed(ours("dirichlet", x, y, matrix="diagonal"))
    row(rows, "dirichlet (diagonal): netcal's model family", t_dd,
        [("netcal LogisticCalibration (vector, mle)", t_nc, q_nc)], q_dd, y)
    print_table(f"vector scaling vs netcal LogisticCalibration at {n} x {k}", rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--isotonic-only", action="store_true", help="only the isotonic one-vs-rest rows")
    ap.add_argument("--netcal-lc-size", default="5000x100", help="n x k for the netcal LogisticCalibration row")
    args = ap.parse_args(argv)
    print(versions("netcal", "scikit-learn"))
    with quiet():  # warm-up: imports (torch, scipy, sklearn, netcal) and first-call costs out of the timings
        xw, yw = make_data(500, 5)
        for name in ("isotonic", "temperature", "vector_scaling", "histogram_binning"):
            ours(name, xw, yw)()
        sklearn_ovr(xw, yw)()
        netcal_method("IsotonicRegression", "netcal.binning", xw, yw)()
    sizes = [(5000, 10), (5000, 100)] if args.quick else [(50000, 100), (50000, 1000)]
    for n, k in sizes:
        bench_size(n, k, isotonic_only=args.isotonic_only)
    if args.isotonic_only:
        return
    n, k = (1000, 10) if args.quick else tuple(int(v) for v in args.netcal_lc_size.lower().split("x"))
    bench_vector_scaling(n, k)


if __name__ == "__main__":
    main()
