"""ONNX export of a fitted calib pipeline (calibrator, optional conformal predictor, optional routing policy).

``export_onnx(calibrator, path, conformal=..., policy=...)`` writes one ONNX graph (built node by node with
``onnx.helper``; no torch export) that maps ``logits`` float32 [N, k] to

- ``probs`` float32 [N, k]: ``calibrator.predict_proba(logits)``, op for op in the precision calib computes it
  (float32 softmax, float64 interpolation of isotonic / histogram tables, float64 fallback rows of the linear
  calibrators), so that onnxruntime and calib agree to ~1e-7;
- ``label`` int64 [N]: the arg-max of ``probs`` (ties: the lowest index, as ``numpy.argmax``);
- ``sets`` bool [N, k] when the conformal predictor is expressible: LAC (``split``, ``conformal_risk_control``
  or class-conditional ``mondrian``) with one alpha: ``p_j >= v`` with ``v`` the float32 cut-off of
  :func:`calib.conformal.scores.lac_prob_threshold`, exactly calib's comparison, and ``never_empty`` adding the
  top class to empty sets;
- ``actions`` int8 [N] (0 answer, 1 escalate, 2 fallback: :data:`calib.policy.ANSWER` ...) when the policy is
  expressible: ``threshold`` / ``risk_control`` on any confidence of :data:`calib.selective.CONFIDENCES`,
  ``conformal_routing`` on the exported sets, ``cost``; fallback modes that are constants (``none``,
  ``majority``, a class index) and ``auto`` (no per-item fallback at serve time: no fallback). A per-item
  fallback (``auto`` with data, ``extras``) becomes a second graph input ``fallback`` int64 [N] with
  ``fallback_input=True``.

Not expressible: netcal-backed calibrators (an :class:`ExportError`, nothing written); randomised or rank scores
(APS, RAPS, SAPS, top-k: per-row uniforms and sorts), several alphas, group-conditional Mondrian (a
``groups`` input); a policy routing on sets that are not exported. With ``strict=True`` these raise
:class:`ExportError` naming the component and why; otherwise the result lists them under ``omitted``.

``check=True`` runs the serialised model with onnxruntime on a deterministic sample (and ``sample`` rows
if given) before anything is written, and compares with calib's numpy path; a failed check raises
:class:`ExportError` and writes nothing. The file is published atomically (temporary sibling + rename).

The graph does not validate its input: NaN or infinite logits, which calib refuses, give NaN or arbitrary
outputs. The isotonic lookup compares each value with every knot of its class (memory O(N k L) for L knots).
``onnx`` and ``onnxruntime`` are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

import numpy as np

__all__ = ["DECISION_MARGIN", "DEFAULT_OPSET", "MIN_OPSET", "SOFTMAX_ATOL", "SOFTMAX_RTOL", "ExportError",
           "check_sample", "export_onnx"]

#: opset written by default (onnxruntime >= 1.12 runs it); ``opset=`` may choose any from MIN_OPSET to onnx's latest
DEFAULT_OPSET = 17
#: ReduceSum with axes as an input, GreaterOrEqual, ArgMax without select_last_index ambiguity
MIN_OPSET = 13
#: rows whose decision margin (|1 - p_j - qhat|, |confidence - threshold|, cost gaps, top-2 gap) is below this are
#: not compared end to end: a difference of probabilities within atol may flip them legitimately
DECISION_MARGIN = 1e-6
#: the graph's float32 softmax may differ from numpy's by a few ulps (their exp and summation orders differ; measured
#: at most 4 ulps): the check requires ``|p_onnx - p_numpy| <= SOFTMAX_RTOL p_numpy + SOFTMAX_ATOL`` (8 ulps; the
#: absolute part covers subnormal probabilities). Histogram binning and isotonic maps have steps or steep pieces, where
#: those ulps move the output by more than atol: such rows are explained (the graph's map of its own softmax is
#: calib's map of it) and counted, not failed
SOFTMAX_RTOL = 1e-6
SOFTMAX_ATOL = 1e-37

ANSWER, ESCALATE, FALLBACK = 0, 1, 2  # calib.policy.routing's action codes (checked at export)


class ExportError(ValueError):
    """A component that the ONNX graph cannot express (named, with the reason), or a failed check."""


# --------------------------------------------------------------------------------------------------------------
# graph builder


class _Graph:
    """Nodes and initialisers of one graph, with unique names and opset-dependent reductions."""

    def __init__(self, onnx, opset):
        self.onnx = onnx
        self.helper = onnx.helper
        self.numpy_helper = onnx.numpy_helper
        self.opset = opset
        self.nodes, self.inits = [], []
        self._n = 0
        self.softmax = None  # the uncalibrated softmax feeding a step / piecewise-linear map (checked on its own)

    def name(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, value, dtype, base="const"):
        arr = np.asarray(value, dtype=dtype)
        nm = self.name(base)
        self.inits.append(self.numpy_helper.from_array(arr, nm))
        return nm

    def f32(self, value, base="f32"):
        return self.const(value, np.float32, base)

    def f64(self, value, base="f64"):
        return self.const(value, np.float64, base)

    def i64(self, value, base="i64"):
        return self.const(value, np.int64, base)

    def op(self, op_type, *inputs, out=None, **attrs):
        nm = out or self.name(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [nm], name=self.name("n_" + op_type), **attrs))
        return nm

    def reduce(self, op_type, x, axis, keepdims):
        if op_type == "ReduceSum" or self.opset >= 18:  # axes became an input (ReduceSum: opset 13)
            return self.op(op_type, x, self.i64([axis]), keepdims=int(keepdims))
        return self.op(op_type, x, axes=[axis], keepdims=int(keepdims))

    def cast(self, x, to):
        return self.op("Cast", x, to=to)

    def column(self, x, j):
        """Column ``j`` of a 2-D tensor, as [N]."""
        return self.op("Gather", x, self.i64(j), axis=1)


def _T(onnx, name):
    return getattr(onnx.TensorProto, name)


def _softmax(g, x, dtype, beta=None):
    """calib.calibrators.base.softmax op for op: ``exp((x - max) * beta) / sum``, in ``dtype``'s precision."""
    m = g.reduce("ReduceMax", x, 1, True)
    d = g.op("Sub", x, m)
    if beta is not None and beta != 1.0:
        d = g.op("Mul", d, g.const(beta, dtype))
    e = g.op("Exp", d)
    return g.op("Div", e, g.reduce("ReduceSum", e, 1, True))


# --------------------------------------------------------------------------------------------------------------
# calibrators


def _calibrator_graph(g, cal, x):
    """Output name of the calibrated probabilities (float32 [N, k]) of logits ``x``, or ExportError."""
    from calib import calibrators as C

    onnx = g.onnx
    F32, F64 = _T(onnx, "FLOAT"), _T(onnx, "DOUBLE")
    kind = cal.kind
    if C.REGISTRY.get(kind) is not type(cal):
        raise ExportError(f"Expected calibrator as an instance of a calib.calibrators.REGISTRY class (exactly), got "
                          f"{type(cal).__name__} (kind {kind!r}); its predict_proba may differ from the registered "
                          "one, so it is not expressible.")
    k = cal.n_classes_
    if isinstance(cal, C.NetcalCalibrator):
        raise ExportError(f"Calibrator {kind!r} (netcal method {getattr(cal, 'method', '?')!r}) is not expressible "
                          "in ONNX: its fitted maps live in netcal objects that calib does not re-implement.")
    if isinstance(cal, C.IdentityCalibrator):
        return _softmax(g, x, np.float32)
    if isinstance(cal, C.TemperatureScaling):
        return _softmax(g, x, np.float32, beta=1.0 / cal.temperature_)
    if isinstance(cal, C.EnsembleTemperatureScaling):
        w = cal.weights_.astype(np.float32)
        a = g.op("Mul", _softmax(g, x, np.float32, beta=1.0 / cal.temperature_), g.f32(w[0]))
        b = g.op("Mul", g.f32(w[1]), _softmax(g, x, np.float32))
        return g.op("Add", g.op("Add", a, b), g.f32(np.float32(w[2]) / k))
    from calib.calibrators._linear import LinearCalibrator

    if isinstance(cal, LinearCalibrator):
        return _linear_graph(g, cal, x, F64)
    if isinstance(cal, C.HistogramBinning):
        p = g.softmax = _softmax(g, x, np.float32)
        edges = np.asarray(cal.bin_edges_, dtype=np.float64)
        freq = np.asarray(cal.bin_frequencies_, dtype=np.float64)
        if cal.multiclass == "ovr":
            q = g.cast(_bin_lookup(g, g.cast(p, F64), edges, freq, k), F32)
            return _renormalise(g, q, k)
        conf = g.op("Unsqueeze", g.cast(g.reduce("ReduceMax", p, 1, False), F64), g.i64([1]))
        new = _bin_lookup(g, conf, edges, freq, 1)
        return _top_label_apply(g, p, new, k)
    if isinstance(cal, C.IsotonicCalibration):
        p = g.softmax = _softmax(g, x, np.float32)
        tables = _interp_tables(cal.knots_x_, cal.knots_y_, cal.knot_counts_, kind)
        if cal.multiclass == "ovr":
            q = g.cast(_interp(g, g.cast(p, F64), tables), F32)
            return _renormalise(g, q, k)
        conf = g.op("Unsqueeze", g.cast(g.reduce("ReduceMax", p, 1, False), F64), g.i64([1]))
        return _top_label_apply(g, p, _interp(g, conf, tables), k)
    if isinstance(cal, C.PlattScaling):
        x64 = g.cast(x, F64)
        s = g.op("Sub", g.column(x64, 1), g.column(x64, 0))
        eta = g.op("Add", g.op("Mul", g.f64(cal.slope_), s), g.f64(cal.intercept_))
        return _two_column(g, eta)
    if isinstance(cal, C.BetaCalibration):
        z = g.cast(x, F64)
        d = g.op("Sub", z, g.reduce("ReduceMax", z, 1, True))
        lp = g.op("Sub", d, g.op("Log", g.reduce("ReduceSum", g.op("Exp", d), 1, True)))
        eta = g.op("Sub", g.op("Mul", g.f64(cal.a_), g.column(lp, 1)), g.op("Mul", g.f64(cal.b_), g.column(lp, 0)))
        return _two_column(g, g.op("Add", eta, g.f64(cal.c_)))
    raise ExportError(f"Calibrator {kind!r} ({type(cal).__name__}) has no ONNX translation in calib.export_onnx.")


def _two_column(g, eta):
    """``[1 - p1, p1]`` with ``p1 = 0.5 (1 + tanh(eta / 2))`` in float64, then float32 (calib's binary maps)."""
    p1 = g.op("Mul", g.f64(0.5), g.op("Add", g.f64(1.0), g.op("Tanh", g.op("Mul", g.f64(0.5), eta))))
    p0 = g.op("Sub", g.f64(1.0), p1)
    one = g.i64([1])
    cols = g.op("Concat", g.op("Unsqueeze", p0, one), g.op("Unsqueeze", p1, one), axis=1)
    return g.cast(cols, _T(g.onnx, "FLOAT"))


def _linear_graph(g, cal, x, F64):
    """``softmax(f(x) W^T + b)`` in float32, rows whose float32 scores overflow recomputed in float64
    (calib.calibrators._linear._linear_softmax)."""
    F32 = _T(g.onnx, "FLOAT")
    W = np.asarray(cal.weights_, dtype=np.float64)
    b = np.asarray(cal.bias_, dtype=np.float64)
    if cal.kind == "dirichlet":  # log_softmax in float32, floored at log(float64 eps) (cast to float32, as numpy)
        d = g.op("Sub", x, g.reduce("ReduceMax", x, 1, True))
        d = g.op("Sub", d, g.op("Log", g.reduce("ReduceSum", g.op("Exp", d), 1, True)))
        feats = g.op("Max", d, g.f32(math.log(np.finfo(np.float64).eps)))
    else:
        feats = x
    diagonal = cal._structure == "diagonal"
    if diagonal:  # a product with a diagonal matrix: each score is one product (plus exact zeros)
        z32 = g.op("Mul", feats, g.f32(np.diag(W)[None, :]))
    else:
        z32 = g.op("MatMul", feats, g.f32(W.T))
    z32 = g.op("Add", z32, g.f32(b[None, :]))
    f64 = g.cast(feats, F64)
    z64 = g.op("Mul", f64, g.f64(np.diag(W)[None, :])) if diagonal else g.op("MatMul", f64, g.f64(W.T))
    z64 = g.op("Add", z64, g.f64(b[None, :]))
    finite = g.cast(g.op("Equal", g.op("Sub", z32, z32), g.f32(0.0)), F32)  # x - x is 0 exactly when x is finite
    ok = g.cast(g.reduce("ReduceMin", finite, 1, True), _T(g.onnx, "BOOL"))
    p32 = _softmax(g, z32, np.float32)
    p64 = g.cast(_softmax(g, z64, np.float64), F32)
    return g.op("Where", ok, p32, p64)


def _renormalise(g, q, k):
    """calib.calibrators.isotonic.renormalise: float64 row sums of float32 ``q``, all-zero rows uniform, then
    ``q * float32(1 / sum)``."""
    F32, F64 = _T(g.onnx, "FLOAT"), _T(g.onnx, "DOUBLE")
    sums = g.reduce("ReduceSum", g.cast(q, F64), 1, True)
    zero = g.op("LessOrEqual", sums, g.f64(0.0))
    q = g.op("Where", zero, g.f32(1.0), q)
    sums = g.op("Where", zero, g.f64(float(k)), sums)
    inv = g.cast(g.op("Div", g.f64(1.0), sums), F32)
    return g.op("Mul", q, inv)


def _bin_lookup(g, v64, edges, freq, m):
    """``freq[c, searchsorted(edges[c], v, side="right")]`` for float64 values ``v64`` [N, m] (m maps)."""
    n_bins = freq.shape[1]
    v3 = g.op("Unsqueeze", v64, g.i64([2]))  # [N, m, 1]
    le = g.op("LessOrEqual", g.f64(edges[None, :, :]), v3)  # [N, m, B - 1]
    idx = g.reduce("ReduceSum", g.cast(le, _T(g.onnx, "INT64")), 2, False)
    flat = g.op("Add", idx, g.i64((np.arange(m) * n_bins)[None, :]))
    return g.op("Gather", g.f64(freq.ravel()), flat, axis=0)


def _interp_tables(knots_x, knots_y, counts, kind):
    """Per map: knots padded with +inf (never <= a value), first knot, and per-segment (x0, y0, slope) with
    ``slope = (y1 - y0) / (x1 - x0)`` as ``np.interp`` computes it; the last knot's segment has slope 0."""
    kx = np.asarray(knots_x, dtype=np.float64)
    ky = np.asarray(knots_y, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    m, L = kx.shape
    valid = np.arange(L)[None, :] < counts[:, None]
    for c in range(m):
        xs = kx[c, :counts[c]]
        if xs.size > 1 and not (np.diff(xs) > 0).all():
            raise ExportError(f"Calibrator {kind!r}: the knots of map {c} are not strictly increasing (repeated x); "
                              "np.interp's choice among equal knots is not reproduced by the ONNX lookup.")
    pad_x = np.where(valid, kx, np.inf)
    y0 = np.where(valid, ky, 0.0)
    slope = np.zeros((m, L))
    for c in range(m):
        n = counts[c]
        if n > 1:
            slope[c, :n - 1] = (ky[c, 1:n] - ky[c, :n - 1]) / (kx[c, 1:n] - kx[c, :n - 1])
    x0 = np.where(valid, kx, 0.0)
    return {"pad_x": pad_x, "first_x": kx[:, 0], "x0": x0, "y0": y0, "slope": slope, "L": L, "m": m}


def _interp(g, v64, t):
    """``np.interp(v[:, c], knots_x[c], knots_y[c])`` for float64 values [N, m]: values below the first knot are
    raised to it (the result is then the first y exactly), j = #(knots <= v) - 1, ``slope_j (v - x_j) + y_j``."""
    L, m = t["L"], t["m"]
    v = g.op("Max", v64, g.f64(t["first_x"][None, :]))
    le = g.op("LessOrEqual", g.f64(t["pad_x"][None, :, :]), g.op("Unsqueeze", v, g.i64([2])))  # [N, m, L]
    j = g.op("Sub", g.reduce("ReduceSum", g.cast(le, _T(g.onnx, "INT64")), 2, False), g.i64(1))
    flat = g.op("Add", j, g.i64((np.arange(m) * L)[None, :]))
    x0 = g.op("Gather", g.f64(t["x0"].ravel()), flat, axis=0)
    y0 = g.op("Gather", g.f64(t["y0"].ravel()), flat, axis=0)
    s = g.op("Gather", g.f64(t["slope"].ravel()), flat, axis=0)
    return g.op("Add", g.op("Mul", s, g.op("Sub", v, x0)), y0)


def _top_label_apply(g, p, new, k):
    """calib.calibrators.isotonic.top_label_apply in float64: top class -> max(new, floor) capped at 1, the
    others rescaled to share the rest (uniformly when they had no mass), then float32."""
    F32, F64 = _T(g.onnx, "FLOAT"), _T(g.onnx, "DOUBLE")
    p64 = g.cast(p, F64)
    top = g.op("ArgMax", p64, axis=1, keepdims=1)
    mask = g.op("Equal", g.i64(np.arange(k)[None, :]), top)
    others = g.op("Where", mask, g.f64(0.0), p64)
    second = g.reduce("ReduceMax", others, 1, True)
    rest = g.reduce("ReduceSum", others, 1, True)
    has_rest = g.op("Greater", rest, g.f64(0.0))
    floor = g.op("Where", has_rest, g.op("Div", second, g.op("Add", rest, second)), g.f64(0.0))
    t = g.op("Min", g.op("Max", new, floor), g.f64(1.0))  # new, floor: [N, 1]
    one_minus = g.op("Sub", g.f64(1.0), t)
    scale = g.op("Where", has_rest, g.op("Div", one_minus, rest), g.f64(0.0))
    body = g.op("Where", has_rest, g.op("Mul", p64, scale), g.op("Div", one_minus, g.f64(float(k - 1))))
    return g.cast(g.op("Where", mask, t, body), F32)


# --------------------------------------------------------------------------------------------------------------
# conformal sets


def _conformal_reason(cp, k):
    """None when ``cp`` is expressible, else why not."""
    from calib import conformal as CF
    from calib.conformal import scores as S

    if CF.REGISTRY.get(cp.kind) is not type(cp):
        return f"{type(cp).__name__} is not exactly a calib.conformal.REGISTRY class"
    if not isinstance(cp.scorer, S.LAC):
        return (f"score {cp.score_name!r} is not expressible (only 'lac' is: the rank scores sort each row and the "
                "randomised ones draw a uniform per row)")
    if cp.is_randomized:
        return "randomised sets draw a uniform per row, which the graph cannot reproduce"
    if isinstance(cp.alpha, tuple):
        return f"several alphas {list(cp.alpha)} (export one alpha per graph)"
    if cp.kind == "mondrian" and cp.condition != "class":
        return "group-conditional Mondrian needs a groups input (not exported)"
    if cp.kind not in ("split", "conformal_risk_control", "mondrian"):
        return f"conformal kind {cp.kind!r} has no ONNX translation"
    return None


def _lac_cutoffs(cp, k):
    """float32 cut-offs v (scalar, or per class for Mondrian) with ``p >= v`` iff ``1 - p <= qhat`` (inf: never)."""
    from calib.conformal.scores import lac_prob_threshold

    t = np.asarray(cp.thresholds_, dtype=np.float64)
    if cp.kind == "mondrian":
        v = np.array([lac_prob_threshold(float(q), np.float32) for q in t[:, 0]], dtype=np.float64)
        return v.astype(np.float32)[None, :]
    return np.float32(lac_prob_threshold(float(t[0]), np.float32))


def _sets_graph(g, cp, probs, k):
    sets = g.op("GreaterOrEqual", probs, g.f32(_lac_cutoffs(cp, k)))
    if cp.is_never_empty:
        F32 = _T(g.onnx, "FLOAT")
        empty = g.op("Equal", g.reduce("ReduceMax", g.cast(sets, F32), 1, True), g.f32(0.0))
        top = g.op("ArgMax", probs, axis=1, keepdims=1)
        onehot = g.op("Equal", g.i64(np.arange(k)[None, :]), top)
        sets = g.op("Or", sets, g.op("And", empty, onehot))
    return sets


# --------------------------------------------------------------------------------------------------------------
# policies


def _fallback_source(pol, fallback_input):
    """("none" | "const" | "input", constant class or None), or (None, reason) when not expressible."""
    mode = pol.fallback
    if isinstance(mode, bool):
        return None, f"fallback {mode!r}"
    if isinstance(mode, numbers.Integral):
        return "const", int(mode)
    if mode == "none":
        return "none", None
    if mode == "majority":
        return "const", int(pol.majority_class_)
    if fallback_input:
        return "input", None
    if mode == "auto":
        return "none", None  # no per-item fallback array at serve time: calib routes without one
    return None, ("fallback='extras' needs a per-item fallback array at serve time; export with "
                  "fallback_input=True to add a 'fallback' int64 [N] input")


def _policy_reason(pol, has_sets, fallback_input):
    from calib import policy as P

    if P.REGISTRY.get(pol.kind) is not type(pol):
        return f"{type(pol).__name__} is not exactly a calib.policy.REGISTRY class"
    if (P.ANSWER, P.ESCALATE, P.FALLBACK) != (ANSWER, ESCALATE, FALLBACK):
        return "calib.policy action codes changed"
    src, why = _fallback_source(pol, fallback_input)
    if src is None:
        return why
    if pol.kind in ("threshold", "risk_control"):
        from calib.selective import CONFIDENCES

        if pol.confidence not in CONFIDENCES:
            return f"confidence {pol.confidence!r} has no ONNX translation"
        return None
    if pol.kind == "conformal_routing":
        if not has_sets:
            return "it routes on conformal sets, which are not exported (see omitted['sets'])"
        try:
            pol.empty_set_rule  # noqa: B018
        except ValueError as err:
            return str(err)
        return None
    if pol.kind == "cost":
        return None
    return f"policy kind {pol.kind!r} has no ONNX translation"


def _policy_graph(g, pol, probs, sets, fb, k):
    F64, I64 = _T(g.onnx, "DOUBLE"), _T(g.onnx, "INT64")

    def p_of(fb_idx, dtype):  # probability of the fallback's label, [N]
        col = g.op("GatherElements", probs, g.op("Unsqueeze", fb_idx, g.i64([1])), axis=1)
        col = g.op("Squeeze", col, g.i64([1]))
        return col if dtype is None else g.cast(col, dtype)

    if pol.kind in ("threshold", "risk_control"):
        conf = _confidence(g, probs, pol.confidence)
        answer = g.op("GreaterOrEqual", conf, g.f64(pol.threshold_))
        actions = g.op("Where", answer, g.i64(ANSWER), g.i64(ESCALATE))
        if fb is not None and pol.fallback_threshold is not None:
            # numpy compares the float32 probability with the Python float in float32 (NEP 50)
            fb_ok = g.op("GreaterOrEqual", p_of(fb, None), g.f32(pol.fallback_threshold))
            actions = g.op("Where", g.op("And", g.op("Not", answer), fb_ok), g.i64(FALLBACK), actions)
        return actions
    if pol.kind == "conformal_routing":
        size = g.reduce("ReduceSum", g.cast(sets, I64), 1, False)
        actions = g.i64(ESCALATE)
        if fb is not None:
            in_set = g.cast(g.op("Squeeze", g.op("GatherElements", g.cast(sets, I64),
                                                   g.op("Unsqueeze", fb, g.i64([1])), axis=1), g.i64([1])),
                            _T(g.onnx, "BOOL"))
            nonempty = g.op("GreaterOrEqual", size, g.i64(1))
            actions = g.op("Where", g.op("And", in_set, nonempty), g.i64(FALLBACK), actions)
        answer = g.op("Equal", size, g.i64(1))
        if pol.empty_set_rule == "answer_top":
            answer = g.op("Or", answer, g.op("Equal", size, g.i64(0)))
        zeros = g.op("Mul", size, g.i64(0))  # [N] so that the result has one action per row
        return g.op("Where", answer, g.op("Add", zeros, g.i64(ANSWER)), g.op("Add", zeros, actions))
    if pol.kind == "cost":
        cm = pol.cost_model
        p_pred = g.cast(g.reduce("ReduceMax", probs, 1, False), F64)
        c0 = g.op("Mul", g.op("Sub", g.f64(1.0), p_pred), g.f64(cm.wrong_answer))
        c1 = g.f64(cm.escalation_cost)
        if fb is None:
            return g.op("Where", g.op("LessOrEqual", c0, c1), g.i64(ANSWER), g.i64(ESCALATE))
        c2 = g.op("Mul", g.op("Sub", g.f64(1.0), p_of(fb, F64)), g.f64(cm.wrong_fallback))
        second = g.op("Where", g.op("LessOrEqual", c2, c1), g.i64(FALLBACK), g.i64(ESCALATE))
        return g.op("Where", g.op("LessOrEqual", c0, g.op("Min", c1, c2)), g.i64(ANSWER), second)
    raise ExportError(f"Policy kind {pol.kind!r} has no ONNX translation.")  # _policy_reason said otherwise


def _confidence(g, probs, confidence):
    """calib.selective.confidence_scores in float64, [N]."""
    F64 = _T(g.onnx, "DOUBLE")
    if confidence == "max_prob":
        return g.cast(g.reduce("ReduceMax", probs, 1, False), F64)
    if confidence == "margin":
        vals = g.name("top2")
        g.nodes.append(g.helper.make_node("TopK", [probs, g.i64([2])], [vals, g.name("top2_idx")], axis=1,
                                          largest=1, sorted=1, name=g.name("n_TopK")))
        top2 = g.cast(vals, F64)
        return g.op("Sub", g.column(top2, 0), g.column(top2, 1))
    p64 = g.cast(probs, F64)
    plogp = g.op("Where", g.op("Greater", p64, g.f64(0.0)), g.op("Mul", p64, g.op("Log", p64)), g.f64(0.0))
    return g.reduce("ReduceSum", plogp, 1, False)


# --------------------------------------------------------------------------------------------------------------
# the check


def check_sample(n_classes, n=2000, seed=0):
    """Deterministic float32 logits (n + edge rows, n_classes) for the export check: rows of scales 0.3 to 30
    with a boosted class (probabilities over all of [0, 1]), then edge rows: all ties, two-way top ties, one
    dominant class, logits of magnitude 1e3, 1e30 and 3e38, and constant rows far from 0."""
    k = int(n_classes)
    rng = np.random.default_rng([int(seed), k, 13])
    scales = rng.choice(np.array([0.3, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0]), size=n)
    z = rng.standard_normal((n, k)) * scales[:, None]
    z[np.arange(n), rng.integers(k, size=n)] += rng.uniform(0.0, 3.0, n) * scales
    edges = [np.zeros(k), np.full(k, 7.5), np.full(k, -1e30), np.full(k, 1e30)]
    tie = np.linspace(-1.0, 0.0, k)
    tie[: min(2, k)] = 2.0
    edges.append(tie)
    for big in (1e3, 1e30):
        row = np.zeros(k)
        row[0] = big
        edges.append(row)
        row = np.zeros(k)
        row[-1] = -big
        edges.append(row)
        edges.append(np.linspace(-big, big, k))
    dominant = np.full(k, -20.0)
    dominant[k // 2] = 40.0
    edges.append(dominant)
    extreme = np.zeros(k)  # near float32's limit: scores W z + b may overflow float32 (calib recomputes in float64)
    extreme[0], extreme[-1] = 3e38, -3e38
    edges.append(extreme)
    return np.vstack([z, np.array(edges)]).astype(np.float32)


def _margins(probs, cp, pol, sets, fb):
    """Per row: the smallest distance of any decision to its cut-off (label, sets, actions), float64 [N] each."""
    p = probs.astype(np.float64)
    part = np.sort(p, axis=1)
    out = {"label": part[:, -1] - part[:, -2]}
    if cp is not None and sets is not None:
        t = np.asarray(cp.thresholds_, dtype=np.float64)[:, 0] if cp.kind == "mondrian" else \
            np.asarray(cp.thresholds_, dtype=np.float64)[0]
        with np.errstate(invalid="ignore"):
            gap = np.abs(1.0 - p - (t[None, :] if np.ndim(t) else t))
        gap = np.where(np.isfinite(gap), gap, np.inf)
        m = gap.min(axis=1)
        if cp.is_never_empty:
            m = np.minimum(m, out["label"])
        out["sets"] = m
    if pol is not None:
        if pol.kind in ("threshold", "risk_control"):
            from calib.selective import confidence_scores

            with np.errstate(invalid="ignore"):
                m = np.abs(confidence_scores(probs, pol.confidence) - pol.threshold_)
            m = np.where(np.isfinite(m), m, np.inf)
            if fb is not None and pol.fallback_threshold is not None:
                m = np.minimum(m, np.abs(p[np.arange(p.shape[0]), fb] - pol.fallback_threshold))
        elif pol.kind == "conformal_routing":
            m = out.get("sets", np.full(p.shape[0], np.inf))
        else:
            cm = pol.cost_model
            c0 = (1.0 - p.max(axis=1)) * cm.wrong_answer
            c1 = cm.escalation_cost
            m = np.abs(c0 - c1)
            if fb is not None:
                c2 = (1.0 - p[np.arange(p.shape[0]), fb]) * cm.wrong_fallback
                # fallback label = model label: c0 and c2 come from one probability (a tie whichever it is), unless
                # the label itself flips (the label margin)
                same = (fb == p.argmax(axis=1)) & (cm.wrong_answer == cm.wrong_fallback)
                g02 = np.where(same, out["label"], np.abs(c0 - c2))
                m = np.minimum(m, np.minimum(g02, np.abs(c2 - c1)))
        out["actions"] = m
    return out


def _map_from_softmax(cal, p):
    """calib's own map of histogram binning / isotonic applied to given softmax probabilities ``p`` (the lines
    of their ``_predict_proba`` after the softmax, through calib's functions)."""
    import warnings

    from calib.calibrators._segmented import interp_rows, interp_rows_f32, transpose
    from calib.calibrators.isotonic import renormalise, top_label_apply

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # renormalise counts all-zero rows with a warning
        if cal.kind == "histogram_binning":
            if cal.multiclass == "ovr":
                q = cal._lookup(np.ascontiguousarray(p.T)).astype(np.float32)
                return renormalise(q, classes_first=True)[0]
            return top_label_apply(p, cal._lookup(p.max(axis=1)[None, :])[0])
        if cal.multiclass == "ovr":
            q = interp_rows_f32(transpose(p), cal.knots_x_, cal.knots_y_, cal.knot_counts_)
            return renormalise(q, classes_first=True)[0]
        conf = p.max(axis=1)[None, :]
        return top_label_apply(p, interp_rows(conf, cal.knots_x_, cal.knots_y_, cal.knot_counts_)[0])


def _run_check(model_bytes, cal, cp, pol, outputs, logits, fb, atol, rtol, softmax_name):
    """Compare onnxruntime with calib on ``logits``; returns the report or raises ExportError."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ExportError("check=True needs onnxruntime (pip install 'calib[onnx]'), got ImportError: "
                          f"{err}; pass check=False to export without the check.") from None
    from calib.calibrators.base import softmax

    def session(data):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    sess = session(model_bytes)
    feed = {"logits": logits}
    if fb is not None and any(i.name == "fallback" for i in sess.get_inputs()):
        feed["fallback"] = fb.astype(np.int64)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    ref_p = cal.predict_proba(logits)
    report = {"rows": int(logits.shape[0]), "max_abs_diff": {}, "excluded": {}, "mismatches": {}}
    p = got["probs"]
    if p.shape != ref_p.shape or p.dtype != np.float32:
        raise ExportError(f"Check failed: expected probs float32 {ref_p.shape} from onnxruntime, got {p.dtype} "
                          f"{p.shape}.")
    explained = False
    if softmax_name is not None:
        # the step / piecewise-linear maps: (a) the graph's softmax is calib's within a few ulps, (b) the graph's map
        # of its own softmax is calib's map of it within atol; so a row that differs end to end differs only because
        # the map amplifies (a)'s ulps there (a step or a steep piece): counted as explained, not failed
        import onnx

        m = onnx.load_from_string(model_bytes)
        m.graph.output.append(onnx.helper.make_tensor_value_info(softmax_name, onnx.TensorProto.FLOAT,
                                                                 ["N", p.shape[1]]))
        sm = session(m.SerializeToString()).run([softmax_name], feed)[0]
        sm_ref = softmax(logits)
        sm_ref = sm_ref.astype(np.float64)
        d = np.abs(sm.astype(np.float64) - sm_ref)
        report["max_abs_diff"]["softmax"] = float(d.max())
        if not (d <= SOFTMAX_RTOL * sm_ref + SOFTMAX_ATOL).all():
            raise ExportError(f"Check failed: the graph's softmax differs from calib's by more than "
                              f"{SOFTMAX_RTOL:g} p + {SOFTMAX_ATOL:g} (up to {float(d.max()):.3g} absolute).")
        own = _map_from_softmax(cal, sm)
        d = float(np.abs(own.astype(np.float64) - p).max())
        report["max_abs_diff"]["probs_given_softmax"] = d
        if not d <= atol:
            raise ExportError(f"Check failed: the graph's {cal.kind} map of its own softmax differs from calib's map "
                              f"of it by {d:.3g} (atol {atol:g}).")
        explained = True
    with np.errstate(invalid="ignore"):
        diff = np.abs(p.astype(np.float64) - ref_p.astype(np.float64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    bad = (diff > atol + rtol * np.abs(ref_p.astype(np.float64))).any(axis=1)
    sensitive = bad if explained else np.zeros_like(bad)
    report["max_abs_diff"]["probs"] = float(diff[~sensitive].max(initial=0.0))
    report["max_abs_diff"]["probs_all_rows"] = float(diff.max(initial=0.0))
    report["excluded"]["probs"] = int(sensitive.sum())
    if bad.any() and not explained:
        r = int(np.flatnonzero(bad)[0])
        raise ExportError(f"Check failed: onnxruntime probs differ from {cal.kind}.predict_proba by up to "
                          f"{float(diff.max()):.3g} (atol {atol:g}, rtol {rtol:g}) on {int(bad.sum())} of "
                          f"{p.shape[0]} rows (first row {r}).")
    fb_arg = fb if fb is not None and pol is not None and _fallback_source(pol, True)[0] == "input" else None
    # 1) the decisions of the graph equal calib's decisions on the graph's own probabilities, exactly
    own_sets = cp.predict_set(p) if "sets" in outputs else None
    own = {"label": p.argmax(axis=1)}
    if own_sets is not None:
        own["sets"] = own_sets
    if "actions" in outputs:
        own["actions"] = pol.route(p, sets=own_sets, fallback=fb_arg).actions
    for key, want in own.items():
        have = got[key]
        if have.shape != want.shape or not np.array_equal(have, want.astype(have.dtype)):
            n_bad = int((have != want).reshape(have.shape[0], -1).any(axis=1).sum()) if have.shape == want.shape \
                else have.shape[0]
            raise ExportError(f"Check failed: onnxruntime {key} differ from calib's on the graph's own probabilities "
                              f"on {n_bad} rows.")
    # 2) end to end against calib's probabilities: equal except where a decision sits within the margin
    ref_sets = cp.predict_set(ref_p) if "sets" in outputs else None
    ref = {"label": ref_p.argmax(axis=1), "sets": ref_sets,
           "actions": pol.route(ref_p, sets=ref_sets, fallback=fb_arg).actions if "actions" in outputs else None}
    margins = _margins(ref_p, cp, pol, ref_sets, fb_arg)
    same_probs = (p == ref_p).all(axis=1)  # decisions are functions of the probabilities (step 1): equal there
    for key in own:
        near = ((margins[key] < DECISION_MARGIN) & ~same_probs) | sensitive
        have, want = got[key], ref[key]
        differ = (have != want.astype(have.dtype)).reshape(have.shape[0], -1).any(axis=1)
        report["excluded"][key] = int(near.sum())
        report["mismatches"][key] = int((differ & near).sum())
        if (differ & ~near).any():
            r = int(np.flatnonzero(differ & ~near)[0])
            raise ExportError(f"Check failed: onnxruntime {key} differ from calib's on {int((differ & ~near).sum())} "
                              f"rows whose decision margin is >= {DECISION_MARGIN:g} (first row {r}).")
    return report


# --------------------------------------------------------------------------------------------------------------
# the public function


def _check_component(obj, name, registry_module):
    from calib.base import Component, NotFittedError

    if obj is None:
        return None
    if not isinstance(obj, Component):
        optional = "" if name == "calibrator" else " or None"
        raise TypeError(f"Expected {name} as a fitted calib component (a {registry_module}.REGISTRY class){optional}, "
                        f"got {type(obj).__name__} {obj!r:.80}.")
    if not obj.is_fitted:
        raise NotFittedError(f"Expected {name} fitted, got an unfitted {type(obj).__name__}; call fit() first.")
    return obj


def _check_real(value, name, lo, hi):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (lo <= float(value) <= hi):
        raise ValueError(f"Expected {name} as a real number in [{lo:g}, {hi:g}], got {value!r:.80}.")
    return float(value)


def export_onnx(calibrator, path, *, conformal=None, policy=None, class_names=None, opset=None, check=True,
                rtol=0.0, atol=1e-6, strict=False, metadata=None, fallback_input=False, sample=None,
                overwrite=False) -> dict:
    """Write a fitted calibrator (and conformal predictor, routing policy) as one ONNX graph at ``path``.

    Parameters
    ----------
    calibrator : fitted calib calibrator (a :data:`calib.calibrators.REGISTRY` class)
        Not expressible (netcal) raises :class:`ExportError` and writes nothing.
    path : str or os.PathLike
        The ``.onnx`` file; its folder is created. An existing file is refused unless ``overwrite=True``.
    conformal, policy : fitted components or None
        Exported where expressible (module docstring); otherwise omitted with a reason, or with
        ``strict=True`` an :class:`ExportError`.
    class_names : sequence of k str, optional
        Stored (JSON) in the model's metadata.
    opset : int, optional
        ONNX opset, from :data:`MIN_OPSET` to onnx's latest (default :data:`DEFAULT_OPSET`).
    check : bool, default True
        Run the model with onnxruntime on :func:`check_sample` rows (plus ``sample``) and compare with calib:
        ``probs`` within ``atol + rtol |p|``; ``label``, ``sets`` and ``actions`` equal to calib's on the graph's
        own probabilities, and to calib's end to end except on rows within :data:`DECISION_MARGIN` of a
        decision's cut-off (counted in the result). Failure: :class:`ExportError`, nothing written.
    metadata : dict of str -> str or JSON-serialisable, optional
        Extra ``metadata_props`` (e.g. ``{"content_id": ...}`` of the artifact).
    fallback_input : bool, default False
        Add an input ``fallback`` int64 [N] (per-item fallback labels) for policies whose fallback mode is
        ``"auto"`` or ``"extras"``; without it ``"auto"`` exports as no fallback and ``"extras"`` is omitted.
    sample : array-like (n, k), optional
        Extra logits for the check (e.g. the calibration logits), in addition to the deterministic sample.

    Returns
    -------
    dict
        ``path``, ``outputs`` (names in the graph), ``inputs``, ``omitted`` ({output: reason}), ``opset``,
        ``max_abs_diff`` ({"probs": ...}; empty without check) and ``check`` (rows, excluded and mismatches
        within the margin, per output; None without check).
    """
    try:
        import onnx
    except ImportError as err:
        raise ImportError(f"export_onnx needs the onnx package (pip install 'calib[onnx]'), got: {err}") from None
    import calib

    cal = _check_component(calibrator, "calibrator", "calib.calibrators")
    if cal is None:
        raise TypeError("Expected calibrator as a fitted calib calibrator, got None.")
    from calib.calibrators import Calibrator
    from calib.conformal.split import ConformalBase
    from calib.policy import RoutingPolicy

    if not isinstance(cal, Calibrator):
        raise TypeError(f"Expected calibrator as a calib calibrator, got {type(cal).__name__}.")
    cp = _check_component(conformal, "conformal", "calib.conformal")
    if cp is not None and not isinstance(cp, ConformalBase):
        raise TypeError(f"Expected conformal as a calib conformal predictor or None, got {type(cp).__name__}.")
    pol = _check_component(policy, "policy", "calib.policy")
    if pol is not None and not isinstance(pol, RoutingPolicy):
        raise TypeError(f"Expected policy as a calib routing policy or None, got {type(pol).__name__}.")
    k = int(cal.n_classes_)
    for name, comp in (("conformal", cp), ("policy", pol)):
        if comp is not None and int(comp.n_classes_) != k:
            raise ValueError(f"Expected {name} fitted on {k} classes (as the calibrator), got n_classes="
                             f"{comp.n_classes_}.")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"Expected path as a non-empty str or os.PathLike, got {type(path).__name__} {path!r:.80}.")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Expected path as a file to write, got the existing folder {str(path)!r}.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"Expected path not to exist (or overwrite=True), got the existing file {str(path)!r}.")
    if class_names is not None:
        if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__iter__"):
            raise TypeError(f"Expected class_names as a sequence of {k} str, got {type(class_names).__name__}.")
        class_names = list(class_names)
        if len(class_names) != k or not all(isinstance(c, str) for c in class_names):
            raise ValueError(f"Expected class_names as {k} strings (one per class), got {len(class_names)} entries "
                             f"{class_names[:5]!r:.120}.")
    latest = onnx.defs.onnx_opset_version()
    if opset is None:
        opset = min(DEFAULT_OPSET, latest)
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) or not MIN_OPSET <= opset <= latest:
        raise ValueError(f"Expected opset as an integer in [{MIN_OPSET}, {latest}], got {opset!r:.80}.")
    opset = int(opset)
    for name, v in (("check", check), ("strict", strict), ("fallback_input", fallback_input),
                    ("overwrite", overwrite)):
        if not isinstance(v, bool):
            raise TypeError(f"Expected {name} as a bool, got {type(v).__name__} {v!r:.80}.")
    atol = _check_real(atol, "atol", 0.0, 1.0)
    rtol = _check_real(rtol, "rtol", 0.0, 1.0)
    if metadata is not None and (not isinstance(metadata, dict) or not all(isinstance(key, str) for key in metadata)):
        raise TypeError(f"Expected metadata as a dict with str keys, got {type(metadata).__name__}.")
    extra = None
    if sample is not None:
        from calib._validation import check_logits

        extra = np.asarray(check_logits(sample, "sample", n_classes=k), dtype=np.float32)

    # what is expressible
    omitted = {}
    cp_ok = None
    if cp is not None:
        why = _conformal_reason(cp, k)
        if why is None:
            cp_ok = cp
        else:
            omitted["sets"] = f"conformal {cp.kind!r}: {why}"
    pol_ok = None
    if pol is not None:
        why = _policy_reason(pol, cp_ok is not None, fallback_input)
        if why is None:
            pol_ok = pol
        else:
            omitted["actions"] = f"policy {pol.kind!r}: {why}"
    if strict and omitted:
        raise ExportError("Not expressible in ONNX (strict=True): " + "; ".join(omitted.values()) + ".")

    g = _Graph(onnx, opset)
    x = "logits"
    probs = _calibrator_graph(g, cal, x)  # ExportError for a calibrator that is not expressible
    outputs = {"probs": (probs, "FLOAT", ["N", k])}
    outputs["label"] = (g.op("ArgMax", probs, axis=1, keepdims=0), "INT64", ["N"])
    sets = None
    if cp_ok is not None:
        sets = _sets_graph(g, cp_ok, probs, k)
        outputs["sets"] = (sets, "BOOL", ["N", k])
    inputs = [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", k])]
    fb = None
    if pol_ok is not None:
        src, const = _fallback_source(pol_ok, fallback_input)
        if src == "const":
            fb = g.op("Add", g.op("Mul", outputs["label"][0], g.i64(0)), g.i64(const))  # [N] of the constant
        elif src == "input":
            fb = "fallback"
            inputs.append(onnx.helper.make_tensor_value_info("fallback", onnx.TensorProto.INT64, ["N"]))
        acts = _policy_graph(g, pol_ok, probs, sets, fb, k)
        outputs["actions"] = (g.cast(acts, onnx.TensorProto.INT8), "INT8", ["N"])
    out_infos = []
    for name, (node_out, dtype, shape) in outputs.items():
        g.op("Identity", node_out, out=name)
        out_infos.append(onnx.helper.make_tensor_value_info(name, _T(onnx, dtype), shape))
    graph = onnx.helper.make_graph(g.nodes, "calib_pipeline", inputs, out_infos, initializer=g.inits)
    opset_ids = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=opset_ids, producer_name="calib",
                                   producer_version=str(calib.__version__))
    model.ir_version = onnx.helper.find_min_ir_version_for(opset_ids)
    props = {
        "calib_version": str(calib.__version__),
        "calibrator": cal.kind,
        "calibrator_params": _params_json(cal),
        "conformal": "" if cp is None else cp.kind,
        "policy": "" if pol is None else pol.kind,
        "n_classes": str(k),
        "outputs": json.dumps(list(outputs)),
        "omitted": json.dumps(omitted, sort_keys=True),
        "actions_codes": json.dumps({"answer": ANSWER, "escalate": ESCALATE, "fallback": FALLBACK}),
    }
    if cp is not None:
        props["conformal_params"] = _params_json(cp)
    if pol is not None:
        props["policy_params"] = _params_json(pol)
    if class_names is not None:
        props["class_names"] = json.dumps(class_names)
    for key, value in (metadata or {}).items():
        props[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    onnx.helper.set_model_props(model, props)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"The ONNX graph built for {cal.kind!r} fails onnx.checker: {err}") from None
    data = model.SerializeToString()

    report = None
    if check:
        logits = check_sample(k)
        if extra is not None:
            logits = np.vstack([extra, logits])
        fb_arr = None
        if fb == "fallback":
            fb_arr = np.random.default_rng([k, 7]).integers(k, size=logits.shape[0]).astype(np.int64)
        report = _run_check(data, cal, cp_ok, pol_ok, list(outputs), logits, fb_arr, atol, rtol, g.softmax)

    path.parent.mkdir(parents=True, exist_ok=True)
    from calib._atomic import write_bytes_atomic

    write_bytes_atomic(path, data)
    return {"path": str(path), "inputs": [i.name for i in inputs], "outputs": list(outputs), "omitted": omitted,
            "opset": opset, "max_abs_diff": {} if report is None else report["max_abs_diff"], "check": report}


def _params_json(comp):
    try:
        return json.dumps(comp.get_params(), sort_keys=True, default=str)
    except (TypeError, ValueError):
        return json.dumps({"repr": repr(comp)})
