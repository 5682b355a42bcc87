"""calib.runtime: a saved pipeline served with numpy alone, equal bit for bit to the library components.

The reference is always the fitted library components called directly on the whole batch:
``calibrator.predict_proba(x)``, ``conformal.predict_set(p, groups=...)``, ``policy.route(p, sets=...,
fallback=..., explain=True)`` -- never ``FittedPipeline`` itself.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import calib.deploy
import calib.runtime
from calib import calibrators as C
from calib import conformal as CF
from calib import policy as P
from calib.artifacts import (
    READABLE_SCHEMAS,
    ArtifactError,
    SignatureError,
    _manifest_digest,
)
from calib.conformal.scores import SCORES
from calib.datasets import synthetic
from calib.deploy import FittedPipeline, NotPortableError
from calib.policy.routing import ACTIONS, REASONS

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
BLOCKED = ("torch", "scipy", "hydra", "omegaconf", "matplotlib", "netcal")
KEY = b"0123456789abcdef-team-key"


@pytest.fixture(autouse=True)
def _no_signing_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("CALIB_SIGNING_KEY", raising=False)
    monkeypatch.delenv("CALIB_SIGNING_KEY_FILE", raising=False)


# --- the registry grid ------------------------------------------------------------------------------
#: every portable calibrator kind (netcal is not portable: see test_netcal_calibrator_is_not_portable)
CALIBRATORS = {
    "identity": lambda: C.IdentityCalibrator(),
    "temperature": lambda: C.TemperatureScaling(),
    "vector_scaling": lambda: C.VectorScaling(max_iter=200),
    "matrix_scaling": lambda: C.MatrixScaling(max_iter=200),
    "dirichlet": lambda: C.DirichletCalibration(reg_lambda=1e-3, reg_mu=1e-3),
    "ensemble_temperature": lambda: C.EnsembleTemperatureScaling(),
    "isotonic": lambda: C.IsotonicCalibration(),
    "histogram_binning": lambda: C.HistogramBinning(n_bins=10),
    "platt": lambda: C.PlattScaling(),   # binary: fitted on a 2-class data set
    "beta": lambda: C.BetaCalibration(),  # binary
}
BINARY = ("platt", "beta")
#: every conformal predictor kind, the split predictor with every nonconformity score
CONFORMALS = {
    "none": None,
    **{f"split_{s}": (lambda s=s: CF.SplitConformal(score=s, alpha=0.1, seed=3)) for s in SCORES},
    "mondrian_class": lambda: CF.MondrianConformal(condition="class", score="aps", alpha=0.1, seed=5),
    "mondrian_group": lambda: CF.MondrianConformal(condition="group", score="raps", alpha=0.1, seed=5),
    "conformal_risk_control": lambda: CF.ConformalRiskControl(loss="fnr", score="saps", alpha=0.1, seed=7),
    # several alphas: sets (n, k, 2); a policy that routes on sets needs one alpha, so no conformal routing
    "split_aps_2alphas": lambda: CF.SplitConformal(score="aps", alpha=[0.1, 0.2], seed=3),
}
MULTI_ALPHA = ("split_aps_2alphas",)
#: every policy kind; the threshold policy with each confidence score (and fallback modes extras, int, none)
POLICIES = ("none", "threshold", "threshold_margin", "threshold_neg_entropy", "risk_control", "conformal_routing",
            "cost")
#: policies fitted and applied with per-item fallback labels
EXTRAS = ("threshold", "conformal_routing", "cost")


def make_policy(kind, set_score):
    if kind == "none":
        return None
    if kind == "threshold":
        return P.ThresholdPolicy(target_coverage=0.8, fallback_threshold=0.2, fallback="extras")
    if kind == "threshold_margin":
        return P.ThresholdPolicy(target_coverage=0.7, confidence="margin", fallback_threshold=0.15, fallback=1)
    if kind == "threshold_neg_entropy":
        return P.ThresholdPolicy(target_coverage=0.75, confidence="neg_entropy", fallback="none")
    if kind == "risk_control":
        return P.RiskControlPolicy(target_risk=0.25, delta=0.1, fallback="majority", fallback_threshold=0.3)
    if kind == "conformal_routing":
        return P.ConformalRoutingPolicy(empty_set="auto", set_score=set_score, fallback="extras")
    if kind == "cost":
        return P.CostPolicy(costs={"escalation": 0.15, "wrong_fallback": 0.8}, fallback="extras")
    raise AssertionError(kind)


def test_the_grid_covers_every_portable_registry_kind():
    assert set(CALIBRATORS) == {k for k, cls in C.REGISTRY.items() if cls.portable}
    assert set(C.REGISTRY) - set(CALIBRATORS) == {"netcal"}
    assert {f.split("_", 1)[0] if f.startswith("split") else f.rsplit("_", 1)[0] if f.startswith("mondrian") else f
            for f in CONFORMALS if f != "none"} == set(CF.REGISTRY)
    assert {f"split_{s}" for s in SCORES} <= set(CONFORMALS)
    assert {p.split("_")[0] if p.startswith("threshold") else p for p in POLICIES} - {"none"} == set(P.REGISTRY)
    from calib.selective import CONFIDENCES

    assert {make_policy(p, None).confidence for p in POLICIES if p.startswith("threshold")} == set(CONFIDENCES)


def _valid(f, p):
    return not (p == "conformal_routing" and (f == "none" or f in MULTI_ALPHA))


def full_grid():
    """Every portable calibrator x every conformal predictor (and score, and a two-alpha split predictor) x
    every policy (and confidence score; conformal routing only with one-alpha sets): 10 x (6 + 8 x 7 + 6) = 680
    pipelines."""
    return [(c, f, p) for c in CALIBRATORS for f in CONFORMALS for p in POLICIES if _valid(f, p)]


def fast_grid():
    """Every calibrator with {nothing, a randomised RAPS split predictor + conformal routing, the cost policy}
    and temperature scaling with every conformal predictor x every policy (68): 95 pipelines."""
    cases = [(c, f, p) for c in CALIBRATORS
             for f, p in (("none", "none"), ("split_raps", "conformal_routing"), ("none", "cost"))]
    cases += [("temperature", f, p) for f in CONFORMALS for p in POLICIES
              if _valid(f, p) and ("temperature", f, p) not in cases]
    return cases


def _data(binary):
    k = 2 if binary else 5
    d = synthetic(n=900, n_classes=k, temperature=1.5, seed=1)
    rng = np.random.default_rng(7)
    test_logits = d.logits[600:]
    # a few ties, flat rows and extreme logits: argmax tie-breaking, equal probabilities and overflow-prone
    # rows must agree too
    test_logits = test_logits.copy()
    test_logits[:3] = 0.0
    test_logits[3:6, :2] = 1.25
    test_logits[6, :2] = (3e38, -3e38)  # extreme but finite logits
    test_logits[7] = 1e30
    test_logits[8] *= 1e4
    return {"x_cal": d.logits[:600], "y_cal": d.labels[:600], "g_cal": rng.integers(0, 3, 600),
            "fb_cal": rng.integers(0, k, 600), "x": test_logits, "g": rng.integers(0, 3, 300),
            "fb": rng.integers(0, k, 300), "k": k}


def fit_case(cal, conf, pol, data):
    cf = CONFORMALS[conf]
    conformal = None if cf is None else cf()
    policy = make_policy(pol, None if conformal is None else conformal.score_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set-size / nothing-certified / convergence warnings of tiny fits
        return FittedPipeline.fit(data["x_cal"], data["y_cal"], calibrator=CALIBRATORS[cal](), conformal=conformal,
                                  policy=policy, groups=data["g_cal"] if conf == "mondrian_group" else None,
                                  fallback=data["fb_cal"], class_names=[f"class{j}" for j in range(data["k"])])


def library_outputs(pipe, x, groups=None, fallback=None):
    """The reference: the fitted components called directly on the whole batch."""
    p = pipe.calibrator.predict_proba(x)
    out = {"probs": p}
    sets = None
    if pipe.conformal is not None:
        sets = pipe.conformal.predict_set(p, groups=groups)
        out["sets"] = sets
    if pipe.policy is not None:
        d = pipe.policy.route(p, sets=sets if pipe.policy.needs_sets else None, fallback=fallback, explain=True)
        out.update(actions=d.actions, output=d.output, reasons=d.reasons)
    else:  # no policy: every item answered with the model's label
        label = p.argmax(axis=1)
        out.update(actions=np.zeros(len(p), np.int8), output=label,
                   reasons=np.full(len(p), REASONS.index("no_policy"), np.int8))
    out["label"] = p.argmax(axis=1)
    out["confidence"] = p[np.arange(len(p)), out["label"]]
    return out


def assert_bit_equal(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), f"{what}: values differ"
    if got.dtype.kind == "f":
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), f"{what}: bytes differ"


_RUNTIME_SCRIPT = textwrap.dedent(r'''
    import importlib.abc, json, sys
    BLOCKED = {blocked!r}
    preloaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    attempts = []

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ImportError(f"import of {{name}} is blocked in this numpy-only runtime test")
            return None

    sys.meta_path.insert(0, Block())
    block_works = []
    for mod in sorted(BLOCKED):
        try:
            __import__(mod)
            block_works.append(False)
        except ImportError:
            block_works.append(True)
    del attempts[:]

    import numpy as np
    import calib.runtime

    work = sys.argv[1]
    cases = json.load(open(work + "/cases.json"))
    data = {{}}
    for case in cases:
        if case["data"] not in data:
            data[case["data"]] = np.load(work + "/" + case["data"] + ".npz", allow_pickle=False)
        d = data[case["data"]]
        pipe = calib.runtime.load(case["path"])
        groups = d["g"] if case["groups"] else None
        fallback = d["fb"] if case["fallback"] else None
        out = pipe.apply(d["x"], groups=groups, fallback=fallback)
        res = dict(probs=out.probs, label=out.label, confidence=out.confidence, actions=out.actions,
                   output=out.output, reasons=out.reasons, band_low=out.band_low, band_high=out.band_high,
                   predict_proba=pipe.predict_proba(d["x"]), verify_ok=np.asarray(pipe.verify()["ok"]),
                   message=np.asarray(out.explain(len(out) - 1)["message"]))
        if out.sets is not None:
            res["sets"] = out.sets
            if not case["fallback"]:  # see test_predict_set_needs_no_fallback_labels
                res["predict_set"] = pipe.predict_set(d["x"], groups=groups)
        for name, a in res.items():
            np.save(work + "/out/" + case["name"] + "." + name + ".npy", a, allow_pickle=False)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    json.dump({{"preloaded": preloaded, "attempts": sorted(set(attempts)), "leaked": leaked,
               "block_works": block_works, "done": len(cases)}}, open(work + "/out/report.json", "w"))
''').format(blocked=set(BLOCKED))


def run_numpy_only(work, cases):
    """Load and apply every case's artifact in ONE subprocess where importing a blocked package raises."""
    (work / "out").mkdir()
    (work / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k not in ("CALIB_SIGNING_KEY", "CALIB_SIGNING_KEY_FILE")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", _RUNTIME_SCRIPT, str(work)], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"numpy-only runtime failed:\n{proc.stderr[-4000:]}"
    report = json.loads((work / "out" / "report.json").read_text())
    return report, lambda name, field: np.load(work / "out" / f"{name}.{field}.npy", allow_pickle=False)


def _check_grid(tmp_path, grid):
    datasets = {False: _data(False), True: _data(True)}
    for binary, d in datasets.items():
        np.savez(tmp_path / f"data{int(binary)}.npz", x=d["x"], g=d["g"], fb=d["fb"])
    fitted, cases = {}, []
    for cal, conf, pol in grid:
        binary = cal in BINARY
        d = datasets[binary]
        name = f"{cal}-{conf}-{pol}"
        pipe = fit_case(cal, conf, pol, d)
        pipe.save(tmp_path / "artifacts" / name)
        fitted[name] = (pipe, d, conf == "mondrian_group", pol in EXTRAS)
        cases.append({"name": name, "path": str(tmp_path / "artifacts" / name), "data": f"data{int(binary)}",
                      "groups": conf == "mondrian_group", "fallback": pol in EXTRAS})

    report, got = run_numpy_only(tmp_path, cases)
    assert report["preloaded"] == [], f"blocked packages were imported before the block: {report['preloaded']}"
    assert all(report["block_works"]), "the meta_path block did not stop an import"
    assert report["leaked"] == [], f"blocked packages in sys.modules after serving: {report['leaked']}"
    assert report["attempts"] == [], f"the runtime tried to import blocked packages: {report['attempts']}"
    assert report["done"] == len(cases)

    seen_actions, seen_reasons = set(), set()
    for name, (pipe, d, with_groups, with_fb) in fitted.items():
        want = library_outputs(pipe, d["x"], d["g"] if with_groups else None, d["fb"] if with_fb else None)
        for field in ("probs", "label", "confidence", "actions", "output", "reasons"):
            assert_bit_equal(got(name, field), want[field], f"{name} {field}")
        assert_bit_equal(got(name, "predict_proba"), want["probs"], f"{name} predict_proba")
        if "sets" in want:
            assert_bit_equal(got(name, "sets"), want["sets"], f"{name} sets")
            if not with_fb:
                assert_bit_equal(got(name, "predict_set"), want["sets"], f"{name} predict_set")
        else:
            assert not (tmp_path / "out" / f"{name}.sets.npy").exists(), f"{name}: sets without a conformal predictor"
        lo, hi = got(name, "band_low"), got(name, "band_high")
        assert np.all((0 <= lo) & (lo <= hi) & (hi <= 1)), f"{name}: bands outside [0, 1]"
        assert bool(got(name, "verify_ok")), f"{name}: the stored probe rows do not reproduce in the runtime"
        assert str(got(name, "message")).strip(), f"{name}: empty explanation"  # wording: tests/test_deploy.py
        seen_actions |= set(np.unique(want["actions"]).tolist())
        seen_reasons |= {REASONS[r] for r in np.unique(want["reasons"])}
    return seen_actions, seen_reasons


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the 3e38 row (library path)
def test_numpy_only_runtime_equals_the_library_bit_for_bit(tmp_path):
    """The must-show, fast grid (see :func:`fast_grid`): every portable calibrator with no conformal/policy,
    with a randomised RAPS split predictor + conformal routing, and with the cost policy; temperature scaling
    with every conformal predictor (split x {lac, aps, raps, saps, topk}, Mondrian class- and group-conditional,
    conformal risk control, a split predictor with two alphas) x every policy (none, threshold with each
    confidence score, risk_control, conformal_routing [with one-alpha sets], cost), 95 pipelines. Each is
    fitted with ``FittedPipeline.fit`` and saved; ONE subprocess, in which importing torch, scipy, hydra,
    omegaconf, matplotlib or netcal raises, loads each with ``calib.runtime.load`` and applies it (groups for
    the group-conditional predictor, per-item fallback labels for fallback='extras' policies); probabilities,
    labels, confidences, sets, actions, outputs and reasons (and ``predict_proba`` / ``predict_set``) equal
    the library components' on the whole batch bit for bit, and the stored probe rows verify. The full product:
    ``test_numpy_only_runtime_full_registry_product`` (slow)."""
    actions, reasons = _check_grid(tmp_path, fast_grid())
    # the grid is not degenerate: every action and most reasons actually occur
    assert actions == {0, 1, 2}
    assert {"no_policy", "confident", "low_confidence", "low_confidence_fallback", "singleton_set",
            "ambiguous_set", "fallback_in_set", "answer_cheapest", "escalate_cheapest", "fallback_cheapest"} <= reasons


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_numpy_only_runtime_full_registry_product(tmp_path):
    """The must-show over the full product (see :func:`full_grid`): every portable calibrator x every
    conformal predictor and score x every policy, 680 pipelines, in one numpy-only subprocess."""
    actions, _ = _check_grid(tmp_path, full_grid())
    assert actions == {0, 1, 2}


def test_predict_set_needs_no_fallback_labels():
    data = _data(False)
    pipe = fit_case("temperature", "split_lac", "conformal_routing", data)
    want = library_outputs(pipe, data["x"], None, data["fb"])["sets"]
    assert_bit_equal(pipe.predict_set(data["x"]), want, "predict_set")


def test_runtime_import_alone_pulls_in_no_heavy_package():
    code = ("import sys, calib.runtime; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{set(BLOCKED)!r}); print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- chunking -------------------------------------------------------------------------------------
_DECISION_FIELDS = [f.name for f in dataclasses.fields(calib.deploy.Decisions) if f.name != "pipeline"]


def _concat(parts):
    return {f: (None if getattr(parts[0], f) is None else np.concatenate([getattr(d, f) for d in parts]))
            for f in _DECISION_FIELDS}


def _fields(d):
    return {f: getattr(d, f) for f in _DECISION_FIELDS}


@pytest.mark.parametrize("conf,pol", [("split_aps", "conformal_routing"), ("split_raps", "threshold"),
                                      ("mondrian_class", "conformal_routing"), ("mondrian_group", "cost"),
                                      ("conformal_risk_control", "risk_control")])
def test_chunked_apply_equals_one_call(monkeypatch, conf, pol):
    data = _data(False)
    pipe = fit_case("temperature", conf, pol, data)
    x = np.concatenate([data["x"]] * 2)  # 600 rows
    g = np.concatenate([data["g"]] * 2) if conf == "mondrian_group" else None
    fb = np.concatenate([data["fb"]] * 2) if pol in EXTRAS else None
    whole = pipe.apply(x, groups=g, fallback=fb)
    want = library_outputs(pipe, x, g, fb)
    for field in ("probs", "sets", "actions", "output", "reasons"):
        assert_bit_equal(getattr(whole, field), want[field], f"one call {field}")

    monkeypatch.setattr(calib.deploy, "APPLY_ENTRIES", 1)  # 64 rows per chunk (the minimum): 10 chunks
    assert len(calib._chunks.row_slices(len(x), pipe.n_classes, entries=calib.deploy.APPLY_ENTRIES, minimum=64)) == 10
    chunked = pipe.apply(x, groups=g, fallback=fb)
    parts = list(pipe.iter_apply(x, groups=g, fallback=fb, chunk_rows=7))
    assert [s for s, _ in parts] == list(range(0, len(x), 7))
    streamed = _concat([d for _, d in parts])
    for field in _DECISION_FIELDS:
        for what, got in (("apply in 64-row chunks", _fields(chunked)[field]),
                          ("iter_apply(chunk_rows=7)", streamed[field])):
            if whole.sets is None and field == "sets":
                assert got is None
                continue
            assert_bit_equal(got, getattr(whole, field), f"{what} {field}")

    # the check has teeth: chunks that forgot their row offset would draw other uniforms
    conformal = pipe.conformal
    if conformal.is_randomized:
        p = whole.probs
        naive = np.concatenate([conformal.predict_set(p[s:s + 7], groups=None if g is None else g[s:s + 7])
                                for s in range(0, len(p), 7)])
        assert not np.array_equal(naive, whole.sets)


def test_iter_apply_over_a_memory_mapped_npy_equals_one_call(tmp_path):
    data = _data(False)
    pipe = fit_case("temperature", "mondrian_group", "conformal_routing", data)
    np.save(tmp_path / "x.npy", data["x"])
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    whole = pipe.apply(np.asarray(x), groups=data["g"], fallback=data["fb"])
    parts = [d for _, d in pipe.iter_apply(x, groups=data["g"], fallback=data["fb"], chunk_rows=64)]
    assert len(parts) == 5
    streamed = _concat(parts)
    for field in _DECISION_FIELDS:
        assert_bit_equal(streamed[field], getattr(whole, field), f"memmap {field}")


def test_iter_apply_rejects_a_bad_chunk_size():
    data = _data(False)
    pipe = fit_case("temperature", "none", "none", data)
    for bad in (0, -3, 2.5, True, "7"):
        with pytest.raises(ValueError, match="chunk_rows"):
            list(pipe.iter_apply(data["x"], chunk_rows=bad))


# --- thread safety --------------------------------------------------------------------------------
def _snapshot(obj):
    return copy.deepcopy(obj.__dict__)


def _same(a, b, where="obj"):
    """Deep equality of two snapshots (arrays bit for bit, with their dtype; objects by their __dict__)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{where}[{i}]")
    elif isinstance(a, float):
        assert isinstance(b, float) and (a == b or (np.isnan(a) and np.isnan(b))), f"{where}: {a!r} != {b!r}"
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        assert type(a) is type(b), where
        _same(vars(a), vars(b), f"{where}<{type(a).__name__}>")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_one_loaded_pipeline_serves_eight_threads(tmp_path, monkeypatch):
    data = _data(False)
    pipe = fit_case("temperature", "mondrian_class", "conformal_routing", data)
    pipe.save(tmp_path / "art")
    served = calib.runtime.load(tmp_path / "art")
    monkeypatch.setattr(calib.deploy, "APPLY_ENTRIES", 1)  # many small chunks: more interleaving
    rng = np.random.default_rng(99)
    batches = [((rng.standard_normal((n, 5)) * 3).astype(np.float32), rng.integers(0, 5, n))
               for n in rng.integers(200, 1500, 16)]
    before = {name: _snapshot(obj) for name, obj in served.components.items()}
    before_pipe = _snapshot(served)

    sequential = [served.apply(x, fallback=fb) for x, fb in batches]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        concurrent_ = list(pool.map(lambda b: served.apply(b[0], fallback=b[1]), batches))

    for (x, fb), s, c in zip(batches, sequential, concurrent_):
        want = library_outputs(pipe, x, None, fb)  # the original fitted components
        for field in ("probs", "sets", "actions", "output", "reasons"):
            assert_bit_equal(getattr(c, field), getattr(s, field), f"concurrent vs sequential {field}")
            assert_bit_equal(getattr(c, field), want[field], f"concurrent vs library {field}")
        for field in ("band_low", "band_high", "label", "confidence"):
            assert_bit_equal(getattr(c, field), getattr(s, field), f"concurrent vs sequential {field}")
    for name, obj in served.components.items():
        _same(obj.__dict__, before[name], name)
    _same(served.__dict__, before_pipe, "pipeline")


# --- non-portable ---------------------------------------------------------------------------------
def test_netcal_calibrator_is_not_portable(tmp_path):
    pytest.importorskip("netcal")
    data = _data(False)
    pipe = FittedPipeline.fit(data["x_cal"], data["y_cal"],
                              calibrator=C.NetcalCalibrator(method="HistogramBinning", method_kwargs={"bins": 10}),
                              conformal=CF.SplitConformal(score="lac", alpha=0.1))
    assert not pipe.portable
    with pytest.warns(UserWarning, match=r"'netcal'.*not portable.*calib\.runtime"):
        pipe.save(tmp_path / "art")
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["portable"] is False
    with pytest.raises(NotPortableError, match=r"calibrator 'netcal'.*calib\.runtime \(numpy only\) cannot serve it"):
        calib.runtime.load(tmp_path / "art")
    loaded = FittedPipeline.load(tmp_path / "art")
    want = library_outputs(pipe, data["x"])
    out = loaded.apply(data["x"])
    assert_bit_equal(out.probs, want["probs"], "netcal probs")
    assert_bit_equal(out.sets, want["sets"], "netcal sets")


# --- versioning -----------------------------------------------------------------------------------
def _edit_manifest(path, fn, *, rehash=True):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    if rehash:
        m["manifest_sha256"] = _manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("loader", [calib.runtime.load, FittedPipeline.load], ids=["runtime", "FittedPipeline"])
def test_schema_1_fixture_loads_without_a_reliability_table(loader):
    from scipy.special import softmax as scipy_softmax

    pipe = loader(FIXTURES / "artifact_v1")
    assert pipe.reliability is None and pipe.class_names == ("a", "b", "c", "d")
    x = np.array([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [5.0, -3.0, 4.5, 1.0]], dtype=np.float32)
    t, qhat = 1.5392529929428311, 0.8634919226169586  # as written in the fixture's manifest.json
    out = pipe.apply(x)
    np.testing.assert_allclose(out.probs, scipy_softmax(x.astype(np.float64) / t, axis=1), rtol=1e-6)
    assert np.array_equal(out.sets, out.probs >= 1 - qhat)  # LAC
    assert np.isnan(out.band_low).all() and np.isnan(out.band_high).all()
    e = out.explain(2)
    assert e["band"] is None and e["class_name"] == "a" and e["reason"] == "no_policy"
    assert "'a'" in e["message"] and "interval" not in e["message"]
    assert pipe.verify() == {"probe_rows": 0, "checked": [], "mismatches": {}, "max_abs_diff_probs": None, "ok": True}


@pytest.mark.parametrize("loader", [calib.runtime.load, FittedPipeline.load], ids=["runtime", "FittedPipeline"])
@pytest.mark.parametrize("name", ["mondrian_riskpolicy", "crc_threshold", "split_inf_conformal_routing"])
def test_schema_1_pre_contract_fixtures_apply_as_their_writer_did(loader, name):
    # sets and actions as the code that wrote these artifacts produced them (an independent oracle);
    # mondrian_riskpolicy holds two alphas: sets (n, k, 2), its policy routes on confidence alone
    expected = np.load(FIXTURES / "artifact_v1_pre_contract" / "expected.npz", allow_pickle=False)
    pipe = loader(FIXTURES / "artifact_v1_pre_contract" / name)
    assert pipe.reliability is None and pipe.probe is None
    out = pipe.apply(expected["test_logits"], groups=expected["test_groups"])
    np.testing.assert_array_equal(out.probs, expected[f"{name}.probs"])
    np.testing.assert_array_equal(out.sets, expected[f"{name}.sets"])
    np.testing.assert_array_equal(out.actions, expected[f"{name}.actions"])
    assert np.isnan(out.band_low).all() and np.isnan(out.band_high).all()
    for i in (0, int(np.argmax(out.actions != 0))):
        e = out.explain(i)
        assert e["band"] is None and e["action"] == ACTIONS[out.actions[i]] and e["class_name"] == str(out.label[i])
        assert e["message"] and "interval" not in e["message"]
    assert len(out.columns()["reason"]) == len(out)


@pytest.mark.parametrize("loader", [calib.runtime.load, FittedPipeline.load], ids=["runtime", "FittedPipeline"])
def test_schema_2_fixture_loads_and_reproduces_its_outputs_bit_for_bit(loader):
    path = FIXTURES / "artifact_v2" / "artifact"
    assert json.loads((path / "manifest.json").read_text())["schema_version"] == 2
    e = np.load(FIXTURES / "artifact_v2" / "expected.npz", allow_pickle=False)
    pipe = loader(path)
    assert pipe.class_names[3] == "cat" and pipe.n_classes == 10
    out = pipe.apply(e["logits"], fallback=e["fallback"])
    for field in ("probs", "sets", "actions", "output", "reasons", "band_low", "band_high"):
        assert_bit_equal(getattr(out, field), e[field], f"schema-2 fixture {field}")
    assert set(np.unique(e["actions"]).tolist()) == {0, 1, 2}  # answered, escalated and fallback items
    assert pipe.verify()["ok"] and pipe.verify()["checked"] == ["probs", "sets", "actions", "reasons"]
    i = int(np.flatnonzero(e["actions"] == 1)[0])
    ex = out.explain(i)
    assert ex["reason"] == "ambiguous_set" and ex["class_name"] in ex["message"]


def test_a_newer_schema_is_refused_naming_both_versions(tmp_path):
    shutil.copytree(FIXTURES / "artifact_v2" / "artifact", tmp_path / "art")
    _edit_manifest(tmp_path / "art", lambda m: m.update(schema_version=4, calib_version="9.1.0"))
    for loader in (calib.runtime.load, FittedPipeline.load):
        with pytest.raises(ArtifactError, match=r"schema_version 4 \(written by calib '9\.1\.0'\).*this calib "
                                                rf"{calib.__version__} reads schema versions \[1, 2, 3\]; upgrade calib"):
            loader(tmp_path / "art")
    assert max(READABLE_SCHEMAS) == 3


# --- signing --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_pipe():
    return fit_case("temperature", "split_lac", "threshold", _data(False))


def test_signed_artifact_loads_with_its_key_and_not_with_another(tmp_path, small_pipe):
    path = small_pipe.save(tmp_path / "art", key=KEY)
    sig = json.loads((path / "signature.json").read_text())
    assert sig["algorithm"] == "hmac-sha256" and len(sig["hmac"]) == 64
    for loader in (calib.runtime.load, FittedPipeline.load):
        assert loader(path, key=KEY).calibrator.temperature_ == small_pipe.calibrator.temperature_
        with pytest.raises(SignatureError, match="Signature mismatch"):
            loader(path, key=b"another-key-of-the-right-length")


def test_a_key_from_the_environment_signs_and_is_required(tmp_path, small_pipe, monkeypatch):
    unsigned = small_pipe.save(tmp_path / "unsigned")
    assert not (unsigned / "signature.json").exists()
    monkeypatch.setenv("CALIB_SIGNING_KEY", KEY.decode())
    with pytest.raises(SignatureError, match="is not signed, but a signing key is configured"):
        calib.runtime.load(unsigned)
    signed = small_pipe.save(tmp_path / "signed")  # the environment's key signs
    assert (signed / "signature.json").is_file()
    calib.runtime.load(signed)
    monkeypatch.delenv("CALIB_SIGNING_KEY")
    keyfile = tmp_path / "key"
    keyfile.write_bytes(KEY + b"\n")  # a trailing newline is not part of the key
    monkeypatch.setenv("CALIB_SIGNING_KEY_FILE", str(keyfile))
    calib.runtime.load(signed)
    with pytest.raises(SignatureError, match="is not signed"):
        FittedPipeline.load(unsigned)
    keyfile.write_bytes(b"a-different-key-0123456789")
    with pytest.raises(SignatureError, match="Signature mismatch"):
        calib.runtime.load(signed)
    monkeypatch.setenv("CALIB_SIGNING_KEY_FILE", str(tmp_path / "missing-key"))
    with pytest.raises(SignatureError, match="readable signing key file"):
        calib.runtime.load(signed)


def test_checksums_stop_accidents_signatures_stop_edits(tmp_path, small_pipe):
    """An edit of a signed artifact with its manifest_sha256 recomputed passes the checksums (anyone can
    recompute them) and loads WITHOUT a key; with the key configured it is refused."""
    path = small_pipe.save(tmp_path / "art", key=KEY)
    _edit_manifest(path, lambda m: m["components"]["calibrator"]["state"].update(temperature=1.0))
    edited = calib.runtime.load(path)  # no key: the edit is not detected
    assert edited.calibrator.temperature_ == 1.0 != small_pipe.calibrator.temperature_
    with pytest.raises(SignatureError, match="modified after it was signed"):
        calib.runtime.load(path, key=KEY)
    with pytest.raises(SignatureError, match="modified after it was signed"):
        FittedPipeline.load(path, key=KEY)


def test_an_unreadable_or_foreign_signature_is_refused_with_a_key(tmp_path, small_pipe):
    path = small_pipe.save(tmp_path / "art", key=KEY)
    calib.runtime.load(path)  # without a key a signature is not checked
    (path / "signature.json").write_text("{not json")
    with pytest.raises(SignatureError, match="unreadable"):
        calib.runtime.load(path, key=KEY)
    (path / "signature.json").write_text(json.dumps({"algorithm": "md5", "hmac": "00"}))
    with pytest.raises(SignatureError, match="hmac-sha256"):
        calib.runtime.load(path, key=KEY)


@pytest.mark.parametrize("bad,error", [(b"short-key", SignatureError), ("", SignatureError), (12345, TypeError)])
def test_a_bad_key_writes_nothing(tmp_path, small_pipe, bad, error):
    with pytest.raises(error, match="key"):
        small_pipe.save(tmp_path / "art", key=bad)
    assert list(tmp_path.iterdir()) == []
    if error is SignatureError:
        path = small_pipe.save(tmp_path / "art2", key=KEY)
        with pytest.raises(SignatureError, match="at least 16 bytes"):
            calib.runtime.load(path, key=bad)


def test_a_short_key_in_the_environment_is_refused(tmp_path, small_pipe, monkeypatch):
    monkeypatch.setenv("CALIB_SIGNING_KEY", "tooshort")
    with pytest.raises(SignatureError, match=r"at least 16 bytes, got 8 \(from CALIB_SIGNING_KEY\)"):
        small_pipe.save(tmp_path / "art")
    assert list(tmp_path.iterdir()) == []
