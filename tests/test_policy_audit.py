"""Guarantee audit of the risk_control policy on real CIFAR logits over random calibration/test splits.

Under Learn then Test, the number of splits whose test selective risk exceeds the target is (up to the
finite test part's noise) at most Binomial(n_splits, delta); bounds are upper quantiles of that law.
"""

from __future__ import annotations

import pytest
from scipy.stats import binom

from calib.policy.audit import audit_guarantee
from conftest import load_shared

TARGETS = ((0.02, 0.1), (0.05, 0.1), (0.02, 0.05))


def _check(rows, level):
    for row in rows:
        allowed = binom.ppf(level, row.n_splits, row.delta)
        assert row.violations <= allowed, row
        assert row.not_certified < row.n_splits, row  # the guarantee is not met by escalating everything


def test_audit_fast_real_logits():
    data = load_shared("cifar_chenyaofo/cifar10_resnet56.npz")
    rows = audit_guarantee(data.logits, data.labels, targets=TARGETS, n_splits=60, seed=11)
    _check(rows, 0.999)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_vgg16_bn", "cifar100_resnet56"])
def test_audit_500_splits(name):
    data = load_shared(f"cifar_chenyaofo/{name}.npz")
    rows = audit_guarantee(data.logits, data.labels, targets=TARGETS, n_splits=500, seed=0)
    _check(rows, 0.99)
