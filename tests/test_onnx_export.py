"""ONNX export (calib.export_onnx) against onnxruntime: every expressible calibrator, LAC sets and the routing
policies, fitted on the embedded real logits (c10lt_resnet110) and compared on its *test* split (rows the export's
own check never saw) with calib's numpy path; what is not expressible is refused (strict) or omitted with a reason;
a failing check writes nothing; bad arguments name themselves."""

from __future__ import annotations

import functools
import json
import os
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="ONNX export needs the optional extra: pip install 'calib[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the export is checked against onnxruntime (optional extra 'onnx')")

import calib
import calib.export_onnx as X
from calib import calibrators as C
from calib import conformal as CF
from calib import policy as P
from calib.base import NotFittedError
from calib.calibrators.base import softmax
from calib.export_onnx import ExportError, export_onnx

K = 10
EPS32 = float(np.finfo(np.float32).eps)


@functools.cache
def _data():
    from calib.datasets import load

    cal, test = load("c10lt_resnet110").split_cal_test()
    return cal, test


@functools.cache
def _fitted(kind, items):
    cal, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence / ill-posedness notes of the fits are not under test here
        return C.REGISTRY[kind](**dict(items)).fit(cal.logits, cal.labels)


def _binary():
    cal, test = _data()
    mc, mt = cal.labels < 2, test.labels < 2
    return (cal.logits[mc][:, :2], cal.labels[mc]), (test.logits[mt][:, :2], test.labels[mt])


def _run(path, logits, fallback=None):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"logits": np.ascontiguousarray(logits, dtype=np.float32)}
    if fallback is not None:
        feed["fallback"] = np.asarray(fallback, dtype=np.int64)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


SMOOTH = [
    ("identity", ()),
    ("temperature", ()),
    ("ensemble_temperature", ()),
    ("vector_scaling", ()),
    ("matrix_scaling", (("reg_lambda", 1e-2), ("reg_mu", 1e-2))),
    ("dirichlet", (("reg_lambda", 1e-2), ("reg_mu", 1e-2))),
    ("dirichlet", (("matrix", "diagonal"),)),
]
STEP = [
    ("histogram_binning", ()),
    ("histogram_binning", (("multiclass", "top_label"),)),
    ("isotonic", ()),
    ("isotonic", (("multiclass", "top_label"),)),
]


def _id(spec):
    kind, items = spec
    return kind + "".join(f"-{v}" for _, v in items)


@pytest.mark.parametrize("spec", SMOOTH, ids=_id)
def test_smooth_calibrators_match_calib_on_the_test_split(spec, tmp_path):
    cal = _fitted(*spec)
    _, test = _data()
    res = export_onnx(cal, tmp_path / "m.onnx")
    assert res["outputs"] == ["probs", "label"] and res["omitted"] == {}
    assert res["max_abs_diff"]["probs"] <= 1e-6  # the export's own check, on its own sample
    out = _run(tmp_path / "m.onnx", test.logits)
    ref = cal.predict_proba(test.logits)
    assert out["probs"].dtype == np.float32 and out["probs"].shape == ref.shape
    diff = np.abs(out["probs"].astype(np.float64) - ref)
    assert diff.max() <= 1e-6, f"{_id(spec)}: max |onnx - calib| = {diff.max():.3g} on the test split"
    assert out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["label"], out["probs"].argmax(axis=1))


def test_linear_calibrators_recompute_overflowing_rows_in_float64(tmp_path):
    # logits near float32's limit: W z + b overflows float32 and calib recomputes those rows in float64
    import copy

    cal = copy.deepcopy(_fitted("matrix_scaling", (("reg_lambda", 1e-2), ("reg_mu", 1e-2))))
    cal.weights_ = cal.weights_ * 10.0  # scores 10x the logits' scale, so that 3e38 logits overflow float32
    export_onnx(cal, tmp_path / "m.onnx")
    z = np.zeros((3, K), dtype=np.float32)
    z[0, 0], z[0, 1] = 3.3e38, -3.3e38
    z[1, :] = np.linspace(-3e38, 3e38, K)
    z[2, 3] = 1e38
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(z @ cal.weights_.T.astype(np.float32)).all()  # the float32 path really overflows
    out = _run(tmp_path / "m.onnx", z)
    ref = cal.predict_proba(z)
    assert np.isfinite(out["probs"]).all()
    assert np.abs(out["probs"] - ref).max() <= 1e-6


def _ort_softmax(tmp_path, logits):
    """The graph's own float32 softmax (the identity calibrator's graph, the ops every map starts from)."""
    ident = _fitted("identity", ())
    export_onnx(ident, tmp_path / "softmax.onnx", check=False)
    return _run(tmp_path / "softmax.onnx", logits)["probs"]


def _reference_map(cal, p):
    """calib's map of histogram binning / isotonic on given softmax probabilities, written here with
    np.searchsorted / np.interp on the fitted tables and calib's renormalise / top_label_apply."""
    from calib.calibrators.isotonic import renormalise, top_label_apply

    p64 = p.astype(np.float64)
    if cal.kind == "histogram_binning":
        def one(c, v):
            return cal.bin_frequencies_[c][np.searchsorted(cal.bin_edges_[c], v, side="right")]
    else:
        def one(c, v):
            n = cal.knot_counts_[c]
            return np.interp(v, cal.knots_x_[c, :n], cal.knots_y_[c, :n])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cal.multiclass == "ovr":
            q = np.stack([one(c, p64[:, c]) for c in range(p.shape[1])], axis=1).astype(np.float32)
            return renormalise(q)[0]
        return top_label_apply(p, one(0, p64.max(axis=1)))


@pytest.mark.parametrize("spec", STEP, ids=_id)
def test_step_calibrators_match_calib_up_to_softmax_ulps(spec, tmp_path):
    """Histogram and isotonic maps have steps / steep pieces: there the few-ulp difference between numpy's and
    onnxruntime's float32 softmax moves the output. Shown: (a) the two softmaxes agree to 8 ulps, (b) the graph's
    output is calib's map of the graph's own softmax (<= 1e-6 on every row), (c) end to end <= 1e-6 on all but a
    few rows, and on those the graph is right about its own softmax (b)."""
    cal = _fitted(*spec)
    _, test = _data()
    res = export_onnx(cal, tmp_path / "m.onnx")
    assert res["max_abs_diff"]["probs_given_softmax"] <= 1e-6
    out = _run(tmp_path / "m.onnx", test.logits)["probs"]
    sm = _ort_softmax(tmp_path, test.logits).astype(np.float64)
    sm_ref = softmax(test.logits).astype(np.float64)
    assert (np.abs(sm - sm_ref) <= 8 * EPS32 * sm_ref + 1e-37).all()  # (a)
    own = _reference_map(cal, sm.astype(np.float32))
    assert np.abs(out - own).max() <= 1e-6  # (b)
    diff = np.abs(out.astype(np.float64) - cal.predict_proba(test.logits)).max(axis=1)
    off = int((diff > 1e-6).sum())
    assert off <= 0.01 * test.logits.shape[0], f"{_id(spec)}: {off} of {diff.size} test rows beyond 1e-6"  # (c)


@pytest.mark.parametrize("kind,kw", [("platt", {}), ("platt", {"prior_correction": True}), ("beta", {})])
def test_binary_calibrators_on_a_two_class_subset(kind, kw, tmp_path):
    (xc, yc), (xt, _) = _binary()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = C.REGISTRY[kind](**kw).fit(xc, yc)
    export_onnx(cal, tmp_path / "b.onnx")
    out = _run(tmp_path / "b.onnx", xt)
    assert np.abs(out["probs"].astype(np.float64) - cal.predict_proba(xt)).max() <= 1e-6
    assert out["probs"].shape == (xt.shape[0], 2)


# --- conformal sets and routing policies -----------------------------------------------------------------


@functools.cache
def _probs():
    cal, test = _data()
    ts = _fitted("temperature", ())
    return ts, ts.predict_proba(cal.logits), ts.predict_proba(test.logits)


CONFORMAL = {
    "split": lambda: CF.SplitConformal(score="lac", alpha=0.1),
    "split_never_empty": lambda: CF.SplitConformal(score="lac", alpha=0.02, never_empty=True),
    "mondrian_class": lambda: CF.MondrianConformal(condition="class", score="lac", alpha=0.1),
    "risk_control_miscoverage": lambda: CF.ConformalRiskControl(loss="miscoverage", score="lac", alpha=0.1),
}
POLICIES = {
    "threshold": lambda: P.ThresholdPolicy(threshold=0.9),
    "threshold_margin_const_fallback": lambda: P.ThresholdPolicy(target_coverage=0.8, confidence="margin", fallback=3,
                                                                 fallback_threshold=0.2),
    "threshold_entropy_majority": lambda: P.ThresholdPolicy(target_coverage=0.8, confidence="neg_entropy",
                                                            fallback="majority", fallback_threshold=0.05),
    "risk_control": lambda: P.RiskControlPolicy(target_risk=0.05, delta=0.1),
    "conformal_routing": lambda: P.ConformalRoutingPolicy(fallback=2),
    "conformal_routing_answer_top": lambda: P.ConformalRoutingPolicy(empty_set="answer_top"),
    "cost": lambda: P.CostPolicy(costs={"escalation": 0.1}),
    "cost_fallback": lambda: P.CostPolicy(fallback=1, costs={"escalation": 0.3, "wrong_fallback": 0.5}),
}


@functools.cache
def _conformal(name):
    _, pc, _ = _probs()
    cal, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CONFORMAL[name]().fit(pc, cal.labels)


def _policy(name, cp, fallback=None):
    _, pc, _ = _probs()
    cal, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return POLICIES[name]().fit(pc, cal.labels, sets=cp.predict_set(pc), fallback=fallback)


def _set_margin(cp, p):
    t = np.asarray(cp.thresholds_, dtype=np.float64)
    t = t[:, 0][None, :] if cp.kind == "mondrian" else t[0]
    return np.abs(1.0 - p.astype(np.float64) - t).min(axis=1)


@pytest.mark.parametrize("cname", list(CONFORMAL))
def test_lac_sets_match_calib_on_the_test_split(cname, tmp_path):
    ts, _, pt = _probs()
    _, test = _data()
    cp = _conformal(cname)
    res = export_onnx(ts, tmp_path / "s.onnx", conformal=cp)
    assert res["outputs"] == ["probs", "label", "sets"] and res["omitted"] == {}
    out = _run(tmp_path / "s.onnx", test.logits)
    ref = cp.predict_set(pt)
    assert out["sets"].dtype == np.bool_ and out["sets"].shape == ref.shape
    # the graph's sets are exactly calib's sets of the graph's probabilities
    np.testing.assert_array_equal(out["sets"], cp.predict_set(out["probs"]))
    differ = (out["sets"] != ref).any(axis=1)
    near = _set_margin(cp, pt) < 1e-6
    assert not (differ & ~near).any(), f"{cname}: {int((differ & ~near).sum())} rows differ away from qhat"
    assert near.sum() <= 0.005 * pt.shape[0]
    if cname == "split_never_empty":
        assert out["sets"].any(axis=1).all()


@pytest.mark.parametrize("pname", list(POLICIES))
@pytest.mark.parametrize("cname", ["split", "mondrian_class"])
def test_policies_match_calib_on_the_test_split(cname, pname, tmp_path):
    ts, _, pt = _probs()
    _, test = _data()
    cp = _conformal(cname)
    pol = _policy(pname, cp)
    res = export_onnx(ts, tmp_path / "p.onnx", conformal=cp, policy=pol)
    assert res["outputs"] == ["probs", "label", "sets", "actions"], res["omitted"]
    out = _run(tmp_path / "p.onnx", test.logits)
    assert out["actions"].dtype == np.int8 and out["actions"].shape == (pt.shape[0],)
    ref_sets = cp.predict_set(pt)
    ref = pol.route(pt, sets=ref_sets).actions
    # exactly calib's routing of the graph's own probabilities and sets
    np.testing.assert_array_equal(out["actions"], pol.route(out["probs"], sets=out["sets"]).actions)
    differ = out["actions"] != ref
    near = (out["probs"] != pt).any(axis=1) & (_set_margin(cp, pt) < 1e-6)
    if pname.startswith(("threshold", "risk")):
        from calib.selective import confidence_scores

        near |= np.abs(confidence_scores(pt, pol.confidence) - pol.threshold_) < 1e-6
    assert not (differ & ~near).any(), f"{pname}: {int((differ & ~near).sum())} actions differ away from a cut-off"
    assert differ.sum() <= 0.005 * pt.shape[0]
    assert len(np.unique(ref)) >= 2  # the policy really routes (not all one action)


@pytest.mark.parametrize("pname", ["threshold", "cost", "conformal_routing"])
def test_per_item_fallback_is_a_graph_input_on_request(pname, tmp_path):
    ts, pc, pt = _probs()
    _, test = _data()
    cp = _conformal("split")
    rng = np.random.default_rng(0)
    fb_cal, fb_test = rng.integers(K, size=pc.shape[0]), rng.integers(K, size=pt.shape[0])
    make = {"threshold": lambda: P.ThresholdPolicy(threshold=0.9, fallback="extras", fallback_threshold=0.05),
            "cost": lambda: P.CostPolicy(fallback="auto"),
            "conformal_routing": lambda: P.ConformalRoutingPolicy(fallback="extras")}[pname]
    cal, _ = _data()
    pol = make().fit(pc, cal.labels, sets=cp.predict_set(pc), fallback=fb_cal)
    res = export_onnx(ts, tmp_path / "a.onnx", conformal=cp, policy=pol)
    if pol.fallback == "extras":
        assert "actions" not in res["outputs"] and "fallback_input=True" in res["omitted"]["actions"]
    else:  # auto without a per-item array at serve time: calib routes without fallback, and so does the graph
        out = _run(tmp_path / "a.onnx", test.logits)
        np.testing.assert_array_equal(out["actions"], pol.route(pt, sets=cp.predict_set(pt)).actions)
    res = export_onnx(ts, tmp_path / "b.onnx", conformal=cp, policy=pol, fallback_input=True)
    assert res["inputs"] == ["logits", "fallback"]
    out = _run(tmp_path / "b.onnx", test.logits, fallback=fb_test)
    ref = pol.route(pt, sets=cp.predict_set(pt), fallback=fb_test).actions
    assert (out["actions"] == P.FALLBACK).any() == (ref == P.FALLBACK).any()
    assert int((out["actions"] != ref).sum()) <= 0.005 * pt.shape[0]
    np.testing.assert_array_equal(out["actions"], pol.route(out["probs"], sets=out["sets"], fallback=fb_test).actions)


# --- what is not expressible ----------------------------------------------------------------------------


def test_aps_sets_are_omitted_with_a_reason_or_refused_when_strict(tmp_path):
    ts, pc, _ = _probs()
    cal, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aps = CF.SplitConformal(score="aps", alpha=0.1).fit(pc, cal.labels)
    routing = P.ConformalRoutingPolicy(empty_set="answer_top").fit(pc, cal.labels, sets=aps.predict_set(pc))
    res = export_onnx(ts, tmp_path / "a.onnx", conformal=aps, policy=routing)
    assert res["outputs"] == ["probs", "label"]
    assert "'aps'" in res["omitted"]["sets"] and "split" in res["omitted"]["sets"]
    assert "conformal_routing" in res["omitted"]["actions"]
    assert json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "a.onnx")).metadata_props}["omitted"]) \
        == res["omitted"]
    with pytest.raises(ExportError, match=r"split.*'aps'"):
        export_onnx(ts, tmp_path / "strict.onnx", conformal=aps, strict=True)
    assert not (tmp_path / "strict.onnx").exists()
    # a threshold policy does not need the sets: exported next to the omitted APS sets
    thr = P.ThresholdPolicy(threshold=0.8).fit(pc, cal.labels)
    assert export_onnx(ts, tmp_path / "t.onnx", conformal=aps, policy=thr)["outputs"] == ["probs", "label", "actions"]


def test_several_alphas_and_group_mondrian_are_omitted(tmp_path):
    ts, pc, _ = _probs()
    cal, _ = _data()
    multi = CF.SplitConformal(alpha=[0.05, 0.1]).fit(pc, cal.labels)
    assert "several alphas" in export_onnx(ts, tmp_path / "m.onnx", conformal=multi)["omitted"]["sets"]
    groups = cal.labels % 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grp = CF.MondrianConformal(condition="group", alpha=0.1).fit(pc, cal.labels, groups=groups)
    assert "groups" in export_onnx(ts, tmp_path / "g.onnx", conformal=grp)["omitted"]["sets"]


def test_netcal_calibrator_is_an_export_error_and_writes_nothing(tmp_path):
    pytest.importorskip("netcal", reason="netcal not installed")
    cal, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nc = C.NetcalCalibrator(method="HistogramBinning").fit(cal.logits, cal.labels)
    for strict in (False, True):
        with pytest.raises(ExportError, match="netcal"):
            export_onnx(nc, tmp_path / "n.onnx", strict=strict)
    assert list(tmp_path.iterdir()) == []


# --- the check, atomic writes, metadata -------------------------------------------------------------------


def test_a_failing_check_raises_and_writes_nothing(tmp_path, monkeypatch):
    ts = _fitted("temperature", ())
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous model")
    real = X._softmax

    def wrong(g, x, dtype, beta=None):  # a graph bug: the temperature off by 0.1 %
        return real(g, x, dtype, beta=None if beta is None else beta * 1.001)

    monkeypatch.setattr(X, "_softmax", wrong)
    with pytest.raises(ExportError, match="Check failed: onnxruntime probs differ from temperature"):
        export_onnx(ts, target, overwrite=True)
    assert target.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left
    monkeypatch.setattr(X, "_softmax", real)
    res = export_onnx(ts, target, overwrite=True)
    assert res["path"] == str(target) and target.read_bytes() != b"previous model"


def test_a_wrong_set_rule_fails_the_check(tmp_path, monkeypatch):
    ts, _, _ = _probs()
    cp = _conformal("split")
    real = X._lac_cutoffs
    monkeypatch.setattr(X, "_lac_cutoffs", lambda cp, k: np.float32(real(cp, k) + 0.02))  # a graph bug in the sets
    with pytest.raises(ExportError, match="sets differ from calib's"):
        export_onnx(ts, tmp_path / "s.onnx", conformal=cp)
    assert list(tmp_path.iterdir()) == []


def test_metadata_props(tmp_path):
    ts, _, _ = _probs()
    cp = _conformal("split")
    names = [f"class {i}" for i in range(K)]
    res = export_onnx(ts, tmp_path / "m.onnx", conformal=cp, class_names=names,
                      metadata={"content_id": "abc123", "note": {"a": 1}})
    model = onnx.load(str(tmp_path / "m.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["calib_version"] == calib.__version__
    assert (props["calibrator"], props["conformal"], props["policy"]) == ("temperature", "split", "")
    assert json.loads(props["class_names"]) == names
    assert props["content_id"] == "abc123" and json.loads(props["note"]) == {"a": 1}
    assert json.loads(props["outputs"]) == res["outputs"]
    assert model.producer_name == "calib"
    assert {o.domain for o in model.opset_import} == {""} and model.opset_import[0].version == res["opset"]


@pytest.mark.parametrize("opset", [13, 18])
def test_other_opsets(opset, tmp_path):
    _, test = _data()
    for spec in (("matrix_scaling", (("reg_lambda", 1e-2), ("reg_mu", 1e-2))), ("isotonic", (("multiclass", "top_label"),))):
        cal = _fitted(*spec)
        res = export_onnx(cal, tmp_path / f"{spec[0]}.onnx", opset=opset)
        assert res["opset"] == opset
        out = _run(tmp_path / f"{spec[0]}.onnx", test.logits[:500])
        assert out["probs"].shape == (500, K)


def test_check_sample_has_edge_rows():
    s = X.check_sample(K)
    assert s.dtype == np.float32 and s.shape[1] == K and np.isfinite(s).all()
    assert (s == s[:, :1]).all(axis=1).any()  # all-tie rows
    assert np.abs(s).max() >= 1e38
    np.testing.assert_array_equal(s, X.check_sample(K))  # deterministic


# --- bad arguments ---------------------------------------------------------------------------------------


def test_bad_arguments_name_themselves(tmp_path):
    ts, _, _ = _probs()
    cp = _conformal("split")
    with pytest.raises(NotFittedError, match="calibrator fitted"):
        export_onnx(C.TemperatureScaling(), tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="calibrator"):
        export_onnx("temperature", tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="calibrator"):
        export_onnx(None, tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="conformal"):
        export_onnx(ts, tmp_path / "a.onnx", conformal=ts)
    with pytest.raises(TypeError, match="policy"):
        export_onnx(ts, tmp_path / "a.onnx", policy=cp)
    with pytest.raises(NotFittedError, match="conformal fitted"):
        export_onnx(ts, tmp_path / "a.onnx", conformal=CF.SplitConformal())
    (xc, yc), _ = _binary()
    two = C.TemperatureScaling().fit(xc, yc)
    with pytest.raises(ValueError, match="conformal fitted on 2 classes"):
        export_onnx(two, tmp_path / "a.onnx", conformal=cp)
    with pytest.raises(ValueError, match="class_names as 10 strings"):
        export_onnx(ts, tmp_path / "a.onnx", class_names=["a", "b"])
    with pytest.raises(TypeError, match="class_names"):
        export_onnx(ts, tmp_path / "a.onnx", class_names="abcdefghij")
    with pytest.raises(ValueError, match="opset as an integer in"):
        export_onnx(ts, tmp_path / "a.onnx", opset=7)
    with pytest.raises(ValueError, match="atol"):
        export_onnx(ts, tmp_path / "a.onnx", atol=-1)
    with pytest.raises(TypeError, match="strict as a bool"):
        export_onnx(ts, tmp_path / "a.onnx", strict="yes")
    with pytest.raises(TypeError, match="metadata"):
        export_onnx(ts, tmp_path / "a.onnx", metadata=[("a", 1)])
    with pytest.raises(ValueError, match="sample"):
        export_onnx(ts, tmp_path / "a.onnx", sample=np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="path"):
        export_onnx(ts, 3)
    with pytest.raises(ValueError, match="existing folder"):
        export_onnx(ts, tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a.onnx").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_onnx(ts, tmp_path / "a.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == b"x"


def test_sample_rows_join_the_check(tmp_path):
    ts, _, _ = _probs()
    cal, _ = _data()
    res = export_onnx(ts, tmp_path / "m.onnx", sample=cal.logits[:300])
    assert res["check"]["rows"] == 300 + X.check_sample(K).shape[0]


def test_module_imports_numpy_only():
    import subprocess
    import sys

    code = ("import sys, calib.export_onnx\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'torch', 'scipy') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(__import__('pathlib').Path(calib.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
