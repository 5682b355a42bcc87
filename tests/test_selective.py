"""calib.selective: risk-coverage curve and its summaries, checked against brute force and scikit-learn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from calib import selective as S


def _brute_risk(conf, correct):
    """Risk at every coverage averaged over all orderings of tied items (itertools, tiny n only)."""
    n = conf.size
    total = np.zeros(n)
    count = 0
    for perm in itertools.permutations(range(n)):
        perm = np.array(perm)
        # keep the permutation only if it sorts confidence descending (a valid tie-break)
        if np.any(np.diff(conf[perm]) > 0):
            continue
        err = ~correct[perm]
        total += np.cumsum(err) / np.arange(1, n + 1)
        count += 1
    return total / count


def test_risk_coverage_ties_equal_mean_over_tie_breaks():
    conf = np.array([0.9, 0.5, 0.5, 0.5, 0.2, 0.2])
    correct = np.array([True, False, True, True, False, True])
    rc = S.risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(rc.risk, _brute_risk(conf, correct), rtol=0, atol=1e-12)
    # threshold view: tied blocks accepted together
    np.testing.assert_allclose(rc.thresholds, [0.9, 0.5, 0.2])
    np.testing.assert_allclose(rc.threshold_coverage, [1 / 6, 4 / 6, 1.0])
    np.testing.assert_allclose(rc.threshold_risk, [0.0, 1 / 4, 2 / 6])


def test_aurc_eaurc_augrc_hand_counts():
    # 5 items, confidence order = index order; errors at positions 2 and 5.
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, False, True, True, False])
    risks = np.array([0 / 1, 1 / 2, 1 / 3, 1 / 4, 2 / 5])
    assert S.aurc(conf, correct) == pytest.approx(risks.mean())
    oracle = np.array([0, 0, 0, 1 / 4, 2 / 5])  # 3 right first, then the 2 errors
    assert S.eaurc(conf, correct) == pytest.approx(risks.mean() - oracle.mean())
    assert S.augrc(conf, correct) == pytest.approx(np.mean([0, 1, 1, 1, 2]) / 5)
    assert S.selective_risk_at_coverage(conf, correct, 0.4) == pytest.approx(0.5)
    assert S.selective_risk_at_coverage(conf, correct, 0.8) == pytest.approx(0.25)
    assert S.coverage_at_risk(conf, correct, 0.3) == pytest.approx(0.8)
    assert S.coverage_at_risk(conf, correct, 0.0) == pytest.approx(0.2)


def test_aurc_of_random_scores_matches_loop(rng):
    conf = rng.random(300)
    correct = rng.random(300) < 0.8
    order = np.argsort(-conf)
    loop = [np.mean(~correct[order[:i]]) for i in range(1, 301)]
    assert S.aurc(conf, correct) == pytest.approx(np.mean(loop), abs=1e-12)


def test_eaurc_zero_for_oracle_and_aurc_of_constant_is_error_rate(rng):
    correct = rng.random(200) < 0.7
    assert S.eaurc(correct.astype(float) + rng.random(200) * 0.1, correct) == pytest.approx(0.0, abs=1e-12)
    # a constant score ranks nothing: the expected risk is the error rate at every coverage
    assert S.aurc(np.zeros(200), correct) == pytest.approx(np.mean(~correct))


def test_error_detection_auroc_matches_sklearn(rng):
    from sklearn.metrics import roc_auc_score

    conf = np.round(rng.random(500), 2)  # many ties
    correct = rng.random(500) < conf
    assert S.error_detection_auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=1e-12)
    assert np.isnan(S.error_detection_auroc(conf, np.ones(500, bool)))


def test_confidence_scores_against_scipy(rng):
    from scipy.stats import entropy

    logits = rng.normal(size=(50, 6))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(S.confidence_scores(p, "neg_entropy"), -entropy(p, axis=1), atol=1e-12)
    s = np.sort(p, axis=1)
    np.testing.assert_allclose(S.confidence_scores(p, "margin"), s[:, -1] - s[:, -2], atol=1e-15)
    np.testing.assert_allclose(S.confidence_scores(p, "max_prob"), s[:, -1])
    sets = p > 0.2
    np.testing.assert_array_equal(S.set_size_confidence(sets), -sets.sum(1))


def test_bad_inputs():
    with pytest.raises(ValueError, match="Unknown confidence 'x'"):
        S.confidence_scores(np.array([[0.5, 0.5]]), "x")
    with pytest.raises(ValueError, match="correct of shape"):
        S.aurc(np.zeros(3), np.zeros(2, bool))
    with pytest.raises(ValueError, match="coverage in"):
        S.selective_risk_at_coverage(np.zeros(3), np.ones(3, bool), 1.5)
    with pytest.raises(TypeError, match="booleans"):
        S.aurc(np.zeros(3), np.array([0.5, 1.0, 0.0]))
