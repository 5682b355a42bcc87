"""TorchCP as an oracle: non-randomised APS, RAPS, SAPS, LAC scores, thresholds and sets on the same
probabilities (TorchCP's score_type="identity" takes probabilities).

TorchCP's package __init__ imports optional dependencies (torchsort, torch_geometric) that are not
installed here, so its classification.score / predictor subpackages are imported directly. Randomised
scores are not compared: TorchCP draws one uniform per (row, class), we draw one per row (Romano et al.,
2020; Angelopoulos et al., 2021), see docs/conformal.md.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from calib.conformal import SplitConformal

from conftest import REPO


def load_torchcp():
    """TorchCP's score and predictor subpackages, loaded the way the benchmark loads them."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from bench_conformal import load_torchcp as load
    finally:
        sys.path.remove(str(REPO / "bench"))
    try:
        return load()
    except ImportError as err:
        pytest.skip(f"torchcp does not import ({err}); .ci/run installs it with pip install --no-deps torchcp")


@pytest.mark.parametrize("name,ours,theirs", [
    ("lac", dict(score="lac"), ("LAC", {})),
    ("aps", dict(score="aps", randomized=False), ("APS", dict(randomized=False))),
    ("raps", dict(score="raps", k_reg=3, lam=0.05, randomized=False), ("RAPS", dict(randomized=False, penalty=0.05, kreg=3))),
    ("saps", dict(score="saps", weight=0.3, randomized=False), ("SAPS", dict(randomized=False, weight=0.3))),
])
def test_sets_identical_to_torchcp(name, ours, theirs):
    torch = pytest.importorskip("torch")
    score, predictor = load_torchcp()
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(20, 0.2), size=4000)
    y = (rng.random(4000)[:, None] > np.cumsum(p, axis=1)).sum(1).clip(0, 19)
    cls, kw = theirs
    sf = getattr(score, cls)(score_type="identity", **kw)
    tp = predictor.SplitPredictor(score_function=sf, model=None, alpha=0.1, device=torch.device("cpu"))
    # TorchCP builds the RAPS/SAPS rank penalties in torch's default float dtype: make it float64 so both
    # sides compute in float64 (in float32 the thresholds differ by ~1e-8)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        tp.calculate_threshold(torch.from_numpy(p[:2000]), torch.from_numpy(y[:2000]), alpha=0.1)
        their_sets = tp.predict_with_logits(torch.from_numpy(p[2000:])).numpy().astype(bool)
        their_scores = sf(torch.from_numpy(p[2000:])).numpy()
    finally:
        torch.set_default_dtype(old)
    cp = SplitConformal(alpha=0.1, **ours).fit(p[:2000], y[:2000])
    assert cp.qhat_ == pytest.approx(float(tp.q_hat), abs=1e-12)
    np.testing.assert_allclose(cp.score_matrix(p[2000:]), their_scores, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(cp.predict_set(p[2000:]), their_sets)
