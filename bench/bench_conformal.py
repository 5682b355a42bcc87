"""Conformal calibrate+predict speed vs TorchCP, MAPIE and puncc on the same probabilities, one process.

    python bench/bench_conformal.py            # 50,000 calibration + 50,000 test rows x 1000 classes
    python bench/bench_conformal.py --quick    # 5,000 + 5,000 x 100, smoke run

Inputs: seeded synthetic float32 probabilities (softmax of N(0, 1) * 4 logits), labels drawn from those
probabilities (so they are calibrated). Each cell is the best of ``--repeats`` runs (at least 5 for lac) of
fit (calibrate) plus predict_set on the test rows, alpha = 0.1; each peer runs its repeats back to back.
Non-randomised rows (lac, aps, raps) compare sets row by row ("sets==calib": fraction of identical rows);
randomised rows (aps_rand, raps_rand) use each library's own random draws, so only coverage and mean size
can agree. MAPIE has no non-randomised APS calibration score and its RAPS tunes on an internal split, so it
appears in lac and aps_rand only. Peers that do not import are skipped and named. TorchCP's package
__init__ needs optional dependencies (torchsort, torch_geometric), so its classification.score / predictor
subpackages are imported directly. puncc returns Python lists of lists: that is its output format and part
of its time.

The "lac floor" row is a lower bound, not a method: one bare read of the calibration array, one read of
the test array and one write of the bool sets into fresh memory, with no checks, on calib's threads. LAC
is memory-bound, so no implementation that reads its inputs can beat it; "TorchCP / floor" is the largest
LAC ratio this machine allows, and "calib / floor" what calib's checks and quantile cost on top of it (the
target of issue #14: at most 1.5x). The "lac checks" row is the floor plus calib's input checks alone
(``check_probs`` on both arrays, the sets written inside the test array's pass; no labels, no quantile):
what any LAC that checks its inputs with numpy kernels pays, so "checks / floor" bounds "calib / floor".
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import time
import types

import numpy as np


import sys as _sys
_sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from _common import versions as _common_versions  # noqa: E402

def make_data(n_cal, n_test, k, seed=0):
    rng = np.random.default_rng(seed)
    n = n_cal + n_test
    probs = np.empty((n, k), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, 5000):
        z = rng.standard_normal((min(5000, n - start), k)).astype(np.float32) * 4.0
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        probs[start:start + z.shape[0]] = z
        c = np.cumsum(z, axis=1, dtype=np.float64)
        labels[start:start + z.shape[0]] = np.minimum((rng.random(z.shape[0])[:, None] * c[:, -1:] > c).sum(1), k - 1)
    return probs[:n_cal], labels[:n_cal], probs[n_cal:], labels[n_cal:]


def load_torchcp():
    if "torchcp" in sys.modules:
        root = sys.modules["torchcp"].__path__[0]
    else:
        spec = importlib.util.find_spec("torchcp")
        if spec is None:
            raise ImportError("torchcp is not installed")
        root = os.path.dirname(spec.origin)
    for name, path in (("torchcp", root), ("torchcp.classification", os.path.join(root, "classification"))):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [path]
            sys.modules[name] = mod
    from torchcp.classification import predictor, score

    return score, predictor


# --- runners: each returns a bool (n_test, k) array or list of lists, and is timed from the call --------
RANDOMIZED = {"lac": False, "aps": False, "raps": False, "aps_rand": True, "raps_rand": True}


def _base(method):
    return method.replace("_rand", "")


def run_calib(method, pc, yc, pt, kw):
    from calib.conformal import SplitConformal

    # never_empty=False: the peers leave randomised empty sets empty, so like is compared with like
    return SplitConformal(score=_base(method), alpha=0.1, randomized=RANDOMIZED[method], never_empty=False,
                          **kw).fit(pc, yc).predict_set(pt)


def run_torchcp(method, pc, yc, pt, kw):
    import torch

    score, predictor = load_torchcp()
    rand = RANDOMIZED[method]
    sf = {"lac": lambda: score.LAC(score_type="identity"),
          "aps": lambda: score.APS(score_type="identity", randomized=rand),
          "raps": lambda: score.RAPS(score_type="identity", randomized=rand, penalty=kw.get("lam", 0.0),
                                     kreg=kw.get("k_reg", 0))}[_base(method)]()
    tp = predictor.SplitPredictor(score_function=sf, model=None, alpha=0.1, device=torch.device("cpu"))
    tp.calculate_threshold(torch.from_numpy(pc), torch.from_numpy(yc), alpha=0.1)
    return tp.predict_with_logits(torch.from_numpy(pt))


def _fixed_estimator(P):
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Fixed(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            return self

        def predict_proba(self, X):
            return P[np.asarray(X)[:, 0].astype(np.int64)]

        def predict(self, X):
            return self.predict_proba(X).argmax(1)

    est = Fixed()
    est.classes_ = np.arange(P.shape[1])
    return est


def run_mapie(method, pc, yc, pt, kw):
    from mapie.classification import SplitConformalClassifier

    if _base(method) == "raps":
        raise NotImplementedError("MAPIE's RAPS tunes k_reg/lambda on an internal split of the conformalize "
                                  "set (size_raps), so it is not the same procedure")
    if method == "aps":
        raise NotImplementedError("MAPIE's APS calibration score is always randomised; compared in aps_rand")
    P = np.concatenate([pc, pt])
    est = _fixed_estimator(P)
    X = np.arange(P.shape[0], dtype=np.float64)[:, None]
    m = SplitConformalClassifier(estimator=est, confidence_level=0.9, conformity_score=_base(method), prefit=True,
                                 random_state=0)
    m.conformalize(X[:pc.shape[0]], yc)
    _, sets = m.predict_set(X[pc.shape[0]:], conformity_score_params={"include_last_label": "randomized"}
                            if method == "aps_rand" else None)
    return sets[:, :, 0]


def run_puncc(method, pc, yc, pt, kw):
    from deel.puncc.api.prediction import BasePredictor
    from deel.puncc import classification as pcl

    class Identity:
        def predict(self, X):
            return X

    pred = BasePredictor(Identity(), is_trained=True)
    if method == "lac":
        cp = pcl.LAC(pred, train=False)
    elif _base(method) == "aps":
        cp = pcl.APS(pred, train=False, rand=RANDOMIZED[method])
    else:
        cp = pcl.RAPS(pred, train=False, rand=RANDOMIZED[method], lambd=kw.get("lam", 0.0), k_reg=kw.get("k_reg", 1))
    cp.fit(X_calib=pc, y_calib=yc)
    _, sets = cp.predict(pt, alpha=0.1)
    return sets


PEERS = {"calib": run_calib, "torchcp": run_torchcp, "mapie": run_mapie, "puncc": run_puncc}


def memory_floor(pc, pt, threshold=0.01):
    """The least work any LAC calibrate+predict that checks its inputs can do: read every calibration entry
    once (here a bare max, no checks), read every test entry once and write the (n, k) bool sets into fresh
    memory, on calib's worker threads. No row sums, no labels, no quantile: a lower bound, not a method."""
    from calib._chunks import map_threads, num_threads

    def spans(n, parts):
        edges = [n * i // parts for i in range(parts + 1)]
        return list(zip(edges[:-1], edges[1:]))

    t = pc.dtype.type(threshold)
    workers = num_threads()
    map_threads(lambda sp: pc[sp[0]:sp[1]].max(), spans(pc.shape[0], workers))
    out = np.empty(pt.shape, dtype=bool)
    map_threads(lambda sp: np.greater_equal(pt[sp[0]:sp[1]], t, out=out[sp[0]:sp[1]]), spans(pt.shape[0], workers))
    return out


def checks_floor(pc, pt, threshold=0.01):
    """The floor plus calib's probability checks and nothing else: ``check_probs`` of the calibration array,
    and of the test array with the bool sets written chunk by chunk inside its pass (as calib's LAC does).
    No labels, no scores, no quantile: the least a LAC built on these checks can take."""
    from calib._validation import check_probs

    t = pt.dtype.type(threshold)
    check_probs(pc)
    out = np.empty(pt.shape, dtype=bool)
    check_probs(pt, on_chunk=lambda start, block: np.greater_equal(block, t, out=out[start:start + block.shape[0]]))
    return out


def to_bool(sets, n, k):
    if isinstance(sets, np.ndarray):
        return sets.astype(bool)
    if hasattr(sets, "numpy"):
        return sets.numpy().astype(bool)
    out = np.zeros((n, k), dtype=bool)
    rows = np.repeat(np.arange(n), [len(s) for s in sets])
    out[rows, np.concatenate([np.asarray(s, dtype=np.int64) for s in sets])] = True
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="conformal calibrate+predict benchmark")
    ap.add_argument("--n-cal", type=int, default=50000)
    ap.add_argument("--n-test", type=int, default=50000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["lac", "aps", "aps_rand", "raps", "raps_rand"])
    ap.add_argument("--peers", nargs="+", default=list(PEERS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="skip the LAC memory-floor and checks rows (the least time any checked LAC can take here)")
    args = ap.parse_args(argv)
    print(_common_versions("torchcp", "mapie", "puncc"))
    if args.quick:
        args.n_cal, args.n_test, args.k, args.repeats = 5000, 5000, 100, 1
    pc, yc, pt, yt = make_data(args.n_cal, args.n_test, args.k)
    for peer, mod in (("torchcp", None), ("mapie", "mapie.classification"), ("puncc", "deel.puncc.classification")):
        try:  # import outside the timed region
            load_torchcp() if peer == "torchcp" else __import__(mod)
        except Exception as err:  # noqa: BLE001 - report any import failure and skip the peer
            print(f"peer {peer} does not import ({type(err).__name__}: {str(err)[:80]}); skipped")
            if peer in args.peers:
                args.peers.remove(peer)
    kw_of = {"lac": {}, "aps": {}, "aps_rand": {}, "raps": {"k_reg": 5, "lam": 0.01}, "raps_rand": {"k_reg": 5, "lam": 0.01}}
    run_calib("lac", pc[:100], yc[:100], pt[:100], {})  # warm-up: imports and first-call costs
    print(f"{args.n_cal} calibration + {args.n_test} test rows x {args.k} classes, float32, alpha=0.1, "
          f"best of {args.repeats}; threads: torch={_torch_threads()}, calib={_threads()} (CALIB_NUM_THREADS)")
    header = f"{'method':6s} {'peer':8s} {'seconds':>8s} {'x calib':>8s} {'coverage':>9s} {'mean size':>10s} {'sets==calib':>12s}"
    print(header)
    print("-" * len(header))
    for method in args.methods:
        # Each peer runs its repeats back to back (its allocator and caches warm, its best case); only the
        # last output is summarised and then freed, and only calib's sets are kept, for the row comparison.
        best = {peer: np.inf for peer in args.peers}
        if method == "lac" and args.floor:
            best["floor"] = np.inf
            best["checks"] = np.inf
        stats, calib_sets = {}, None
        repeats = args.repeats if method != "lac" else max(args.repeats, 5)
        for peer in list(best):
            fn = {"floor": lambda *a: memory_floor(pc, pt), "checks": lambda *a: checks_floor(pc, pt)}.get(peer)
            fn = fn or PEERS[peer]
            try:
                for _ in range(repeats):
                    sets = None
                    gc.collect()
                    t0 = time.perf_counter()
                    sets = fn(method, pc, yc, pt, kw_of[method])
                    best[peer] = min(best[peer], time.perf_counter() - t0)
            except (ImportError, NotImplementedError, ModuleNotFoundError) as err:
                print(f"{method:6s} {peer:8s} skipped: {type(err).__name__}: {str(err)[:90]}")
                del best[peer]
                continue
            if peer not in ("floor", "checks"):
                b = to_bool(sets, pt.shape[0], pt.shape[1])
                if peer == "calib":
                    calib_sets = b
                same = ("-" if calib_sets is None or peer == "calib" or RANDOMIZED[method]
                        else f"{(b == calib_sets).all(1).mean():.4f}")
                stats[peer] = (float(b[np.arange(b.shape[0]), yt].mean()), float(b.sum(1).mean()), same)
                del b
            del sets
        base = best.get("calib")
        for peer, seconds in best.items():
            if peer == "checks":
                vs = f"; checks / floor = {seconds / best['floor']:.2f}x" if "floor" in best else ""
                print(f"lac    checks   {seconds:8.3f}  the floor + calib's input checks of both arrays, no labels, "
                      f"no quantile{vs}")
                continue
            if peer == "floor":
                vs = f"; calib / floor = {best['calib'] / seconds:.2f}x" if "calib" in best else ""
                vs += f"; TorchCP / floor = {best['torchcp'] / seconds:.1f}x" if "torchcp" in best else ""
                print(f"lac    floor    {seconds:8.3f}  read both inputs once + write the sets, no checks "
                      f"({_threads()} threads){vs}")
                continue
            cov, size, same = stats[peer]
            ratio = "" if base is None else f"{seconds / base:8.1f}"
            print(f"{method:6s} {peer:8s} {seconds:8.3f} {ratio:>8s} {cov:9.4f} {size:10.3f} {same:>12s}")
    return 0


def _threads():
    from calib._chunks import num_threads

    return num_threads()


def _torch_threads():
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
