"""The layout of docs/architecture.md, enforced: import layers, no cycles, light algorithm packages, old
import paths still working, and prediction that never changes a fitted component."""

from __future__ import annotations

import ast
import copy
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1] / "calib"

#: module prefix -> layer; a module may import only its own layer or the layers below it
LAYERS = {
    "calib._validation": 0, "calib._chunks": 0, "calib._json": 0, "calib._atomic": 0, "calib._moved": 0,
    "calib.base": 0,
    "calib.io": 1, "calib.datasets": 1, "calib.metrics": 1, "calib.selective": 1, "calib.stats": 1,
    "calib.calibrators": 2, "calib.conformal": 2, "calib.policy": 2, "calib.shift": 2,
    "calib.artifacts": 3, "calib.deploy": 3, "calib.runtime": 3, "calib.export_onnx": 3,
    "calib.plotting": 4,
    "calib.evaluation": 5,
    "calib.config": 6, "calib._hydra": 6, "calib.experiment": 6, "calib.cli": 6, "calib.__main__": 6,
}
ALGORITHMS = ("calib.calibrators", "calib.conformal", "calib.policy", "calib.shift")
#: the one allowed edge between algorithm packages: shift adaptation builds on the components it adapts
#: (a label-shift-weighted conformal predictor is a conformal predictor); never the reverse
ALGORITHM_EDGES = {"calib.shift": ("calib.calibrators", "calib.conformal", "calib.policy")}
#: third-party packages that only a function may import (never at module level anywhere in calib)
HEAVY = {"torch", "scipy", "netcal", "matplotlib", "hydra", "omegaconf", "sklearn", "mapie", "torchcp", "jinja2",
         "onnx", "onnxruntime", "pyarrow", "tqdm"}
#: what an algorithm package may never import, at any depth: evaluation, drawing, experiment configuration
NEVER_IN_ALGORITHMS = {"matplotlib", "hydra", "omegaconf", "calib.evaluation", "calib.plotting", "calib.config",
                       "calib._hydra", "calib.artifacts"}


def _module_name(path):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name):
    """The calib module an imported dotted name refers to (a submodule if it is one, else its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module):
    """``[(imported name, at_module_level)]`` of one module, relative imports resolved."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = set(map(id, tree.body))
    for node in tree.body:  # statements under a module-level if/try still run at import
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        level = id(node) in top
        if isinstance(node, ast.Import):
            out += [(a.name, level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for a in node.names:  # `from pkg import submodule` imports the submodule
                full = f"{base}.{a.name}"
                out.append((full if _resolve(full) == full else base, level))
    return out


def _layer(module):
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return None if best is None else LAYERS[best]


def _graph():
    graph = {}
    for module in MODULES:
        edges = {_resolve(n) for n, _ in _imports(module) if n.split(".")[0] == "calib"}
        graph[module] = {e for e in edges if e and e != module and e != "calib"}
    return graph


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m != "calib" and _layer(m) is None]
    assert not missing, f"modules with no layer in docs/architecture.md / LAYERS: {missing}"


def test_no_module_imports_a_higher_layer():
    bad = []
    for module, edges in _graph().items():
        if module == "calib":
            continue
        for target in edges:
            if _layer(target) > _layer(module):
                bad.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_even_through_function_level_imports():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_heavy_packages_are_imported_inside_functions_only():
    bad = [f"{m}: {name}" for m in MODULES for name, top in _imports(m) if top and name.split(".")[0] in HEAVY]
    assert not bad, "module-level heavy imports: " + ", ".join(bad)


def test_algorithm_packages_import_no_evaluation_plotting_or_hydra():
    bad = []
    for m in MODULES:
        if not m.startswith(ALGORITHMS):
            continue
        own = ".".join(m.split(".")[:2])
        for name, _ in _imports(m):
            target = _resolve(name) if name.startswith("calib") else name
            if any(target == f or target.startswith(f + ".") for f in NEVER_IN_ALGORITHMS):
                bad.append(f"{m} imports {target}")
            elif target.startswith(ALGORITHMS) and not target.startswith(own) \
                    and not target.startswith(ALGORITHM_EDGES.get(own, ())):
                bad.append(f"{m} imports another algorithm package: {target}")
    assert not bad, "\n".join(bad)


def test_no_backend_selection_in_library_code():
    hits = [str(p) for p in ROOT.rglob("*.py") if "matplotlib.use(" in p.read_text()]
    assert not hits, f"library code selects a matplotlib backend: {hits}"


def test_the_checker_sees_a_planted_violation(tmp_path, monkeypatch):
    # negative control: the parser must find a function-level import of evaluation from an algorithm module
    fake = ROOT / "policy" / "routing.py"
    src = fake.read_text() + "\n\ndef _planted():\n    from calib.evaluation import routing\n"
    planted = tmp_path / "routing.py"
    planted.write_text(src)
    monkeypatch.setitem(MODULES, "calib.policy.routing", planted)
    names = [_resolve(n) for n, top in _imports("calib.policy.routing") if not top]
    assert "calib.evaluation.routing" in names
    with pytest.raises(AssertionError, match="calib.policy.routing imports calib.evaluation.routing"):
        test_algorithm_packages_import_no_evaluation_plotting_or_hydra()


# --- old import paths --------------------------------------------------------------------------------------------
def test_old_import_paths_are_the_new_modules():
    from calib._moved import MOVED

    assert MOVED, "the alias table is empty"
    for old, new in MOVED.items():
        assert not (ROOT.parent / (old.replace(".", "/") + ".py")).exists(), f"{old} moved but its file remains"
        assert importlib.import_module(old) is importlib.import_module(new)
        assert sys.modules[new].__spec__.name == new  # the alias did not rename the module


def test_documented_public_api_keeps_its_paths():
    import calib
    from calib import artifacts, calibrators, conformal, metrics, policy

    assert callable(calib.load_logits)
    for name in ("save_artifact", "load_artifact", "load_pipeline"):
        assert callable(getattr(artifacts, name))
    for name in ("SplitConformal", "MondrianConformal", "ConformalRiskControl"):
        assert getattr(conformal, name).kind in conformal.REGISTRY
    for name in ("ThresholdPolicy", "RiskControlPolicy", "ConformalRoutingPolicy", "CostPolicy"):
        assert getattr(policy, name).kind in policy.REGISTRY
    assert {"expected_calibration_error", "summary", "negative_log_likelihood"} <= set(dir(metrics))
    assert "TemperatureScaling" in calibrators.__all__


def test_one_not_fitted_error_and_distinct_kinds():
    from calib import base, calibrators, conformal, policy

    assert calibrators.NotFittedError is base.NotFittedError
    for cls in (*calibrators.REGISTRY.values(), *conformal.REGISTRY.values(), *policy.REGISTRY.values()):
        assert issubclass(cls, base.Component)
        with pytest.raises(base.NotFittedError, match="is not fitted yet"):
            cls.__new__(cls).get_state()
    kinds = [*calibrators.REGISTRY, *conformal.REGISTRY, *policy.REGISTRY]
    assert len(kinds) == len(set(kinds)), f"a kind names two components: {kinds}"


# --- prediction never changes a fitted component -----------------------------------------------------------------
def _snapshot(obj):
    return {k: copy.deepcopy(v) for k, v in vars(obj).items()}


def _assert_same(before, after, what):
    assert before.keys() == after.keys(), f"{what}: attributes changed {set(before) ^ set(after)}"
    for k in before:
        a, b = before[k], after[k]
        if isinstance(a, np.ndarray):
            nan_ok = a.dtype.kind in "fc"
            assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=nan_ok), \
                f"{what}.{k} changed"
        else:
            assert repr(a) == repr(b), f"{what}.{k} changed: {a!r} -> {b!r}"


def _data(k, n=600, seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * 2.5).astype(np.float32)
    labels = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    groups = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    fallback = rng.integers(0, k, n)
    return logits, labels, groups, fallback


def _calibrator_cases():
    from calib.calibrators import REGISTRY

    kwargs = {"netcal": {"method": "HistogramBinning"}, "matrix_scaling": {"max_iter": 50},
              "dirichlet": {"max_iter": 50}, "vector_scaling": {"max_iter": 50}}
    for kind, cls in REGISTRY.items():
        k = 2 if kind in ("platt", "beta") else 4
        yield pytest.param(kind, cls, kwargs.get(kind, {}), k, id=kind)


@pytest.mark.parametrize("kind,cls,kwargs,k", list(_calibrator_cases()))
def test_predict_proba_leaves_every_calibrator_unchanged(kind, cls, kwargs, k):
    if kind == "netcal":
        pytest.importorskip("netcal")
    logits, labels, *_ = _data(k)
    cal = cls(**kwargs).fit(logits[:300], labels[:300])
    before = _snapshot(cal)
    first = cal.predict_proba(logits[300:])
    _assert_same(before, _snapshot(cal), kind)
    np.testing.assert_array_equal(cal.predict_proba(logits[300:]), first)  # and gives the same answer again


CONFORMAL_CASES = [("split", dict(score=s, randomized=s != "lac")) for s in ("lac", "aps", "raps", "saps", "topk")] + [
    ("split", dict(score="raps", tune=True)),
    ("mondrian", dict(condition="class", score="aps")),
    ("mondrian", dict(condition="group", score="lac")),
    ("conformal_risk_control", dict(score="aps")),
]


@pytest.mark.parametrize("kind,params", CONFORMAL_CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CONFORMAL_CASES)])
def test_predict_set_and_scores_leave_every_conformal_predictor_unchanged(kind, params):
    from calib.calibrators import softmax
    from calib.conformal import REGISTRY

    logits, labels, groups, _ = _data(5)
    p = softmax(logits)
    pred = REGISTRY[kind](alpha=[0.1, 0.2], **params).fit(p[:300], labels[:300], groups=groups[:300])
    before = _snapshot(pred)
    first = pred.predict_set(p[300:], groups=groups[300:])
    pred.score_matrix(p[300:])
    pred.label_scores(p[300:], labels[300:])
    _assert_same(before, _snapshot(pred), kind)
    np.testing.assert_array_equal(pred.predict_set(p[300:], groups=groups[300:]), first)


def test_route_leaves_every_policy_unchanged():
    from calib.calibrators import softmax
    from calib.conformal import SplitConformal
    from calib.policy import REGISTRY

    logits, labels, _, fallback = _data(4)
    p = softmax(logits)
    cp = SplitConformal(score="lac", alpha=0.2).fit(p[:300], labels[:300])
    sets_cal, sets_test = cp.predict_set(p[:300]), cp.predict_set(p[300:])
    params = {"threshold": dict(threshold=0.6, fallback_threshold=0.2), "risk_control": dict(target_risk=0.3),
              "conformal_routing": {}, "cost": {}}
    assert set(params) == set(REGISTRY), "a new policy needs a case here"
    for kind, cls in REGISTRY.items():
        pol = cls(fallback="extras", **params[kind]).fit(p[:300], labels[:300], sets=sets_cal, fallback=fallback[:300])
        before = _snapshot(pol)
        first = pol.route(p[300:], sets=sets_test, fallback=fallback[300:])
        pol.guarantee()
        _assert_same(before, _snapshot(pol), kind)
        np.testing.assert_array_equal(pol.route(p[300:], sets=sets_test, fallback=fallback[300:]).actions,
                                      first.actions)


def test_snapshot_check_catches_a_mutating_predict():
    # negative control for the three tests above
    from calib.calibrators import TemperatureScaling

    logits, labels, *_ = _data(3)
    ts = TemperatureScaling().fit(logits, labels)
    before = _snapshot(ts)
    ts.last_batch_ = 7
    with pytest.raises(AssertionError, match="attributes changed"):
        _assert_same(before, _snapshot(ts), "ts")


# --- scores as objects ---------------------------------------------------------------------------------------------
def test_a_new_score_is_one_class():
    from calib.conformal import SplitConformal
    from calib.conformal.scores import Score

    class Margin(Score):
        """Gap between the top probability and the label's: 0 for the top class."""

        name = "margin_gap"

        def _block(self, block, u):
            return block.max(axis=1, keepdims=True).astype(np.float64) - block

    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(6) * 0.5, size=800)
    y = np.array([rng.choice(6, p=row) for row in p])
    cp = SplitConformal(score=Margin(), alpha=0.1).fit(p[:400], y[:400])
    s = p.max(axis=1, keepdims=True) - p  # independent reference of the same score
    q = np.sort(s[np.arange(400), y[:400]])[int(np.ceil(401 * 0.9)) - 1]
    assert cp.qhat_ == q
    np.testing.assert_array_equal(cp.predict_set(p[400:]), s[400:] <= q)
    with pytest.raises(ValueError, match="randomized=False for score 'margin_gap'"):
        SplitConformal(score=Margin(), randomized=True)


# --- bad input at the new entry points ---------------------------------------------------------------------------
def test_clone_copies_arguments_and_rejects_unknown_ones():
    from calib.conformal import SplitConformal

    cp = SplitConformal(score="raps", alpha=0.2, k_reg=3)
    twin = cp.clone(alpha=[0.1, 0.3])
    assert (twin.score, twin.k_reg, twin.alpha) == ("raps", 3, (0.1, 0.3)) and not twin.is_fitted
    with pytest.raises(TypeError, match=r"constructor arguments of SplitConformal, got unknown \['alpah'\]"):
        cp.clone(alpah=0.1)


@pytest.mark.parametrize("args, err, match", [
    (("foo",), ValueError, r"score as one of \['aps', 'lac', 'raps', 'saps', 'topk'\] or a callable, got 'foo'"),
    ((3,), TypeError, r"score as one of .* or a callable, got int 3"),
    (("raps",), None, None),
])
def test_make_score_names_what_it_expected(args, err, match):
    from calib.conformal.scores import RAPS, make_score

    if err is None:
        assert make_score(*args, k_reg=2, lam=0.5) == RAPS(k_reg=2, lam=0.5)
        return
    with pytest.raises(err, match=match):
        make_score(*args)


@pytest.mark.parametrize("cls, kwargs, match", [
    ("RAPS", dict(k_reg=-1), r"k_reg as an integer >= 0, got -1"),
    ("RAPS", dict(lam=float("nan")), r"lam as a finite number >= 0, got nan"),
    ("SAPS", dict(weight=0.0), r"weight > 0 for score 'saps', got 0.0"),
    ("CallableScore", dict(fn="lac"), r"Expected a callable score, got 'lac'"),
])
def test_score_objects_validate_their_parameters(cls, kwargs, match):
    from calib.conformal import scores

    with pytest.raises((ValueError, TypeError), match=match):
        getattr(scores, cls)(**kwargs)


def test_a_callable_returning_the_wrong_shape_is_refused():
    from calib.conformal import SplitConformal

    p = np.full((30, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"score callable to return shape \(30, 3\), got \(30,\)"):
        SplitConformal(score=lambda q: q[:, 0]).fit(p, np.arange(30) % 3)
