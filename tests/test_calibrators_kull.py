"""Reproduction of Kull et al. 2019 (NeurIPS, Dirichlet calibration), Tables 3 (log-loss) and 4
(classwise-ECE), rows VecS, Dir-ODIR and MS-ODIR, on the two logit sets whose READMEs carry the
published values (printed to 3 decimals; tolerance 0.005).

The fast tests fit with the (lambda, mu) that our 5-fold CV over the authors' grid selected (same folds:
shuffled KFold, random_state 15); the slow test reruns that CV and checks it selects the same pair.
Known gap (xfail, documented in docs/calibrators.md): Dir-ODIR log-loss on c10_convnet_kull. The CV
surface is flat (the five best pairs lie within 1.2e-4 mean validation NLL) and our LBFGS optimum
picks (1, 1e4), whose test log-loss is 0.2025 vs the printed 0.195 (pairs a hair behind in CV, e.g.
(10, 100), give 0.1953); the authors' Keras/Adam early-stopped fits rank the pairs differently.
"""

from __future__ import annotations

import numpy as np
import pytest

from calib.calibrators import DirichletCalibration, MatrixScaling, VectorScaling
from calib.metrics import classwise_ece, negative_log_likelihood

from conftest import load_shared

#: Kull et al. 2019 printed values (dataset READMEs): (log-loss, classwise-ECE as tabulated = sum over classes)
PUBLISHED = {
    ("c10_densenet40_kangsepp", "VecS"): (0.222, 0.035),
    ("c10_densenet40_kangsepp", "Dir-ODIR"): (0.224, 0.037),
    ("c10_densenet40_kangsepp", "MS-ODIR"): (0.222, 0.037),
    ("c10_convnet_kull", "VecS"): (0.198, 0.044),
    ("c10_convnet_kull", "Dir-ODIR"): (0.195, 0.045),
    ("c10_convnet_kull", "MS-ODIR"): (0.196, 0.044),
}

#: (lambda, mu) selected by MatrixScaling/DirichletCalibration(cv_folds=5) on each calibration split
#: (see test_cv_selects_these_pairs, marked slow)
CV_SELECTED = {
    ("c10_densenet40_kangsepp", "Dir-ODIR"): (1000.0, 1e-3),
    ("c10_densenet40_kangsepp", "MS-ODIR"): (250.0, 1e-5),
    ("c10_convnet_kull", "Dir-ODIR"): (1.0, 1e4),
    ("c10_convnet_kull", "MS-ODIR"): (1e4, 0.01),
}

KNOWN_GAPS = {("c10_convnet_kull", "Dir-ODIR", "log-loss")}


def _make(dataset, method, **cv):
    if method == "VecS":
        return VectorScaling()
    lam, mu = CV_SELECTED[(dataset, method)] if not cv else (0.0, 0.0)
    cls = DirichletCalibration if method == "Dir-ODIR" else MatrixScaling
    return cls(reg_lambda=lam, reg_mu=mu, **cv)


def _metrics(cal, d):
    p = cal.predict_proba(d.logits[d.split == 1])
    y = d.labels[d.split == 1]
    return negative_log_likelihood(p, y), classwise_ece(p, y, binning="digitize", reduction="sum")


CASES = []
for (ds, meth), (ll, cw) in PUBLISHED.items():
    for metric, value in (("log-loss", ll), ("classwise-ECE", cw)):
        marks = [pytest.mark.xfail(strict=True, reason="documented CV-selection gap")] \
            if (ds, meth, metric) in KNOWN_GAPS else []
        CASES.append(pytest.param(ds, meth, metric, value, marks=marks, id=f"{ds}-{meth}-{metric}"))


@pytest.fixture(scope="module")
def fitted():
    cache = {}

    def get(ds, meth):
        if (ds, meth) not in cache:
            d = load_shared(f"{ds}/logits.npz")
            cal = _make(ds, meth).fit(d.logits[d.split == 0], d.labels[d.split == 0])
            cache[(ds, meth)] = _metrics(cal, d)
        return cache[(ds, meth)]
    return get


@pytest.mark.parametrize("dataset,method,metric,published", CASES)
def test_kull2019_within_0005_of_printed_value(fitted, dataset, method, metric, published):
    ll, cw = fitted(dataset, method)
    got = ll if metric == "log-loss" else cw
    assert abs(got - published) <= 0.005, f"{method} {metric} on {dataset}: ours {got:.4f}, printed {published}"


@pytest.mark.slow
@pytest.mark.parametrize("dataset,method", [k for k in CV_SELECTED])
def test_cv_selects_these_pairs(dataset, method):
    d = load_shared(f"{dataset}/logits.npz")
    cal = _make(dataset, method, cv_folds=5).fit(d.logits[d.split == 0], d.labels[d.split == 0])
    assert cal.selected_reg_ == pytest.approx(CV_SELECTED[(dataset, method)])
