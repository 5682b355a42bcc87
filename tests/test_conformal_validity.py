"""Coverage validity on real logits over repeated random splits (law and checks: calib/conformal/audit.py).

The bounds come from the exact BetaBinomial law of the per-split covered count, never from hand-tuned
tolerances; seeds are fixed. The fast test uses 100 splits; the slow one the audit's 500 on two data sets.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_shared

from calib.calibrators.base import softmax
from calib.conformal import REGISTRY
from calib.conformal.audit import AUDIT_CONFIGS, audit_predictor, coverage_count_pmf


def _data(rel):
    d = load_shared(rel)
    p = softmax(d.logits.astype(np.float64))
    return p, d.labels, np.digitize(p.max(axis=1), [0.9, 0.99])


@pytest.mark.parametrize("name", list(AUDIT_CONFIGS))
def test_coverage_law_fast(name):
    p, y, g = _data("cifar_chenyaofo/cifar10_resnet20.npz")
    kind, kw = AUDIT_CONFIGS[name]
    rows = audit_predictor(REGISTRY[kind](**kw), p, y, alphas=(0.1,), n_splits=100, groups=g, seed=1)
    for r in rows:
        assert r.band_low <= r.expected <= r.band_high, r
        assert abs(r.mean_coverage - r.expected) <= r.tolerance, r
        assert r.ks_pvalue > 1e-3, r


@pytest.mark.slow
@pytest.mark.parametrize("rel", ["cifar_chenyaofo/cifar10_resnet56.npz", "cifar_chenyaofo/cifar100_resnet56.npz"])
def test_coverage_law_audit_500_splits(rel):
    p, y, g = _data(rel)
    for name, (kind, kw) in AUDIT_CONFIGS.items():
        for r in audit_predictor(REGISTRY[kind](**kw), p, y, alphas=(0.1, 0.05), n_splits=500, groups=g, seed=2):
            assert r.ok, r


def test_audit_detects_missing_finite_sample_correction():
    """Negative control: the quantile without the (n+1) correction (ceil(n(1-alpha))-th smallest, as in
    the under-covering peer) must fail the same checks at n = 50 (expected 45/51 instead of 46/51)."""
    p, y, _ = _data("cifar_chenyaofo/cifar10_resnet20.npz")
    frac = 50 / y.shape[0]
    ok = audit_predictor(REGISTRY["split"](score="lac"), p, y, alphas=(0.1,), n_splits=300, cal_fraction=frac)
    assert ok[0].ok and ok[0].n_cal == 50
    bad = audit_predictor(REGISTRY["split"](score="lac"), p, y, alphas=(0.1,), n_splits=300, cal_fraction=frac,
                          split_rank=lambda n, a: int(np.ceil(n * (1 - a))))
    assert not bad[0].ok and bad[0].mean_coverage < bad[0].expected - bad[0].tolerance


def test_coverage_count_pmf_is_the_permutation_law():
    """Monte Carlo of the rank argument itself: uniform random interleavings of n + m tie-free scores."""
    rng = np.random.default_rng(3)
    n, m, a, R = 19, 7, 0.1, 20000
    pmf = coverage_count_pmf([n], [m], a)
    r = int(np.ceil((n + 1) * (1 - a)))
    s = rng.random((R, n + m))
    q = np.sort(s[:, :n], axis=1)[:, r - 1]
    counts = np.bincount((s[:, n:] <= q[:, None]).sum(1), minlength=m + 1) / R
    se = np.sqrt(pmf * (1 - pmf) / R)
    assert np.all(np.abs(counts - pmf) <= 4.5 * se + 1e-12)
