"""calib.shift.monitor: label-free accuracy estimates, drift tests, conformal novelty p-values and BH.

Real logits: the embedded ``c10lt_resnet110`` (split 0 = 10,216 long-tailed validation rows, split 1 = the
10,000 balanced CIFAR-10 test rows). Every statistical assertion is an exact binomial test with a fixed seed
(:mod:`calib.stats`) or a bound from the distribution; references are brute-force loops written here or
scipy / statsmodels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from calib.calibrators import TemperatureScaling
from calib.datasets import load
from calib.shift.monitor import (
    MIN_ROWS_FOR_INTERVAL,
    benjamini_hochberg,
    drift_tests,
    estimate_accuracy,
    flagged_by_class,
    novelty_pvalues,
)
from calib.stats import binom_greater_pvalue, binom_less_pvalue


@pytest.fixture(scope="module")
def c10lt():
    """Logits, labels and split of c10lt_resnet110, with probabilities from temperature scaling fitted on split 0."""
    d = load("c10lt_resnet110")
    cal = d.split == 0
    ts = TemperatureScaling().fit(d.logits[cal], d.labels[cal])
    return d.logits, d.labels, d.split, ts.predict_proba(d.logits)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- estimate_accuracy


def test_atc_threshold_and_estimate_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    p = _softmax(rng.normal(0, 2, size=(300, 4)))
    y = np.where(rng.random(300) < 0.7, p.argmax(1), rng.integers(0, 4, 300))
    pt = _softmax(rng.normal(0, 1.5, size=(200, 4)))
    for score, f in (("max_prob", lambda q: q.max(1)), ("neg_entropy", lambda q: (q * np.log(q)).sum(1))):
        e = estimate_accuracy(p, y, pt, score=score, n_bootstrap=0)
        s, n_correct = f(p), int((p.argmax(1) == y).sum())
        # brute force: the candidate thresholds are the calibration scores; keep the one leaving n_correct above
        hits = [t for t in s if sum(1 for v in s if v > t) == n_correct]
        assert len(hits) == 1 and e.threshold == pytest.approx(hits[0], rel=1e-12)
        assert e.estimate == sum(1 for v in f(pt) if v > hits[0]) / len(pt)
        assert e.calibration_accuracy == n_correct / 300 and math.isnan(e.low) and "n_bootstrap=0" in e.notes[0]
    avg = estimate_accuracy(p, y, pt, method="average_confidence", n_bootstrap=0)
    assert avg.estimate == pytest.approx(float(np.mean(pt.max(1))), rel=1e-12) and math.isnan(avg.threshold)


def test_bootstrap_is_seeded_and_brackets_the_estimate(c10lt):
    _, y, split, p = c10lt
    c, t = split == 0, split == 1
    a = estimate_accuracy(p[c], y[c], p[t], seed=3)
    b = estimate_accuracy(p[c], y[c], p[t], seed=3)
    assert a == b and a.low <= a.estimate <= a.high and a.n_bootstrap == 200
    w = estimate_accuracy(p[c], y[c], p[t][:200], seed=3)  # a smaller target batch: a wider interval
    assert w.high - w.low > a.high - a.low


def test_atc_interval_covers_the_target_accuracy_without_shift(c10lt):
    """No shift: calibration (5,000) and target (1,000) rows drawn from the same pool (split 1). The interval is
    for the accuracy of the distribution the batch comes from (here the pool's); over 200 seeded resamples the
    number of intervals covering it must not be significantly below 95% (exact binomial, level 1e-3)."""
    _, y, split, p = c10lt
    p, y = p[split == 1], y[split == 1]
    pool_acc = float(np.mean(p.argmax(1) == y))
    rng = np.random.default_rng(0)
    covered = 0
    for r in range(200):
        perm = rng.permutation(len(y))
        ci, ti = perm[:5000], perm[5000:6000]
        e = estimate_accuracy(p[ci], y[ci], p[ti], seed=r)
        covered += e.low <= pool_acc <= e.high
    assert binom_less_pvalue(covered, 200, 0.95) > 1e-3, covered


def test_atc_beats_average_confidence_under_a_known_label_shift(c10lt):
    """Calibration: 5,000 random balanced rows of split 1 (temperature fitted on them); target: 1,000 rows of the
    rest subsampled to the reversed long-tailed prior (class 9 most frequent). ATC is closer to the true target
    accuracy than average confidence in more resamples than a coin would give (one-sided sign test, p < 0.01;
    measured 44 of 60)."""
    z, y, split, _ = c10lt
    prior = np.bincount(y[split == 0], minlength=10)[::-1] / np.sum(split == 0)
    counts = np.round(prior * 1000).astype(int)
    z, y = z[split == 1], y[split == 1]
    rng = np.random.default_rng(0)
    closer, reps = 0, 60
    for _ in range(reps):
        perm = rng.permutation(len(y))
        ci, rest = perm[:5000], perm[5000:]
        ts = TemperatureScaling().fit(z[ci], y[ci])
        ti = np.concatenate([rng.choice(rest[y[rest] == j], counts[j], replace=False) for j in range(10)])
        pc, pt = ts.predict_proba(z[ci]), ts.predict_proba(z[ti])
        true = float(np.mean(pt.argmax(1) == y[ti]))
        atc = estimate_accuracy(pc, y[ci], pt, n_bootstrap=0).estimate
        avg = estimate_accuracy(pc, y[ci], pt, method="average_confidence", n_bootstrap=0).estimate
        closer += abs(atc - true) < abs(avg - true)
    assert binom_greater_pvalue(closer, reps, 0.5) < 0.01, closer


def test_real_long_tailed_to_balanced_shift_bias_exceeds_the_interval(c10lt):
    """The documented caveat, on the real shift (split 0 -> split 1): both estimates over-state the balanced test
    accuracy (0.760) by more than their sampling interval (measured: average confidence 0.818 [0.814, 0.822],
    ATC 0.809 [0.800, 0.820]); the interval is sampling noise only."""
    _, y, split, p = c10lt
    c, t = split == 0, split == 1
    true = float(np.mean(p[t].argmax(1) == y[t]))
    for method in ("average_confidence", "atc"):
        e = estimate_accuracy(p[c], y[c], p[t], method=method)
        assert e.low > true, (method, e, true)


def test_estimate_accuracy_bad_inputs(c10lt):
    _, y, split, p = c10lt
    c = split == 0
    with pytest.raises(ValueError, match="target_probs with 10 classes"):
        estimate_accuracy(p[c], y[c], np.full((5, 3), 1 / 3))
    with pytest.raises(ValueError, match="labels of length"):
        estimate_accuracy(p[c], y[c][:-1], p[:5])
    with pytest.raises(ValueError, match="method"):
        estimate_accuracy(p[c], y[c], p[:5], method="doc")
    with pytest.raises(ValueError, match="score"):
        estimate_accuracy(p[c], y[c], p[:5], score="margin")
    with pytest.raises(ValueError, match="n_bootstrap"):
        estimate_accuracy(p[c], y[c], p[:5], n_bootstrap=-1)
    with pytest.raises(ValueError, match="target_probs with at least one row"):
        estimate_accuracy(p[c], y[c], p[:0])
    tiny = estimate_accuracy(p[c], y[c], p[:MIN_ROWS_FOR_INTERVAL - 1])  # too few target rows: NaN bounds + note
    assert 0 <= tiny.estimate <= 1 and math.isnan(tiny.low) and math.isnan(tiny.high)
    assert any("without an interval" in n for n in tiny.notes)


# ---------------------------------------------------------------- drift_tests


def test_drift_tests_are_calibrated_on_random_halves_and_fire_on_the_real_shift(c10lt):
    _, _, split, p = c10lt
    pc = p[split == 0]
    rng = np.random.default_rng(0)
    pvals = {"ks_confidence": [], "chi2_predicted_class": []}
    for _ in range(100):
        perm = rng.permutation(len(pc))
        for row in drift_tests(pc[perm[:5108]], pc[perm[5108:]]):
            pvals[row["test"]].append(row["p_value"])
    for name, ps in pvals.items():  # no shift: P(p < 0.05) <= 0.05, exact binomial at 1e-3
        assert binom_greater_pvalue(int(np.sum(np.array(ps) < 0.05)), 100, 0.05) > 1e-3, name
    rows = {r["test"]: r for r in drift_tests(pc, p[split == 1])}
    assert rows["chi2_predicted_class"]["p_value"] < 1e-100 and rows["chi2_predicted_class"]["drift"]
    assert rows["ks_confidence"]["p_value"] < 0.05 and rows["ks_confidence"]["drift"]  # measured 0.0033
    assert all(r["p_holm"] >= r["p_value"] and isinstance(r["what"], str) for r in rows.values())


def test_drift_tests_agree_with_scipy_and_the_exact_conditional_test():
    from scipy.stats import chi2_contingency, hypergeom, ks_2samp

    rng = np.random.default_rng(1)
    pa, pb = _softmax(rng.normal(0, 2, (400, 3))), _softmax(rng.normal(0.3, 2, (300, 3)))
    rows = {r["test"]: r for r in drift_tests(pa, pb)}
    ks = ks_2samp(pa.max(1), pb.max(1))
    assert rows["ks_confidence"]["p_value"] == pytest.approx(ks.pvalue, rel=1e-12)
    table = np.stack([np.bincount(pa.argmax(1), minlength=3), np.bincount(pb.argmax(1), minlength=3)])
    ref = chi2_contingency(table, correction=False)
    assert rows["chi2_predicted_class"]["statistic"] == pytest.approx(ref.statistic, rel=1e-10)
    assert rows["chi2_predicted_class"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-8)

    # small counts: the Monte Carlo p-value against the exact conditional one (2 classes: hypergeometric law)
    qa = np.array([[0.9, 0.1]] * 14 + [[0.2, 0.8]] * 1)
    qb = np.array([[0.9, 0.1]] * 3 + [[0.2, 0.8]] * 4)
    row = drift_tests(qa, qb, n_permutations=20000, seed=0)[1]
    assert "Monte Carlo" in row["what"]
    total, pred1, m = 22, 5, 7  # 5 of 22 rows predict class 1; 7 rows are target
    law = hypergeom(total, pred1, m)
    x = np.arange(0, 6)

    def chi2_of(k1):
        t = np.array([[15 - (pred1 - k1), pred1 - k1], [m - k1, k1]], dtype=float)
        e = t.sum(1, keepdims=True) * t.sum(0) / t.sum()
        return ((t - e) ** 2 / e).sum()

    observed = chi2_of(4)
    exact = sum(law.pmf(k) for k in x if chi2_of(k) >= observed - 1e-12)
    assert row["statistic"] == pytest.approx(observed, rel=1e-12)
    # Monte Carlo count ~ Binomial(20000, exact): a 99.9% two-sided band
    from calib.stats import clopper_pearson
    lo, hi = clopper_pearson(round(row["p_value"] * 20001) - 1, 20000, level=0.999)
    assert lo <= exact <= hi, (row["p_value"], exact)


def test_drift_tests_bad_inputs():
    p = np.full((10, 3), 1 / 3)
    with pytest.raises(ValueError, match="target_probs with 3 classes"):
        drift_tests(p, np.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="alpha"):
        drift_tests(p, p, alpha=1.5)
    one = drift_tests(np.array([[0.9, 0.1]] * 5), np.array([[0.8, 0.2]] * 5))[1]
    assert one["p_value"] == 1.0 and not one["drift"] and "one class" in one["what"]


# ---------------------------------------------------------------- novelty p-values and BH


@pytest.mark.parametrize("score", ["max_logit", "energy"])
def test_novelty_pvalues_match_a_brute_force_loop(score):
    rng = np.random.default_rng(2)
    zc = np.round(rng.normal(0, 1, (40, 3)), 1)  # rounded: ties between calibration and target scores
    zt = np.vstack([zc[:5], np.round(rng.normal(0, 1.5, (25, 3)), 1)])
    f = (lambda z: -z.max(1)) if score == "max_logit" else (lambda z: -np.log(np.exp(z).sum(1)))
    sc, st = f(zc), f(zt)
    brute = [(1 + sum(1 for s in sc if s >= t - 1e-12)) / 41 for t in st]
    assert np.allclose(novelty_pvalues(zc, zt, score=score), brute, rtol=0, atol=1e-15)


def test_knn_novelty_pvalues_match_a_brute_force_loop():
    rng = np.random.default_rng(3)
    zc, zt = rng.normal(0, 1, (30, 4)), rng.normal(0.5, 1, (12, 4))
    perm = np.random.default_rng(7).permutation(30)  # the documented split: default_rng(seed).permutation(n)
    ref, cal = zc[perm[:15]], zc[perm[15:]]

    def kth(x):
        return sorted(math.dist(x, r) for r in ref)[2]

    sc = [kth(x) for x in cal]
    brute = [(1 + sum(1 for s in sc if s >= kth(x))) / 16 for x in zt]
    got = novelty_pvalues(zc, zt, score="knn", n_neighbors=3, seed=7)
    assert np.allclose(got, brute, rtol=0, atol=1e-12)


def test_novelty_pvalues_are_super_uniform_for_inliers(c10lt):
    """One inlier target item per resample, 199 calibration rows from the same pool: P(p <= 0.1) = 20/200 exactly
    for tie-free scores. Exact binomial over 400 resamples, level 1e-3, both directions for energy."""
    z, _, split, _ = c10lt
    z = z[split == 1]
    rng = np.random.default_rng(4)
    small = {"energy": 0, "knn": 0}
    for _ in range(400):
        idx = rng.choice(len(z), 200, replace=False)
        small["energy"] += novelty_pvalues(z[idx[:199]], z[idx[199:]], score="energy")[0] <= 0.1
        small["knn"] += novelty_pvalues(z[idx[:199]], z[idx[199:]], score="knn", reference_fraction=0.4975)[0] <= 0.1
    assert binom_greater_pvalue(small["energy"], 400, 0.1) > 1e-3
    assert binom_less_pvalue(small["energy"], 400, 0.1) > 1e-3
    assert binom_greater_pvalue(small["knn"], 400, 0.1) > 1e-3  # 100 scoring rows: P(p <= 0.1) = 10/101


def _bh_brute(p, q):
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    r = 0
    for rank in range(m, 0, -1):
        if p[order[rank - 1]] <= rank * q / m:
            r = rank
            break
    out = [False] * m
    for i in order[:r]:
        out[i] = True
    return out


def test_benjamini_hochberg_matches_a_brute_force_step_up():
    rng = np.random.default_rng(5)
    for trial in range(200):
        m = int(rng.integers(1, 40))
        p = np.round(rng.beta(0.4, 2.0, m), 3)  # ties and small values
        q = float(rng.choice([0.01, 0.05, 0.1, 0.3]))
        assert benjamini_hochberg(p, q).tolist() == _bh_brute(list(p), q), (trial, p, q)
    assert benjamini_hochberg(np.array([]), 0.1).shape == (0,)


def test_benjamini_hochberg_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(6)
    p = rng.beta(0.3, 1.5, 500)
    assert np.array_equal(benjamini_hochberg(p, 0.1), multitest.multipletests(p, alpha=0.1, method="fdr_bh")[0])


def test_benjamini_hochberg_and_novelty_bad_inputs():
    with pytest.raises(ValueError, match="pvalues in \\[0, 1\\]"):
        benjamini_hochberg([0.1, 1.2], 0.1)
    with pytest.raises(ValueError, match="pvalues in \\[0, 1\\]"):
        benjamini_hochberg([0.1, np.nan], 0.1)
    with pytest.raises(ValueError, match="shape \\(m,\\)"):
        benjamini_hochberg(np.zeros((2, 2)), 0.1)
    with pytest.raises(ValueError, match="fdr"):
        benjamini_hochberg([0.1], 0.0)
    z = np.zeros((10, 3))
    with pytest.raises(ValueError, match="target_logits with 3 classes"):
        novelty_pvalues(z, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="score"):
        novelty_pvalues(z, z, score="mahalanobis")
    with pytest.raises(ValueError, match="n_neighbors=10"):
        novelty_pvalues(z, z, score="knn")
    with pytest.raises(ValueError, match="flags of shape"):
        flagged_by_class([True], np.full((2, 2), 0.5))


def _held_out_resample(z, y, rng, held=(7, 8, 9), n_novel=390):
    """Kept classes: rows split at random into calibration and target halves (exchangeable inliers); held-out
    classes: ``n_novel`` rows in the target only (a proxy for categories never calibrated)."""
    held_mask = np.isin(y, held)
    kept, novel = np.flatnonzero(~held_mask), np.flatnonzero(held_mask)
    perm = rng.permutation(kept)
    cal, tgt_in = perm[: len(kept) // 2], perm[len(kept) // 2:]
    tgt = np.concatenate([tgt_in, rng.choice(novel, n_novel, replace=False)])
    is_novel = np.r_[np.zeros(len(tgt_in), bool), np.ones(n_novel, bool)]
    return cal, tgt, is_novel


def test_held_out_classes_are_flagged_by_knn(c10lt):
    """One resample on split 1 (classes 7, 8, 9 absent from calibration; a proxy for new categories, not the real
    thing). kNN flags a larger share of held-out items than of the rest (one-sided Fisher exact, p < 1e-10).
    (energy and max_logit flag nothing here: the model was trained on those classes; bench/shift_monitor.py.)"""
    from scipy.stats import fisher_exact

    z, y, split, p = c10lt
    z, y = z[split == 1], y[split == 1]
    cal, tgt, is_novel = _held_out_resample(z, y, np.random.default_rng(0))
    flags = benjamini_hochberg(novelty_pvalues(z[cal], z[tgt], score="knn"), 0.1)
    table = [[flags[is_novel].sum(), (~flags[is_novel]).sum()], [flags[~is_novel].sum(), (~flags[~is_novel]).sum()]]
    assert fisher_exact(table, alternative="greater").pvalue < 1e-10, table
    fl, tot = flagged_by_class(flags, p[split == 1][tgt])
    assert fl.sum() == flags.sum() and tot.sum() == len(tgt) and fl[[7, 8, 9]].sum() > fl.sum() / 2


@pytest.mark.slow
def test_held_out_class_fdr_is_controlled_over_resamples(c10lt):
    """200 resamples of the held-out-class proxy (kNN score, BH at fdr = 0.1). Conformal p-values are valid for
    the exchangeable inliers (kept-class rows split at random), so FDR <= 0.1 * m0 / m. Two checks:
    (1) one flagged item drawn at random per resample (none flagged: counts as no false discovery) is a false
    discovery with probability exactly FDR: its count is Binomial(200, FDR), exact test of FDR <= 0.1 at 1e-3;
    (2) the mean false discovery proportion (values in [0, 1]) <= 0.1 + sqrt(log(1000) / 400) (Hoeffding, 1e-3)."""
    z, y, split, _ = c10lt
    z, y = z[split == 1], y[split == 1]
    rng = np.random.default_rng(1)
    reps, draws, fdp, share_novel, share_rest = 200, 0, [], [], []
    for _ in range(reps):
        cal, tgt, is_novel = _held_out_resample(z, y, rng)
        flags = benjamini_hochberg(novelty_pvalues(z[cal], z[tgt], score="knn", seed=int(rng.integers(2**31))), 0.1)
        fdp.append((flags & ~is_novel).sum() / max(int(flags.sum()), 1))
        share_novel.append(flags[is_novel].mean())
        share_rest.append(flags[~is_novel].mean())
        if flags.any():
            draws += not is_novel[rng.choice(np.flatnonzero(flags))]
    assert binom_greater_pvalue(draws, reps, 0.1) > 1e-3, draws
    assert np.mean(fdp) <= 0.1 + math.sqrt(math.log(1000) / (2 * reps)), np.mean(fdp)
    assert np.mean(share_novel) > np.mean(share_rest)
