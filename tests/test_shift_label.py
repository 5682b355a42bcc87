"""calib.shift.label_shift: EM (Saerens et al. 2002) and BBSE (Lipton et al. 2018) label-shift estimation,
bootstrap intervals, prior-corrected probabilities, bad inputs.

Real data: the embedded ``c10lt_resnet110`` (part of the package, never absent): split 0 = 10,216 long-tailed
validation rows (calibration, the source), split 1 = the balanced CIFAR-10 test rows (a real label shift to a
uniform prior), temperature scaling fitted on split 0. Synthetic shifts subsample split 1 (with replacement
within each class, so the target rows are i.i.d. with ``q(x | y)`` = the test pool's) to priors drawn from
Dirichlet(1, ..., 1) with fixed seeds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from calib.base import ConvergenceWarning
from calib.calibrators import TemperatureScaling
from calib.datasets import load
from calib.shift.label_shift import (
    MIN_TARGET_ROWS,
    LabelShiftEstimate,
    adjust_probs,
    estimate_label_shift,
)
from calib.stats import binom_greater_pvalue, binom_less_pvalue

K = 10


@pytest.fixture(scope="module")
def real():
    d = load("c10lt_resnet110")
    s0, s1 = d.split == 0, d.split == 1
    ts = TemperatureScaling().fit(d.logits[s0], d.labels[s0])
    return {"pc": ts.predict_proba(d.logits[s0]), "yc": d.labels[s0], "pt": ts.predict_proba(d.logits[s1]),
            "yt": d.labels[s1]}


def _tv(a, b):
    return 0.5 * float(np.abs(np.asarray(a, float) - np.asarray(b, float)).sum())


def _shifted(real, seed, n):
    """A target of n rows with prior q ~ Dirichlet(1); q is drawn from the seed alone (the same q for every n)."""
    q = np.random.default_rng([seed, 7]).dirichlet(np.ones(K))
    rng = np.random.default_rng([seed, 8, n])
    counts = rng.multinomial(n, q)
    idx = np.concatenate([rng.choice(np.flatnonzero(real["yt"] == j), size=c) for j, c in enumerate(counts)])
    return q, real["pt"][idx]


def _em_reference(p, source, weights=None, tol=1e-13):
    """An independent EM: plain loop, row weights (population limit) allowed."""
    p = np.asarray(p, dtype=np.float64)
    w = np.full(len(p), 1.0 / len(p)) if weights is None else weights / weights.sum()
    pi = source.copy()
    for _ in range(20000):
        a = p * (pi / source)
        a /= a.sum(axis=1, keepdims=True)
        new = w @ a
        if np.abs(new - pi).max() < tol:
            return new
        pi = new
    raise AssertionError("reference EM did not converge")


# ---------------------------------------------------------------- the real shift

@pytest.mark.parametrize("method", ["em", "bbse"])
def test_real_shift_estimate_closes_most_of_the_prior_gap(real, method):
    """Long-tailed calibration -> balanced test. Claim (fixed before measuring): the estimate removes at least two
    thirds of the total-variation gap between the source prior and the true test prior. Sampling noise alone
    cannot explain a pass: with 10,000 target rows the per-class standard error is ~0.003 (TV noise ~0.01),
    while the gap is 0.29."""
    truth = np.bincount(real["yt"], minlength=K) / len(real["yt"])
    est = estimate_label_shift(real["pc"], real["yc"], real["pt"], method=method, n_bootstrap=0)
    gap = _tv(est.source_prior, truth)
    assert gap > 0.25  # the shift is real: ~2,500 rows of class 0 down to ~260 of class 9 vs 1,000 each
    assert est.total_variation(truth) <= gap / 3, (est.total_variation(truth), gap)
    np.testing.assert_allclose(est.weights, est.target_prior / est.source_prior, rtol=1e-12)
    assert est.n_calibration == len(real["yc"]) and est.n_target == len(real["yt"])
    assert est.target_prior.sum() == pytest.approx(1.0, abs=1e-12) and (est.target_prior >= 0).all()


# ---------------------------------------------------------------- independent cross-checks

@pytest.mark.parametrize("soft", [False, True])
def test_bbse_weights_equal_an_independent_solve(real, soft):
    pc, yc, pt = (np.asarray(real[k_], dtype=np.float64) if k_ != "yc" else real[k_] for k_ in ("pc", "yc", "pt"))
    n = len(yc)
    c = np.zeros((K, K))
    if soft:  # C[i, j] = mean over rows of p_i(x) 1{y = j}
        onehot = np.eye(K)[yc]
        c = (pc.T @ onehot) / n
        mu = pt.mean(axis=0)
    else:
        np.add.at(c, (pc.argmax(axis=1), yc), 1.0)
        c /= n
        mu = np.bincount(pt.argmax(axis=1), minlength=K) / len(pt)
    w = np.linalg.solve(c, mu)
    assert (w > 0).all()  # no clipping on this data, so the estimate is the plain solve
    est = estimate_label_shift(real["pc"], real["yc"], real["pt"], method="bbse", soft=soft, n_bootstrap=0)
    # float32 rows sum to 1 within ~1e-7, so the soft matrix's column sums match the label frequencies to ~1e-8
    np.testing.assert_allclose(est.weights, w, rtol=1e-12 if not soft else 1e-7)
    np.testing.assert_allclose(est.source_prior, np.bincount(yc, minlength=K) / n, rtol=1e-15)
    np.testing.assert_allclose(c.sum(axis=0), est.source_prior, rtol=1e-12 if not soft else 1e-7)
    assert est.condition_number == pytest.approx(np.linalg.cond(c), rel=1e-9)
    assert est.notes == ()


def test_em_is_the_fixed_point_and_the_likelihood_maximum(real):
    from scipy.optimize import minimize

    pt = np.asarray(real["pt"][::5], dtype=np.float64)
    est = estimate_label_shift(real["pc"], real["yc"], pt, method="em", n_bootstrap=0, tol=1e-12)
    assert est.converged and 1 < est.n_iter < 10_000
    src = np.bincount(real["yc"], minlength=K) / len(real["yc"])
    np.testing.assert_array_equal(est.source_prior, src)
    pi = est.target_prior
    a = pt * (pi / src)
    a /= a.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(a.mean(axis=0), pi, rtol=0, atol=1e-8)  # pi = mean_i p'(y | x_i)

    def nll(theta):  # the target log-likelihood of a prior, softmax-parameterised
        q = np.exp(theta - theta.max())
        q /= q.sum()
        return -np.log(pt @ (q / src)).mean()

    ref = minimize(nll, np.log(src), method="BFGS", options={"gtol": 1e-10})
    q = np.exp(ref.x - ref.x.max())
    q /= q.sum()
    np.testing.assert_allclose(pi, q, atol=1e-5)
    assert nll(np.log(pi)) <= ref.fun + 1e-12


def test_adjust_probs_is_bayes_rule_by_hand():
    out = adjust_probs(np.array([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]]), np.array([2.0, 1.0, 0.5]))
    # row 0: (0.4, 0.3, 0.25) / 0.95 = (8, 6, 5) / 19; row 1: (1.0, 0.5, 0) / 1.5
    np.testing.assert_allclose(out, [[8 / 19, 6 / 19, 5 / 19], [2 / 3, 1 / 3, 0.0]], rtol=1e-15)


def test_adjust_probs_on_real_data(real):
    truth = np.bincount(real["yt"], minlength=K) / len(real["yt"])
    src = np.bincount(real["yc"], minlength=K) / len(real["yc"])
    est = estimate_label_shift(real["pc"], real["yc"], real["pt"], n_bootstrap=0)
    out = adjust_probs(real["pt"], est)  # the estimate itself is accepted
    assert out.dtype == real["pt"].dtype == np.float32 and out.shape == real["pt"].shape
    np.testing.assert_allclose(out.sum(axis=1, dtype=np.float64), 1.0, atol=1e-6)
    np.testing.assert_array_equal(out, adjust_probs(real["pt"], est.weights))
    # the oracle correction (true weights) is Bayes' rule for the balanced test: it must not worsen the NLL
    idx = np.arange(len(real["yt"]))
    nll = lambda p: -np.log(np.maximum(p[idx, real["yt"]].astype(np.float64), 1e-300)).mean()
    assert nll(adjust_probs(real["pt"], truth / src)) < nll(real["pt"])


# ---------------------------------------------------------------- synthetic shifts

@pytest.mark.parametrize("method", ["em", "bbse"])
def test_error_shrinks_with_n(real, method):
    """30 seeds, one Dirichlet prior per seed, n = 500 vs 5000 on the same prior. Sign test: H0 "the error at
    n=500 is no larger than at n=5000" (P(TV_500 > TV_5000) <= 1/2) rejected at 0.001."""
    larger, tv500, tv5000 = 0, [], []
    for seed in range(30):
        q, small = _shifted(real, seed, 500)
        _, big = _shifted(real, seed, 5000)
        a = estimate_label_shift(real["pc"], real["yc"], small, method=method, n_bootstrap=0).total_variation(q)
        b = estimate_label_shift(real["pc"], real["yc"], big, method=method, n_bootstrap=0).total_variation(q)
        larger += a > b
        tv500.append(a)
        tv5000.append(b)
    assert np.mean(tv500) > np.mean(tv5000)
    assert binom_greater_pvalue(int(larger), 30, 0.5) < 0.001, (larger, np.mean(tv500), np.mean(tv5000))


@pytest.mark.parametrize("method", ["em", "bbse"])
def test_bootstrap_interval_covers_its_estimand(real, method):
    """Nominal 95 % per-class intervals, 15 seeds x 10 classes at n = 1000. The estimand is the estimator's
    population limit: for BBSE the true prior q (BBSE is consistent under label shift without calibration; its
    small bias here — validation and test rows are not exactly alike given the class — shows only at n = 5000 in
    bench/shift_label.py, at n = 1000 sampling noise dominates); for EM the EM fixed point on
    the whole test pool weighted to q (computed by an independent EM here) — EM's distance from q is the bias of
    a model that is not class-wise calibrated on the target, which no bootstrap can see (measured and printed by
    bench/shift_label.py). Claim: coverage >= 0.90; fails only if Binomial(150, 0.90) makes the count below
    p = 0.001 (classes of one seed share a target sample, so the binomial law is an approximation)."""
    src = np.bincount(real["yc"], minlength=K) / len(real["yc"])
    yt = real["yt"]
    covered, total = 0, 0
    for seed in range(15):
        q, target = _shifted(real, seed, 1000)
        if method == "em":
            estimand = _em_reference(real["pt"], src, weights=q[yt] / np.bincount(yt, minlength=K)[yt])
        else:
            estimand = q
        est = estimate_label_shift(real["pc"], real["yc"], target, method=method, seed=seed, n_bootstrap=200)
        assert est.n_bootstrap == 200 and np.isfinite(est.prior_low).all()
        assert (est.prior_low <= est.prior_high).all() and (est.weights_low <= est.weights_high).all()
        covered += int(((est.prior_low <= estimand) & (estimand <= est.prior_high)).sum())
        total += K
    assert binom_less_pvalue(covered, total, 0.90) > 0.001, (covered, total)


def test_bootstrap_is_seeded_and_skippable(real):
    pt = real["pt"][:2000]
    a = estimate_label_shift(real["pc"], real["yc"], pt, seed=3, n_bootstrap=50)
    b = estimate_label_shift(real["pc"], real["yc"], pt, seed=3, n_bootstrap=50)
    c = estimate_label_shift(real["pc"], real["yc"], pt, seed=4, n_bootstrap=50)
    np.testing.assert_array_equal(a.prior_low, b.prior_low)
    np.testing.assert_array_equal(a.weights_high, b.weights_high)
    assert not np.array_equal(a.prior_low, c.prior_low)
    np.testing.assert_array_equal(a.target_prior, c.target_prior)  # the point estimate draws nothing
    z = estimate_label_shift(real["pc"], real["yc"], pt, n_bootstrap=0)
    assert z.n_bootstrap == 0
    for arr in (z.prior_low, z.prior_high, z.weights_low, z.weights_high):
        assert arr.shape == (K,) and np.isnan(arr).all()


def test_small_target_gives_wider_intervals(real):
    """n_target = 20 (the minimum) is accepted with a note, and its intervals are wider than at 2000 rows."""
    small = estimate_label_shift(real["pc"], real["yc"], real["pt"][:MIN_TARGET_ROWS], seed=0)
    big = estimate_label_shift(real["pc"], real["yc"], real["pt"][:2000], seed=0)
    assert any("n_target=20" in n for n in small.notes)
    assert (small.prior_high - small.prior_low).mean() > 3 * (big.prior_high - big.prior_low).mean()


# ---------------------------------------------------------------- BBSE failure modes

def _two_class(cells, target_pred):
    """Hard one-hot probabilities: ``cells[(yhat, y)]`` calibration rows of each kind; target rows predicted as
    listed."""
    yhat, y = [], []
    for (i, j), m in cells.items():
        yhat += [i] * m
        y += [j] * m
    k = 1 + max(max(yhat), max(y), max(target_pred))
    eye = np.eye(k)
    return eye[yhat], np.array(y), eye[np.asarray(target_pred)]


def test_bbse_negative_weights_are_clipped_and_named():
    # C = [[.4, .1], [.1, .4]], mu = [.95, .05]: w = (2.5, -0.5) by hand -> clipped to (2.5, 0) -> q = (1, 0)
    pc, yc, pt = _two_class({(0, 0): 40, (0, 1): 10, (1, 0): 10, (1, 1): 40}, [0] * 95 + [1] * 5)
    est = estimate_label_shift(pc, yc, pt, method="bbse", n_bootstrap=0)
    np.testing.assert_allclose(est.target_prior, [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(est.weights, [2.0, 0.0], atol=1e-12)
    assert any("negative" in n and "[1]" in n and "-0.5" in n for n in est.notes), est.notes


def test_bbse_singular_matrix_is_refused_or_falls_back_with_a_note():
    # class 2 is never predicted on the calibration rows: a zero row, rank 2 of 3
    cells = {(0, 0): 30, (1, 1): 30, (0, 2): 10, (1, 2): 10}
    pc, yc, pt = _two_class(cells, [0] * 20 + [1] * 10 + [2] * 5)
    with pytest.raises(ValueError, match=r"rank-deficient.*rank 2 of 3.*never predicted.*\[2\].*method='em'"):
        estimate_label_shift(pc, yc, pt, method="bbse", n_bootstrap=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback and its bootstrap (a class absent from some resamples) are clean
        est = estimate_label_shift(pc, yc, pt, method="bbse", n_bootstrap=100, on_singular="em")
    assert est.method == "em" and any("fell back to EM" in n for n in est.notes)
    assert np.isfinite(est.prior_low).all() and np.isfinite(est.prior_high).all()


def test_bbse_ill_conditioned_matrix_is_refused():
    """Soft BBSE on a model that barely tells two classes apart: C = 0.5 [[0.5 + d, 0.5], [0.5 - d, 0.5]] has
    det = d / 4 and condition number ~ 1/d = 1e8 > 1e6, at full rank."""
    d = 1e-8
    pc = np.array([[0.5 + d, 0.5 - d]] * 50 + [[0.5, 0.5]] * 50)
    yc = np.repeat([0, 1], 50)
    c = 0.5 * np.array([[0.5 + d, 0.5], [0.5 - d, 0.5]])
    assert np.linalg.matrix_rank(c) == 2 and np.linalg.cond(c) > 1e6
    with pytest.raises(ValueError, match=r"ill-conditioned \(rank 2 of 2, condition number [0-9.e+]+ > 1e\+06\)"):
        estimate_label_shift(pc, yc, pc[:40], method="bbse", soft=True, n_bootstrap=0)


# ---------------------------------------------------------------- EM stopping

def test_em_iteration_limit_warns_and_says_so(real):
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        est = estimate_label_shift(real["pc"], real["yc"], real["pt"], max_iter=1, n_bootstrap=0)
    assert not est.converged and est.n_iter == 1 and any("did not converge" in n for n in est.notes)


# ---------------------------------------------------------------- bad inputs

@pytest.fixture(scope="module")
def small(real):
    return real["pc"][:500], real["yc"][:500], real["pt"][:200]


def test_bad_inputs_name_the_argument(small):
    pc, yc, pt = small
    with pytest.raises(ValueError, match=r"target_probs with 10 classes \(as cal_probs\), got 9 columns"):
        estimate_label_shift(pc, yc, pt[:, :9])
    with pytest.raises(ValueError, match=r"cal_labels in \[0, 9\].*maximum 10"):
        estimate_label_shift(pc, np.where(np.arange(500) == 0, 10, yc), pt)
    with pytest.raises(ValueError, match=r"cal_labels of length 500"):
        estimate_label_shift(pc, yc[:-1], pt)
    with pytest.raises(ValueError, match=r"rows of target_probs summing to 1"):
        estimate_label_shift(pc, yc, pt * 2)
    with pytest.raises(ValueError, match=r"cal_probs in \[0, 1\]"):
        estimate_label_shift(pc - 0.5, yc, pt)
    with pytest.raises(ValueError, match=r"finite target_probs"):
        estimate_label_shift(pc, yc, np.where(np.arange(200)[:, None] == 3, np.nan, pt))
    with pytest.raises(ValueError, match=rf"at least {MIN_TARGET_ROWS} rows.*n_target=19"):
        estimate_label_shift(pc, yc, pt[:19])
    with pytest.raises(ValueError, match=r"Unknown method 'mle'"):
        estimate_label_shift(pc, yc, pt, method="mle")
    with pytest.raises(ValueError, match=r"Unknown on_singular"):
        estimate_label_shift(pc, yc, pt, on_singular="lstsq")
    with pytest.raises(ValueError, match=r"confidence in \(0, 1\)"):
        estimate_label_shift(pc, yc, pt, confidence=1.5)
    with pytest.raises(ValueError, match=r"n_bootstrap >= 0"):
        estimate_label_shift(pc, yc, pt, n_bootstrap=-1)
    with pytest.raises(TypeError, match=r"seed"):
        estimate_label_shift(pc, yc, pt, seed=1.5)
    with pytest.raises(ValueError, match=r"tol"):
        estimate_label_shift(pc, yc, pt, tol=0.0)
    with pytest.raises(TypeError, match=r"soft"):
        estimate_label_shift(pc, yc, pt, soft="yes")
    keep = yc != 9
    with pytest.raises(ValueError, match=r"every class in cal_labels.*\[9\]"):
        estimate_label_shift(pc[keep], yc[keep], pt)


def test_adjust_probs_bad_inputs(small):
    _, _, pt = small
    with pytest.raises(ValueError, match=r"weights of shape \(10,\).*got shape \(9,\)"):
        adjust_probs(pt, np.ones(9))
    with pytest.raises(ValueError, match=r"weights finite and >= 0"):
        adjust_probs(pt, np.r_[-1.0, np.ones(9)])
    with pytest.raises(ValueError, match=r"weights finite and >= 0"):
        adjust_probs(pt, np.r_[np.nan, np.ones(9)])
    with pytest.raises(ValueError, match=r"at least one entry > 0"):
        adjust_probs(pt, np.zeros(10))
    with pytest.raises(TypeError, match=r"weights as real numbers"):
        adjust_probs(pt, np.array(["a"] * 10))
    with pytest.raises(ValueError, match=r"rows of probs summing to 1"):
        adjust_probs(pt * 2, np.ones(10))
    with pytest.raises(ValueError, match=r"rows \[1\].*weight-0 classes \[0\].*0/0"):
        adjust_probs(np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([0.0, 1.0]))


def test_estimate_is_frozen(small):
    est = estimate_label_shift(*small, n_bootstrap=0)
    assert isinstance(est, LabelShiftEstimate) and est.n_classes == K
    with pytest.raises(AttributeError):
        est.method = "bbse"
