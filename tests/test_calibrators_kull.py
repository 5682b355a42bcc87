"""Reproduction of Kull et al. 2019 (NeurIPS, Dirichlet calibration), Tables 3 (log-loss) and 4
(classwise-ECE), rows VecS, Dir-ODIR and MS-ODIR, on the two logit sets whose READMEs carry the
published values (printed to 3 decimals; tolerance 0.005).

The fast tests fit with the (lambda, mu) that our 5-fold CV over the authors' grid selected (same folds:
shuffled KFold, random_state 15); the slow test reruns that CV and checks that the recorded pair is
CV-optimal: its mean validation NLL is within CV_TIE_TOL of the grid minimum. An exact-pair check is not
version-stable: once lambda is large enough the bias is pinned near 0 for every mu >= ~10, so those pairs
tie to ~1e-9, below the fits' own noise, and which of them wins argmin is decided by rounding.
(Before the fit was preconditioned and run in float64, the float32 LBFGS fits stopped up to 3e-3 above
their optimum, so the CV "selection" and a documented Dir-ODIR log-loss gap on c10_convnet_kull were
artefacts of where the fits stopped; see calib/calibrators/_linear.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from calib.calibrators import DirichletCalibration, MatrixScaling, VectorScaling
from calib.metrics import classwise_ece, negative_log_likelihood

from conftest import load_shared, shared_npz

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
    ("c10_densenet40_kangsepp", "Dir-ODIR"): (1e6, 0.01),
    ("c10_densenet40_kangsepp", "MS-ODIR"): (5e5, 1e-4),
    ("c10_convnet_kull", "Dir-ODIR"): (10.0, 1000.0),
    ("c10_convnet_kull", "MS-ODIR"): (50.0, 1000.0),
}

#: Ties in mean validation NLL closer than this count as CV-optimal. Measured noise of a converged CV score:
#: refitting the 10-12 best grid pairs from the identity instead of the CV's warm starts moves them by up
#: to 4e-8 (c10_convnet_kull MS-ODIR), 7e-8 (its Dir-ODIR) and 5e-8 (c10_densenet40 Dir-ODIR), enough to
#: reorder ties. 5e-7 is ~7x that, and well below the 4.5e-6 / 6.6e-6 by which the next-best lambda trails
#: the best on c10_convnet_kull. (The ties are real plateaus: mu >= ~10 pins b near 0 there; on
#: c10_densenet40, lambda >= 1e4 (Dir-ODIR) / 500 (MS-ODIR) pins W to its diagonal, the lambda -> inf end.)
CV_TIE_TOL = 5e-7

#: (dataset, method, metric) that miss the printed value (xfail, strict); none since the fits converge
KNOWN_GAPS = set()


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


_CV_JOB = """
import json
import sys

from calib import load_logits
from calib.calibrators import DirichletCalibration, MatrixScaling
from calib.metrics import classwise_ece, negative_log_likelihood
path, method = sys.argv[1], sys.argv[2]
d = load_logits(path)
cls = DirichletCalibration if method == "Dir-ODIR" else MatrixScaling
cal = cls(cv_folds=5).fit(d.logits[d.split == 0], d.labels[d.split == 0])
p, y = cal.predict_proba(d.logits[d.split == 1]), d.labels[d.split == 1]
r = cal.cv_results_
print(json.dumps({"selected": list(cal.selected_reg_), "lambdas": r["lambdas"].tolist(), "mus": r["mus"].tolist(),
                  "scores": r["mean_val_nll"].tolist(), "log-loss": negative_log_likelihood(p, y),
                  "classwise-ECE": classwise_ece(p, y, binning="digitize", reduction="sum")}))
"""


@pytest.fixture(scope="module")
def cv_runs():
    """The four 5-fold CVs over Kull et al.'s grid (2160 fits each, minutes), two at a time in subprocesses
    (the CV itself is single-threaded), so the slow suite fits in CI's time."""
    import json
    import subprocess
    import sys

    jobs = {key: [sys.executable, "-c", _CV_JOB, str(shared_npz(f"{key[0]}/logits.npz")), key[1]]
            for key in CV_SELECTED}
    out, running, pending = {}, {}, list(jobs)
    while pending or running:
        while pending and len(running) < 2:
            key = pending.pop(0)
            running[key] = subprocess.Popen(jobs[key], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        key = next(iter(running))
        stdout, stderr = running.pop(key).communicate(timeout=3600)
        assert stdout.strip(), f"CV job {key} failed:\n{stderr[-3000:]}"
        out[key] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dataset,method", [k for k in CV_SELECTED])
def test_cv_selects_these_pairs(cv_runs, dataset, method):
    run = cv_runs[(dataset, method)]
    lambdas, mus, scores = np.array(run["lambdas"]), np.array(run["mus"]), np.array(run["scores"])
    selected = tuple(run["selected"])

    def score(pair):
        hit = (lambdas == pair[0]) & (mus == pair[1])
        assert hit.sum() == 1, f"{pair} is not on the grid"
        return float(scores[hit][0])

    best = float(scores.min())
    assert score(selected) == best  # the fit used the argmin of its own CV table
    recorded = CV_SELECTED[(dataset, method)]
    ties = sorted((float(lam), float(mu)) for lam, mu, s in zip(lambdas, mus, scores) if s - best <= CV_TIE_TOL)
    assert score(recorded) - best <= CV_TIE_TOL, (
        f"{method} on {dataset}: recorded {recorded} scores {score(recorded):.8f}, "
        f"{score(recorded) - best:.2e} above the CV minimum {best:.8f} at {selected}; CV-optimal ties: {ties}")
    # whichever tie CV picked, the refitted calibrator still reproduces the printed numbers
    for metric, published in zip(("log-loss", "classwise-ECE"), PUBLISHED[(dataset, method)]):
        if (dataset, method, metric) not in KNOWN_GAPS:
            assert abs(run[metric] - published) <= 0.005, \
                f"{method} {metric} on {dataset} at {selected}: ours {run[metric]:.4f}, printed {published}"
