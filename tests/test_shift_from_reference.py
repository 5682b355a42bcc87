"""Monitoring from an artifact's reference statistics alone: ``reference=`` in estimate_label_shift,
estimate_accuracy, drift_tests and novelty_pvalues gives the numbers the calibration arrays give (exactly, or
within the sketch's stated resolution), and is refused where the reference lacks what a method needs."""

from __future__ import annotations

import numpy as np
import pytest

from calib.calibrators import TemperatureScaling
from calib.datasets import load, synthetic
from calib.shift import (ReferenceStats, drift_tests, estimate_accuracy, estimate_label_shift, novelty_pvalues)


@pytest.fixture(scope="module")
def shifted():
    """c10lt_resnet110: long-tailed split 0 (calibration) -> balanced split 1 (target), temperature-scaled."""
    d = load("c10lt_resnet110")
    c, t = d.split == 0, d.split == 1
    ts = TemperatureScaling().fit(d.logits[c], d.labels[c])
    pc, pt = ts.predict_proba(d.logits[c]), ts.predict_proba(d.logits[t][:3000])
    ref = ReferenceStats(sample_size=20_000).fit(d.logits[c], d.labels[c], probs=pc)  # 10,216 rows: every one kept
    assert ref.exact_
    return d.logits[c], d.labels[c], pc, d.logits[t][:3000], pt, ref


def _same_estimate(a, b):
    for f in ("target_prior", "weights", "prior_low", "prior_high", "weights_low", "weights_high",
              "source_prior"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert (a.method, a.converged, a.n_iter, a.notes, a.n_calibration) == \
        (b.method, b.converged, b.n_iter, b.notes, b.n_calibration)


@pytest.mark.parametrize("method", ["em", "bbse"])
def test_label_shift_from_reference_is_bit_identical(shifted, method):
    _, y, pc, _, pt, ref = shifted
    a = estimate_label_shift(pc, y, pt, method=method, n_bootstrap=100, seed=4)
    b = estimate_label_shift(target_probs=pt, reference=ref, method=method, n_bootstrap=100, seed=4)
    _same_estimate(a, b)
    if method == "bbse":
        assert a.condition_number == b.condition_number


def test_label_shift_from_a_sketch_reference_is_the_same(shifted):
    """The class counts and confusion matrix are exact whatever the sample size: a sketch changes nothing."""
    x, y, pc, _, pt, _ = shifted
    sketch = ReferenceStats(sample_size=100).fit(x, y, probs=pc)
    assert not sketch.exact_
    _same_estimate(estimate_label_shift(pc, y, pt, method="bbse", n_bootstrap=20),
                   estimate_label_shift(target_probs=pt, reference=sketch, method="bbse", n_bootstrap=20))


def test_atc_from_reference_equals_the_arrays_point_estimate(shifted):
    _, y, pc, _, pt, ref = shifted
    a = estimate_accuracy(pc, y, pt, n_bootstrap=0)
    b = estimate_accuracy(target_probs=pt, reference=ref, n_bootstrap=0)
    assert (a.estimate, a.threshold, a.calibration_accuracy, a.n_calibration) == \
        (b.estimate, b.threshold, b.calibration_accuracy, b.n_calibration)
    c = estimate_accuracy(pc, y, pt, method="average_confidence", n_bootstrap=0)
    d = estimate_accuracy(target_probs=pt, reference=ref, method="average_confidence", n_bootstrap=0)
    assert (c.estimate, c.calibration_accuracy) == (d.estimate, d.calibration_accuracy)


def test_atc_reference_bootstrap_equals_a_resample_expanded_row_by_row():
    """The reference bootstrap draws multinomial counts per stored point and reads the threshold off their
    cumulative sums; expanding the very same counts into rows, sorting and indexing must give the same
    thresholds (an independent route to each replicate), hence the same interval."""
    d = synthetic(n=400, n_classes=3, temperature=2.0, seed=5)
    p = TemperatureScaling().fit(d.logits, d.labels).predict_proba(d.logits)
    ref = ReferenceStats(sample_size=150).fit(d.logits, d.labels, probs=p)  # a sketch of 150 points
    t = synthetic(n=300, n_classes=3, temperature=1.0, seed=6)
    pt = TemperatureScaling().fit(t.logits, t.labels).predict_proba(t.logits)
    n_boot, seed = 50, 11
    got = estimate_accuracy(target_probs=pt, reference=ref, n_bootstrap=n_boot, seed=seed)

    rng = np.random.default_rng(seed)
    n, s = ref.n_calibration_, ref.confidence_.size
    counts = rng.multinomial(n, np.full(s, 1.0 / s), size=n_boot)
    tgt = np.sort(pt.max(axis=1).astype(np.float64))
    boot = []
    for row in counts:
        conf = np.repeat(ref.confidence_, row)
        ok = np.repeat(ref.confidence_correct_, row)
        c = int(ok.sum())
        thr = -np.inf if c == n else np.sort(conf)[n - c - 1]
        share = float(np.mean(tgt > thr))
        boot.append(share)
    # the target side draws Binomial(m, share) per replicate, after all the calibration draws of the block
    boot = rng.binomial(tgt.size, np.array(boot)) / tgt.size
    lo, hi = np.quantile(boot, [0.025, 0.975])
    assert (got.low, got.high) == (float(lo), float(hi))
    assert any("sketch" in note for note in got.notes)


def test_drift_tests_from_an_exact_reference_equal_the_arrays(shifted):
    _, _, pc, _, pt, ref = shifted
    a = drift_tests(pc, pt)
    b = drift_tests(target_probs=pt, reference=ref)
    assert [(r["test"], r["statistic"], r["p_value"]) for r in a] == \
        [(r["test"], r["statistic"], r["p_value"]) for r in b]


@pytest.mark.parametrize("score", ["energy", "max_logit"])
def test_novelty_from_an_exact_reference_equals_the_logits(shifted, score):
    x, _, _, zt, _, ref = shifted
    np.testing.assert_array_equal(novelty_pvalues(x, zt, score=score),
                                  novelty_pvalues(target_logits=zt, reference=ref, score=score))


def test_novelty_from_a_sketch_is_within_its_resolution(shifted):
    """A sketch of s inverted-CDF quantiles at (i + 0.5) / s counts the points below any value v as
    round(s F_n(v-)), within 1/2 of s F_n(v-); the p-values then differ from the exact ones by < 2 / s."""
    x, y, pc, zt, _, _ = shifted
    s = 200
    sketch = ReferenceStats(sample_size=s).fit(x, y, probs=pc)
    exact = novelty_pvalues(x, zt, score="energy")
    approx = novelty_pvalues(target_logits=zt, reference=sketch, score="energy")
    assert np.abs(exact - approx).max() < 2.0 / s


def test_reference_arguments_are_checked(shifted):
    x, y, pc, zt, pt, ref = shifted
    with pytest.raises(TypeError, match=r"either the calibration data \(cal_probs, cal_labels\) or reference=, got "
                                        r"both"):
        estimate_label_shift(pc, y, pt, reference=ref)
    with pytest.raises(TypeError, match=r"or reference=ReferenceStats .*got neither \(cal_labels missing\)"):
        estimate_label_shift(pc, None, pt)
    with pytest.raises(TypeError, match=r"reference as a fitted calib.shift.ReferenceStats, got dict"):
        estimate_accuracy(target_probs=pt, reference={"confusion": 1})
    with pytest.raises(Exception, match=r"not fitted|fit\("):
        drift_tests(target_probs=pt, reference=ReferenceStats())
    with pytest.raises(ValueError, match=r"soft=False with reference="):
        estimate_label_shift(target_probs=pt, reference=ref, method="bbse", soft=True)
    with pytest.raises(ValueError, match=r"score='max_prob' with reference="):
        estimate_accuracy(target_probs=pt, reference=ref, score="neg_entropy")
    with pytest.raises(ValueError, match=r"score='knn' needs the calibration logits"):
        novelty_pvalues(target_logits=zt, reference=ref, score="knn")
    with pytest.raises(ValueError, match=r"target_probs with 10 classes \(as the reference\), got 3"):
        estimate_label_shift(target_probs=pt[:, :3], reference=ref)
    with pytest.raises(ValueError, match=r"10"):
        novelty_pvalues(target_logits=zt[:, :4], reference=ref)
    with pytest.raises(ValueError, match=r"10"):
        drift_tests(target_probs=pt[:, :4] / pt[:, :4].sum(1, keepdims=True), reference=ref)
    with pytest.raises(ValueError, match=r"at least 20 rows.*n_target=5"):
        estimate_label_shift(target_probs=pt[:5], reference=ref)
    with pytest.raises(TypeError, match=r"target_probs"):
        estimate_accuracy(reference=ref)
