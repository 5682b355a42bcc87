"""Tampered state: for every registered component kind, an artifact edited the way an attacker (or a
careless script) would edit it — sign, NaN, shape, range, missing or extra fields, kind swap — with every
checksum recomputed, is refused at load with an ArtifactError naming the component and the field."""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np
import pytest

from calib import artifacts
from calib.artifacts import ArtifactError, load_pipeline, save_artifact

from test_architecture import CONFORMAL_CASES, _calibrator_cases, _data  # noqa: E402  (one set of cases)


def _fit_cases():
    """(id, component, kind, factory) where factory() -> (calibrator, {component: fitted})."""
    from calib.calibrators import IdentityCalibrator, softmax
    from calib.conformal import REGISTRY as CONFORMAL, SplitConformal
    from calib.policy import REGISTRY as POLICY

    cases = []
    for p in _calibrator_cases():
        kind, cls, kwargs, k = p.values
        if kind == "netcal":
            continue  # refuses to be saved at all (tested in test_artifacts)

        def make(cls=cls, kwargs=kwargs, k=k):
            logits, labels, *_ = _data(k)
            return cls(**kwargs).fit(logits[:300], labels[:300]), {}
        cases.append((kind, "calibrator", kind, make))

    def ident(k):
        logits, labels, *_ = _data(k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return IdentityCalibrator().fit(logits[:300], labels[:300])

    for i, (kind, params) in enumerate(CONFORMAL_CASES):
        def make(kind=kind, params=params):
            logits, labels, groups, _ = _data(5)
            p = softmax(logits)
            return ident(5), {"conformal": CONFORMAL[kind](alpha=[0.1, 0.2], **params).fit(
                p[:300], labels[:300], groups=groups[:300])}
        cases.append((f"{kind}-{params.get('score')}-{i}", "conformal", kind, make))

    policy_params = {"threshold": dict(threshold=0.6, fallback_threshold=0.2), "risk_control": dict(target_risk=0.3),
                     "conformal_routing": {}, "cost": {}}
    for kind in POLICY:
        def make(kind=kind):
            logits, labels, _, fallback = _data(4)
            p = softmax(logits)
            cp = SplitConformal(score="lac", alpha=0.2).fit(p[:300], labels[:300])
            pol = POLICY[kind](fallback="extras", **policy_params[kind]).fit(
                p[:300], labels[:300], sets=cp.predict_set(p[:300]), fallback=fallback[:300])
            return ident(4), {"policy": pol}
        cases.append((kind, "policy", kind, make))
    return cases


CASES = _fit_cases()
_SAVED, _FITTED = {}, {}


def _fitted(case_id):
    if case_id not in _FITTED:
        _FITTED[case_id] = next(c for c in CASES if c[0] == case_id)[3]()
    return _FITTED[case_id]


def _saved(tmp_path_factory, case_id):
    """One pristine artifact per case (saved once), copied for each edit."""
    if case_id not in _SAVED:
        cal, others = _fitted(case_id)
        path = tmp_path_factory.mktemp("pristine") / case_id
        save_artifact(cal, path, **others)
        assert load_pipeline(path)  # the unedited artifact loads
        _SAVED[case_id] = path
    return _SAVED[case_id]


def _edited(src, dst, component, edit):
    """Copy ``src`` to ``dst`` applying ``edit(entry, arrays)`` to one component; recompute the member
    specs and every checksum, as anyone who edits an artifact can."""
    import shutil

    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    with np.load(dst / "arrays.npz", allow_pickle=False) as npz:
        flat = {key: npz[key] for key in npz.files}
    entry = m["components"][component]
    arrays = {k[len(component) + 1:]: v for k, v in flat.items() if k.startswith(component + ".")}
    edit(entry, arrays)
    flat = {k: v for k, v in flat.items() if not k.startswith(component + ".")}
    flat.update({f"{component}.{k}": np.asarray(v) for k, v in arrays.items()})
    entry["arrays"] = {k: {"dtype": np.asarray(v).dtype.str, "shape": list(np.shape(v))} for k, v in arrays.items()}
    with zipfile.ZipFile(dst / "arrays.npz", "w") as zf:
        for key, a in flat.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            zf.writestr(f"{key}.npy", buf.getvalue())
    m["files"] = {name: artifacts._sha256_file(dst / name) for name in m["files"]}
    m["manifest_sha256"] = artifacts._manifest_digest(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _state_fields(case_id):
    component = next(c for c in CASES if c[0] == case_id)[1]
    cal, others = _fitted(case_id)
    obj = others.get(component, cal)
    state, arrays = obj.get_state()
    return component, sorted(k for k in state if k != "n_classes"), {k: np.asarray(v) for k, v in arrays.items()}


def _generic_edits():
    """Edits no fit can produce, derived from each kind's own state: every field and array."""
    out = []
    for case_id, component, kind, _ in CASES:
        comp, fields, arrays = _state_fields(case_id)
        for f in fields:
            out.append((case_id, comp, f"{f}=null", lambda e, a, f=f: e["state"].update({f: None})))
            out.append((case_id, comp, f"{f}=str", lambda e, a, f=f: e["state"].update({f: "1"})))
            out.append((case_id, comp, f"{f}-missing", lambda e, a, f=f: e["state"].pop(f)))
        for name, v in arrays.items():
            out.append((case_id, comp, f"{name}-missing", lambda e, a, n=name: a.pop(n)))
            out.append((case_id, comp, f"{name}-ndim", lambda e, a, n=name: a.update({n: a[n][None]})))
            if v.size:
                out.append((case_id, comp, f"{name}-longer",
                            lambda e, a, n=name: a.update({n: np.concatenate([a[n], a[n][:1]], axis=0)})))
                if v.dtype.kind == "f":
                    out.append((case_id, comp, f"{name}-nan",
                                lambda e, a, n=name: a.update({n: np.where(np.arange(a[n].size).reshape(a[n].shape) == 0,
                                                                         np.nan, a[n])})))
                if v.dtype.kind in "iu":
                    out.append((case_id, comp, f"{name}-negative",
                                lambda e, a, n=name: a.update({n: np.where(np.arange(a[n].size).reshape(a[n].shape) == 0,
                                                                         -1, a[n])})))
            if v.dtype.kind == "f":
                out.append((case_id, comp, f"{name}-as-str", lambda e, a, n=name: a.update({n: a[n].astype(str)})))
        out.append((case_id, comp, "extra-field", lambda e, a: e["state"].update(bogus=1.0)))
        out.append((case_id, comp, "extra-array", lambda e, a: a.update(bogus=np.zeros(3))))
        out.append((case_id, comp, "n_classes+1", lambda e, a: e["state"].update(n_classes=e["state"]["n_classes"] + 1)))
    return out


#: Kinds whose parameters and state have the same form, so a relabelled state IS a valid state of the other
#: kind (one anyone could write for it): validation cannot tell them apart, only a signature could. Diagonal
#: vector-scaling weights are a valid matrix-scaling (same function) or Dirichlet matrix; matrix-scaling
#: (W, b) a valid Dirichlet (W, b); the two threshold-free policies store nothing but n_classes and the
#: majority class (a cost policy relabelled conformal_routing loads with the empty_set default of old artifacts;
#: the other way, cost refuses conformal_routing's empty_set parameter). Tested below: such a swap loads as a
#: valid object of the new kind, nothing else does.
STATE_COMPATIBLE = {("vector_scaling", "matrix_scaling"), ("vector_scaling", "dirichlet"),
                    ("matrix_scaling", "dirichlet"), ("cost", "conformal_routing")}


def _kind_swaps(compatible=False):
    from calib import calibrators, conformal, policy

    registries = {"calibrator": calibrators.REGISTRY, "conformal": conformal.REGISTRY, "policy": policy.REGISTRY}
    out = []
    for case_id, component, kind, _ in CASES:
        for other in registries[component]:
            if other != kind and other != "netcal" and ((kind, other) in STATE_COMPATIBLE) == compatible:
                out.append((case_id, component, f"as-{other}", lambda e, a, o=other: e.update(kind=o)))
    return out


def _set(array, value, index=0):
    def edit(e, a):
        x = np.array(a[array], dtype=np.float64)
        x.flat[index] = value
        a[array] = x
    return edit


def _flip(array):
    return lambda e, a: a.update({array: -np.asarray(a[array])})


#: Range and sign edits that only make sense per kind: (case id prefix, edit name, edit).
RANGE_EDITS = [
    ("temperature", "T<0", lambda e, a: e["state"].update(temperature=-0.5)),
    ("temperature", "T=0", lambda e, a: e["state"].update(temperature=0.0)),
    ("temperature", "T=huge", lambda e, a: e["state"].update(temperature=1e308)),
    ("ensemble_temperature", "T<0", lambda e, a: e["state"].update(temperature=-1.0)),
    ("ensemble_temperature", "weights-sign", _flip("weights")),
    ("ensemble_temperature", "weight<0", lambda e, a: a.update(weights=np.array([-0.5, 1.0, 0.5]))),
    ("ensemble_temperature", "weights-sum", lambda e, a: a.update(weights=np.array([0.5, 0.5, 0.5]))),
    ("isotonic", "y>1", _set("knots_y", 1.5, -1)),
    ("isotonic", "y<0", _set("knots_y", -0.5, 0)),
    ("isotonic", "x-unsorted", lambda e, a: a.update(knots_x=a["knots_x"][:, ::-1].copy())),
    ("isotonic", "counts>len", lambda e, a: a.update(knot_counts=np.full_like(a["knot_counts"], 10**6))),
    ("histogram_binning", "freq>1", _set("bin_frequencies", 1.5)),
    ("histogram_binning", "freq<0", _set("bin_frequencies", -0.1)),
    ("histogram_binning", "edges-unsorted", lambda e, a: a.update(bin_edges=a["bin_edges"][:, ::-1].copy())),
    ("split-lac", "n_calibration=0", lambda e, a: e["state"].update(n_calibration=0)),
    ("split-raps", "k_reg<0", lambda e, a: e["state"].update(k_reg=-1)),
    ("split-raps", "lam<0", lambda e, a: e["state"].update(lam=-0.5)),
    ("split-lac", "threshold-nan", _set("thresholds", np.nan)),
    ("mondrian-aps", "sizes-sum", lambda e, a: a.update(stratum_sizes=a["stratum_sizes"] * 2)),
    ("threshold", "threshold>1", _set("threshold", 1.5)),
    ("threshold", "threshold<0", _set("threshold", -1.0)),
    ("risk_control", "threshold<0-certified", _set("threshold", -1.0)),
    ("risk_control", "threshold>1", _set("threshold", 2.0)),
    ("risk_control", "certified-str", lambda e, a: e["state"]["guarantee"].update(certified="yes")),
    ("risk_control", "bound>1", lambda e, a: e["state"]["guarantee"].update(risk_upper_bound=1.5)),
    ("risk_control", "majority-out-of-range", lambda e, a: e["state"].update(majority_class=99)),
    ("threshold", "majority<0", lambda e, a: e["state"].update(majority_class=-1)),
]


def _range_edits():
    out = []
    for prefix, name, edit in RANGE_EDITS:
        matches = [c for c in CASES if c[0] == prefix or c[0].startswith(prefix + "-")]
        assert matches, f"no case for {prefix}"
        for case_id, component, _, _ in matches:
            out.append((case_id, component, name, edit))
    return out


EDITS = _generic_edits() + _kind_swaps() + _range_edits()


@pytest.mark.parametrize("case_id,component,name,edit", EDITS, ids=[f"{c}:{n}" for c, _, n, _ in EDITS])
def test_tampered_state_is_refused_at_load(tmp_path, tmp_path_factory, case_id, component, name, edit):
    src = _saved(tmp_path_factory, case_id)
    path = _edited(src, tmp_path / "edited", component, edit)
    artifacts.read_manifest(path)  # the checksums are valid: only validation can catch the edit
    with pytest.raises(ArtifactError, match=rf"{component}|n_classes"):
        load_pipeline(path)


@pytest.mark.parametrize("case_id,component,name,edit", _kind_swaps(compatible=True),
                         ids=[f"{c}:{n}" for c, _, n, _ in _kind_swaps(compatible=True)])
def test_state_compatible_kind_swaps_load_as_valid_objects_of_the_new_kind(tmp_path, tmp_path_factory, case_id,
                                                                           component, name, edit):
    from calib.calibrators import softmax

    src = _saved(tmp_path_factory, case_id)
    path = _edited(src, tmp_path / "edited", component, edit)
    obj = load_pipeline(path)[component]
    assert obj.kind == name[len("as-"):]
    logits, labels, _, fallback = _data(obj.n_classes_)
    if component == "calibrator":
        p = obj.predict_proba(logits)
    else:
        p = softmax(logits)
        p = obj.route(p, sets=p > 0.2, fallback=fallback).actions
    assert np.isfinite(p).all()


def test_the_suite_covers_every_kind_and_is_large():
    from calib import calibrators, conformal, policy

    kinds = {(c[1], c[2]) for c in CASES}
    for comp, reg in (("calibrator", calibrators.REGISTRY), ("conformal", conformal.REGISTRY),
                      ("policy", policy.REGISTRY)):
        assert {(comp, k) for k in reg if k != "netcal"} <= kinds
    assert len(EDITS) >= 300
