"""LAC's fused fit / predict_set pass (one read of each array, checks included) against an independent
plain-numpy LAC and against calib's plain (unfused) path: the same thresholds, sets, warnings and errors.

The reference is the definition (Sadinle, Lei & Wasserman, 2019; Angelopoulos & Bates, 2023): scores
``s_i = 1 - p_i[y_i]`` in float64, ``qhat`` the ``r = ceil((n + 1)(1 - alpha))``-th smallest (``+inf`` when
``r > n``), sets ``{j : 1 - p_j <= qhat}`` compared in float64 (ties at qhat are in the set).
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

import calib._chunks as chunking
import calib._validation as V
from calib.conformal import SetSizeWarning, SplitConformal
from calib.conformal import split as split_mod


# --- the independent reference ---------------------------------------------------------------------
def ref_rank(n, alpha):
    """ceil((n + 1)(1 - alpha)) in exact rational arithmetic on the decimal alpha."""
    return math.ceil((n + 1) * (1 - Fraction(repr(alpha))))


def ref_lac(pc, yc, pt, alpha):
    s = 1.0 - pc[np.arange(pc.shape[0]), yc].astype(np.float64)
    r = ref_rank(pc.shape[0], alpha)
    q = np.sort(s)[r - 1] if r <= s.size else np.inf
    return q, (1.0 - pt.astype(np.float64)) <= q


def _probs(n, k, seed=0, dtype=np.float32, scale=3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=scale, size=(n, k))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p = p.astype(dtype)
    y = (p.astype(np.float64).cumsum(1) > rng.random((n, 1))).argmax(1)
    return p, y


@pytest.fixture
def plain(monkeypatch):
    """Run calib's unfused LAC fit (the code path before the fused pass) inside a ``with plain():`` block."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        with monkeypatch.context() as m:
            m.setattr(split_mod, "_lac_fit_pass", lambda probs, labels: None)
            yield
    return ctx


def _fit_both(plain, pc, yc, **kw):
    with warnings.catch_warnings(record=True) as w_fast:
        warnings.simplefilter("always")
        fast = SplitConformal(score="lac", **kw).fit(pc, yc)
    with plain(), warnings.catch_warnings(record=True) as w_plain:
        warnings.simplefilter("always")
        slow = SplitConformal(score="lac", **kw).fit(pc, yc)
    return fast, slow, [str(x.message) for x in w_fast], [str(x.message) for x in w_plain]


def _plain_sets(cp, p):
    return cp._finish(cp._sets(cp._check_predict_probs(p), cp.thresholds_))


# --- equality with the reference and the plain path ------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, k, alpha", [(2000, 10, 0.1), (503, 2, 0.05), (30011, 3, 0.2), (1200, 300, 0.1)])
def test_fused_lac_equals_reference_and_plain_path(plain, dtype, n, k, alpha):
    p, y = _probs(n + 700, k, seed=n + k, dtype=dtype)
    pc, yc, pt = p[:n], y[:n], p[n:]
    fast, slow, wf, ws = _fit_both(plain, pc, yc, alpha=alpha)
    q, ref_sets = ref_lac(pc, yc, pt, alpha)
    assert fast.qhat_ == q == slow.qhat_  # bit-identical floats
    assert fast.__dict__.keys() == slow.__dict__.keys()
    assert (fast.n_calibration_, fast.n_classes_, fast.draw_key_) == (n, k, None)
    assert wf == ws
    sets = fast.predict_set(pt)
    assert sets.dtype == bool and sets.shape == (700, k)
    assert np.array_equal(sets, ref_sets)
    assert np.array_equal(sets, _plain_sets(fast, pt))
    (fs, fa), (ss, sa) = fast.get_state(), slow.get_state()
    assert fs == ss and fa.keys() == sa.keys() and all(np.array_equal(fa[x], sa[x]) for x in fa)


def test_many_chunks_and_threads_give_identical_results(plain, monkeypatch):
    """Chunks of 7 rows over 3 threads, n = 25,013 so the set-size rows (every 3rd) straddle chunk edges."""
    monkeypatch.setattr(V, "_ELEMENTS_PER_THREAD", 1000)
    monkeypatch.setattr(chunking, "CACHE", 7 * 5 * 4)
    p, y = _probs(25_013 + 500, 5, seed=7, scale=0.3)  # flat rows: many full sets -> the warning fires
    pc, yc, pt = p[:25_013], y[:25_013], p[25_013:]
    out = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("CALIB_NUM_THREADS", threads)
        fast, slow, wf, ws = _fit_both(plain, pc, yc, alpha=[0.5, 0.3, 0.02])
        assert np.array_equal(fast.qhat_, slow.qhat_)
        assert wf == ws and any("set of all 5 classes" in m for m in wf)
        out[threads] = (fast.qhat_, fast.predict_set(pt))
    q = np.array([ref_lac(pc, yc, pt, a)[0] for a in (0.5, 0.3, 0.02)])
    ref = np.stack([ref_lac(pc, yc, pt, a)[1] for a in (0.5, 0.3, 0.02)], axis=-1)
    for threads in out:
        assert np.array_equal(out[threads][0], q)
        assert np.array_equal(out[threads][1], ref)


def test_sampled_extremes_are_the_rows_of_the_plain_check():
    n, k = 23_457, 4  # step 3: rows 0, 3, ..., 23_454
    p, y = _probs(n, k, seed=3)
    _, _, p_true, top = split_mod._lac_fit_pass(p, y)
    assert np.array_equal(p_true, p[np.arange(n), y])
    assert np.array_equal(top, p[::3].max(axis=1))


@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0, 3.0])
@pytest.mark.parametrize("k", [2, 3, 10, 40])
def test_set_size_warnings_equal_the_plain_path_around_the_full_set_shortcut(plain, scale, k):
    """The row minima are skipped when every cut-off v exceeds 2/k (no row can then hold every class): flat
    rows (small scale) put v below 2/k, peaked rows above; the warnings and thresholds are the plain path's."""
    from calib.conformal.scores import LAC

    p, y = _probs(3000, k, seed=k, scale=scale)
    branches = set()
    for alpha in ([0.02, 0.1, 0.3, 0.6, 0.9], 0.1, 0.7):
        fast, slow, wf, ws = _fit_both(plain, p, y, alpha=alpha)
        assert np.array_equal(fast.qhat_, slow.qhat_) and wf == ws
        v = LAC.prob_thresholds(fast.thresholds_, p.dtype).astype(np.float64)
        branches.add(bool(np.all(v > 2.0 / k)))
        for (a, _, full), vj in zip(slow._set_size_rates(p, None, slow.thresholds_), v):
            if vj > 2.0 / k:
                assert full == 0.0, (a, vj)  # what the shortcut assumes, measured on the plain path
    if k >= 10 and scale >= 1.0:
        assert branches == {True, False}  # both the shortcut and the read of the row minima ran


def test_ties_at_the_threshold_and_values_equal_to_qhat(plain):
    """Many calibration rows share the quantile's score; test entries equal to 1 - qhat in float32 and
    their float32 neighbours decide membership exactly as the float64 definition."""
    k = 4
    base = np.array([0.625, 0.125, 0.125, 0.125], dtype=np.float32)  # exact binary fractions
    pc = np.tile(base, (200, 1))
    yc = np.zeros(200, dtype=np.int64)
    yc[::3] = 1  # scores 0.375 and 0.875, heavily tied
    fast, slow, _, _ = _fit_both(plain, pc, yc, alpha=0.1, allow_infinite=False)
    q, _ = ref_lac(pc, yc, pc, 0.1)
    assert fast.qhat_ == slow.qhat_ == q == 0.875
    v = np.float32(1 - q)  # 0.125: in the set (tie)
    pt = np.array([[0.625, v, np.nextafter(v, np.float32(0)), 1 - 0.625 - v - np.nextafter(v, np.float32(0))],
                   [np.nextafter(v, np.float32(1)), v, v, 1 - np.nextafter(v, np.float32(1)) - 2 * v]],
                  dtype=np.float32)
    sets = fast.predict_set(pt)
    assert np.array_equal(sets, (1.0 - pt.astype(np.float64)) <= q)
    assert sets[0].tolist() == [True, True, False, True] and sets[1, :3].tolist() == [True, True, True]


def test_float32_entries_around_a_non_representable_qhat(plain):
    """qhat = 1 - p for a float32 p whose float64 complement is not a float32: the neighbours of p decide."""
    rng = np.random.default_rng(11)
    p = rng.dirichlet(np.ones(3), size=400).astype(np.float32)
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, 3, 400)
    fast, slow, _, _ = _fit_both(plain, p, y, alpha=0.15)
    q = fast.qhat_
    c = np.float32(1 - q)  # a probability on the boundary (rounded to float32)
    vals = np.array([np.nextafter(np.nextafter(c, np.float32(0)), np.float32(0)), np.nextafter(c, np.float32(0)), c,
                     np.nextafter(c, np.float32(1)), np.nextafter(np.nextafter(c, np.float32(1)), np.float32(1))],
                    dtype=np.float32)
    pt = np.stack([vals, np.zeros(5, np.float32), 1 - vals], axis=1).astype(np.float32)
    assert np.array_equal(fast.predict_set(pt), (1.0 - pt.astype(np.float64)) <= q)
    assert fast.qhat_ == slow.qhat_ == ref_lac(p, y, pt, 0.15)[0]


def test_n_too_small_for_alpha(plain):
    p, y = _probs(8, 3, seed=1)  # alpha = 0.1 needs n >= 9
    fast, slow, wf, ws = _fit_both(plain, p, y, alpha=[0.1, 0.5], allow_infinite=True)
    assert fast.qhat_[0] == slow.qhat_[0] == np.inf and fast.qhat_[1] == slow.qhat_[1] == ref_lac(p, y, p, 0.5)[0]
    assert wf == ws and any("qhat is inf" in m for m in wf)
    sets = fast.predict_set(p)
    assert sets[:, :, 0].all() and np.array_equal(sets[:, :, 1], ref_lac(p, y, p, 0.5)[1])
    for ctx in (lambda: __import__("contextlib").nullcontext(), plain):
        with ctx(), pytest.raises(ValueError, match=r"Expected at least 9 calibration scores for alpha=0\.1"):
            SplitConformal(score="lac", alpha=0.1).fit(p, y)


@pytest.mark.parametrize("layout", ["fortran", "strided", "list", "int_labels_as_float"])
def test_unusual_layouts_equal_the_plain_path(plain, layout):
    p, y = _probs(900, 6, seed=5)
    labels = y
    if layout == "fortran":
        p = np.asfortranarray(p)
    elif layout == "strided":
        p = np.repeat(p, 2, axis=1)[:, ::2]  # a non-contiguous view with the same values
    elif layout == "list":
        p = p.tolist()
    else:
        labels = y.astype(np.float64)
    fast, slow, wf, ws = _fit_both(plain, p, labels, alpha=0.1)
    assert fast.qhat_ == slow.qhat_ and wf == ws
    arr = np.asarray(p)
    assert fast.qhat_ == ref_lac(arr, y, arr, 0.1)[0]


def test_other_scores_and_lac_subclasses_take_the_plain_path(monkeypatch):
    from calib.conformal.scores import LAC

    def boom(probs, labels):
        raise AssertionError("fused LAC pass used")

    monkeypatch.setattr(split_mod, "_lac_fit_pass", boom)
    p, y = _probs(600, 5, seed=2)
    for score, kw in (("aps", {}), ("raps", dict(k_reg=1, lam=0.1)), ("raps", dict(tune=True)), ("saps", {}),
                      ("topk", {})):
        SplitConformal(score=score, alpha=0.1, **kw).fit(p, y)

    class MyLAC(LAC):
        pass

    cp = SplitConformal(score=MyLAC(), alpha=0.1).fit(p, y)
    assert cp.qhat_ == ref_lac(p, y, p, 0.1)[0]


# --- bad inputs: the checks still fire, with the plain path's messages -----------------------------------
def _bad_cases():
    p, y = _probs(300, 4, seed=9)
    cases = {}

    def put(name, probs=None, labels=None):
        cases[name] = (p if probs is None else probs, y if labels is None else labels)

    q = p.copy(); q[123, 2] = np.nan; put("nan", q)
    q = p.copy(); q[299, 0] = np.inf; put("inf", q)
    q = p.copy(); q[5, 1] -= 0.5; q[5, 2] += 0.5; put("negative", q)  # row still sums to 1
    q = p.copy(); q[7, 1] += 0.01; put("sum", q)
    q = p.copy(); q[0] *= 2; put("sum_first_row", q)
    put("int_probs", np.eye(4, dtype=np.int64)[y])  # valid one-hot rows as integers (promoted)
    put("bool_probs", np.eye(4, dtype=bool)[y])
    put("complex_probs", p.astype(np.complex64))
    put("object_probs", p.astype(object))
    put("float16_probs", p.astype(np.float16))
    put("one_d", p[:, 0])
    put("one_class", p[:, :1])
    put("no_rows", p[:0], y[:0])
    put("masked", np.ma.masked_array(p, mask=np.zeros_like(p, dtype=bool)))
    put("label_high", labels=np.where(np.arange(300) == 17, 4, y))
    put("label_negative", labels=np.where(np.arange(300) == 17, -1, y))
    put("label_fraction", labels=y + 0.5)
    put("label_nan", labels=np.where(np.arange(300) == 3, np.nan, y))
    put("label_bool", labels=y > 1)
    put("label_length", labels=y[:-1])
    put("label_2d", labels=np.stack([y, y], 1))
    q = p.copy(); q[9, 0] = np.nan; put("both_bad", q, np.where(np.arange(300) == 17, 9, y))
    q = p.copy(); q[9, 0] = -1.0; put("negative_and_label", q, y - 5)
    return cases


_MESSAGES = {
    "nan": (ValueError, r"Expected finite probs, got NaN/inf entries \(first rows: \[123\]\)"),
    "inf": (ValueError, r"Expected finite probs, got NaN/inf entries \(first rows: \[299\]\)"),
    "negative": (ValueError, r"Expected probs in \[0, 1\], got a minimum of"),
    "sum": (ValueError, r"Expected rows of probs summing to 1 \(tolerance 0\.0001\), got row 7 summing to"),
    "sum_first_row": (ValueError, r"got row 0 summing to 2"),
    "int_probs": None,
    "bool_probs": (TypeError, r"Expected probs with a real floating dtype, got dtype bool"),
    "complex_probs": (TypeError, r"Expected probs with a real floating dtype, got dtype complex64"),
    "object_probs": (TypeError, r"Expected probs with a real floating dtype, got dtype object"),
    "float16_probs": (ValueError, r"Expected rows of probs summing to 1"),  # float16 rounding, promoted as before
    "one_d": (ValueError, r"Expected probs of shape \(n_samples, n_classes\), got a 1-D array"),
    "one_class": (ValueError, r"Expected probs with at least 2 classes"),
    "no_rows": (ValueError, r"Expected probs with at least one row"),
    "masked": (TypeError, r"Expected probs as a plain array, got a masked array"),
    "label_high": (ValueError, r"Expected labels in \[0, 3\] for 4 classes, got maximum 4\."),
    "label_negative": (ValueError, r"Expected labels >= 0, got minimum -1\."),
    "label_fraction": (ValueError, r"Expected integer class labels, got 300 values with a fractional part"),
    "label_nan": (ValueError, r"Expected integer class labels, got NaN or inf"),
    "label_bool": (TypeError, r"Expected integer class labels, got dtype bool"),
    "label_length": (ValueError, r"Expected labels of length 300 \(one per row of logits\), got length 299"),
    "label_2d": (ValueError, r"Expected labels of shape \(n_samples,\)"),
    "both_bad": (ValueError, r"Expected finite probs"),  # probs are checked first, as before
    "negative_and_label": (ValueError, r"Expected probs in \[0, 1\]"),
}


@pytest.mark.parametrize("case", sorted(_MESSAGES))
def test_fit_rejects_bad_inputs_with_the_same_message(plain, case):
    probs, labels = _bad_cases()[case]
    expected = _MESSAGES[case]

    def attempt():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SetSizeWarning)
                cp = SplitConformal(score="lac", alpha=0.1).fit(probs, labels)
        except (TypeError, ValueError) as err:
            return type(err), str(err)
        return None, cp.qhat_

    fast = attempt()
    with plain():
        slow = attempt()
    assert fast == slow
    if expected is None:  # accepted as before (integers are promoted to float32)
        assert fast[0] is None
        arr = np.asarray(probs).astype(np.float32)
        assert fast[1] == ref_lac(arr, labels, arr, 0.1)[0]
    else:
        assert fast[0] is expected[0]
        assert __import__("re").search(expected[1], fast[1]), fast[1]


@pytest.mark.parametrize("case, exc, match", [
    ("nan", ValueError, r"Expected finite probs, got NaN/inf entries \(first rows: \[123\]\)"),
    ("negative", ValueError, r"Expected probs in \[0, 1\], got a minimum of"),
    ("sum", ValueError, r"got row 7 summing to"),
    ("complex_probs", TypeError, r"real floating dtype, got dtype complex64"),
    ("one_d", ValueError, r"got a 1-D array"),
])
def test_predict_rejects_bad_inputs_with_the_same_message(case, exc, match):
    p, y = _probs(300, 4, seed=9)
    cp = SplitConformal(score="lac", alpha=0.1).fit(p, y)
    probs, _ = _bad_cases()[case]
    with pytest.raises(exc, match=match) as fast:
        cp.predict_set(probs)
    with pytest.raises(exc) as slow:
        _plain_sets(cp, probs)
    assert str(fast.value) == str(slow.value)
    with pytest.raises(ValueError, match=r"Expected probs with 4 classes \(as at fit\), got 5 columns"):
        cp.predict_set(np.full((3, 5), 0.2))


def test_bad_chunk_on_worker_thread_is_found(monkeypatch):
    """A NaN in the last chunk of the last worker's span, and a label pointing at it, with 3 threads."""
    monkeypatch.setattr(V, "_ELEMENTS_PER_THREAD", 1000)
    monkeypatch.setattr(chunking, "CACHE", 11 * 4 * 4)
    monkeypatch.setenv("CALIB_NUM_THREADS", "3")
    p, y = _probs(2000, 4, seed=4)
    p[1999, y[1999]] = np.nan
    with pytest.raises(ValueError, match=r"Expected finite probs, got NaN/inf entries \(first rows: \[1999\]\)"):
        SplitConformal(score="lac", alpha=0.1).fit(p, y)


def test_valid_lac_fit_reads_through_the_fused_pass(monkeypatch):
    """The fused pass is what runs on valid float32/float64 inputs (the plain path's checks are not called)."""
    def boom(self, probs, labels):
        raise AssertionError("plain LAC fit used")

    monkeypatch.setattr(SplitConformal, "_check_fit_inputs", boom)
    for dtype in (np.float32, np.float64):
        p, y = _probs(400, 3, seed=8, dtype=dtype)
        assert SplitConformal(score="lac", alpha=0.1).fit(p, y).qhat_ == ref_lac(p, y, p, 0.1)[0]
