"""calib.conformal: scores, quantile, predictors, artifacts, the pipeline stage, oracles (MAPIE) and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from calib.conformal import (REGISTRY, ConformalRiskControl, MondrianConformal, SplitConformal, aps_scores,
                             class_pvalues, conformal_pvalues, conformal_quantile, lac_scores, raps_scores,
                             saps_scores, topk_scores)
from calib.conformal import metrics as cm
from calib.conformal.report import conformal_stage


def _probs(n, k, seed=0, conc=0.3):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, conc), size=n)
    # labels drawn from p: the probabilities are calibrated by construction
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return p, np.minimum(y, k - 1)


# --- scores against a per-row reference written from the papers' definitions -------------------------------
def _ref_rank_scores(p, u, kind, k_reg=0, lam=0.0, weight=0.2):
    n, k = p.shape
    out = np.empty((n, k))
    for i in range(n):
        order = sorted(range(k), key=lambda j: (-p[i, j], j))
        cum = 0.0
        for pos, j in enumerate(order):
            cum += p[i, j]
            rank = pos + 1
            if kind in ("aps", "raps"):
                out[i, j] = cum - u[i] * p[i, j] + lam * max(0, rank - k_reg)
            elif kind == "topk":
                out[i, j] = rank - u[i]
            else:  # saps
                out[i, j] = u[i] * p[i, order[0]] if rank == 1 else p[i, order[0]] + weight * (rank - 2 + u[i])
    return out


@pytest.mark.parametrize("kind", ["aps", "raps", "topk", "saps"])
@pytest.mark.parametrize("randomized", [False, True])
def test_rank_scores_match_reference(kind, randomized):
    p, y = _probs(60, 7, seed=1)
    u = np.random.default_rng(2).random(60) if randomized else None
    uu = u if randomized else (np.ones(60) if kind == "saps" else np.zeros(60))
    kw = {"raps": {"k_reg": 2, "lam": 0.1}, "saps": {"weight": 0.3}}.get(kind, {})
    fn = {"aps": aps_scores, "raps": raps_scores, "topk": topk_scores, "saps": saps_scores}[kind]
    ref = _ref_rank_scores(p, uu, kind, **kw)
    np.testing.assert_allclose(fn(p, u=u, **kw), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fn(p, y, u=u, **kw), ref[np.arange(60), y], rtol=0, atol=1e-12)


def test_lac_scores_and_float32_chunking(monkeypatch):
    import calib._chunks as chunking

    p, y = _probs(500, 13, seed=3)
    p32 = p.astype(np.float32)
    full = aps_scores(p32)
    monkeypatch.setattr(chunking, "SORT", 50)  # many chunks must give the same numbers
    np.testing.assert_array_equal(aps_scores(p32), full)
    assert lac_scores(p32).dtype == np.float64
    np.testing.assert_array_equal(lac_scores(p, y), 1.0 - p[np.arange(500), y])


# --- finite-sample quantile ----------------------------------------------------------------------------------
def test_quantile_rule_and_mapie_oracle():
    from mapie.utils import _compute_classification_quantile

    rng = np.random.default_rng(0)
    for n in (9, 10, 19, 99, 1000, 4999):
        s = rng.random(n)
        for a in (0.05, 0.1, 0.2, 0.5):
            r = math.ceil((n + 1) * (1 - a))
            if r > n:
                with pytest.raises(ValueError, match="calibration scores for alpha"):
                    conformal_quantile(s, a)
                assert conformal_quantile(s, a, allow_infinite=True) == np.inf
                continue
            q = conformal_quantile(s, a)
            assert q == np.sort(s)[r - 1]
            assert q == float(_compute_classification_quantile(s[:, None], np.array([a]))[0])
    np.testing.assert_array_equal(conformal_quantile(np.arange(100.0), [0.1, 0.2]), [90.0, 80.0])  # ranks 91 and 81


# --- MAPIE equality ----------------------------------------------------------------------------------------
def _mapie_fixed_estimator(P):
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Fixed(ClassifierMixin, BaseEstimator):
        """Prefit estimator whose 'features' are row indices into P."""

        def fit(self, X, y):
            return self

        def predict_proba(self, X):
            return P[np.asarray(X)[:, 0].astype(int)]

        def predict(self, X):
            return self.predict_proba(X).argmax(1)

    est = Fixed()
    est.classes_ = np.arange(P.shape[1])
    return est


def _real_probs(relpath):
    from conftest import load_shared

    from calib.calibrators.base import softmax

    d = load_shared(relpath)
    return softmax(d.logits.astype(np.float64)), d.labels


@pytest.mark.parametrize("source", ["synthetic", "cifar100"])
def test_lac_sets_identical_to_mapie(source):
    from mapie.classification import SplitConformalClassifier

    if source == "synthetic":
        P, y = _probs(4000, 10, seed=4)
    else:
        P, y = _real_probs("cifar_chenyaofo/cifar100_resnet20.npz")
    n = P.shape[0]
    cal, te = np.arange(n // 2), np.arange(n // 2, n)
    X = np.arange(n, dtype=float)[:, None]
    m = SplitConformalClassifier(estimator=_mapie_fixed_estimator(P), confidence_level=[0.9, 0.8, 0.95],
                                 conformity_score="lac", prefit=True)
    m.conformalize(X[cal], y[cal])
    _, theirs = m.predict_set(X[te])
    ours = SplitConformal(score="lac", alpha=[0.1, 0.2, 0.05]).fit(P[cal], y[cal]).predict_set(P[te])
    assert theirs.shape == ours.shape
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("alpha", [0.1, 0.6])
def test_aps_scores_quantile_and_sets_match_mapie(alpha):
    """MAPIE's APS calibration score is always randomised, so we compare the parts that are not:
    the inclusive cumulative score, the quantile, and the sets of include_last_label=False, which equal
    ours except that MAPIE forces the top class into sets we leave empty (documented in docs/conformal.md)."""
    from mapie.conformity_scores.sets.aps import APSConformityScore
    from mapie.utils import _compute_classification_quantile

    P, y = _probs(4000, 10, seed=5)
    cal, te = slice(0, 2000), slice(2000, 4000)
    cs, _ = APSConformityScore.get_true_label_cumsum_proba(y[cal], P[cal], np.arange(10))
    np.testing.assert_allclose(aps_scores(P[cal], y[cal]), cs.ravel(), rtol=0, atol=1e-15)
    ours = SplitConformal(score="aps", alpha=alpha, randomized=False).fit(P[cal], y[cal])
    assert ours.qhat_ == pytest.approx(float(_compute_classification_quantile(cs, np.array([alpha]))[0]), abs=1e-15)
    sc = APSConformityScore()
    sc.classes, sc.random_state = np.arange(10), 0
    sc.quantiles_ = np.array([ours.qhat_])
    theirs = sc.get_prediction_sets(P[te][:, :, None], None, np.array([alpha]), "prefit",
                                    include_last_label=False)[:, :, 0]
    mine = ours.predict_set(P[te])
    nonempty = mine.any(axis=1)
    assert nonempty.sum() > 100
    np.testing.assert_array_equal(mine[nonempty], theirs[nonempty])
    # rows we leave empty: MAPIE returns {argmax}
    empty = ~nonempty
    if alpha > 0.5:
        assert empty.sum() > 10
    np.testing.assert_array_equal(theirs[empty], np.eye(10, dtype=bool)[P[te][empty].argmax(1)])


# --- predictor behaviour -------------------------------------------------------------------------------------
ALL_CONFIGS = [
    ("split", dict(score="lac")),
    ("split", dict(score="aps")),
    ("split", dict(score="aps", randomized=True, seed=3)),
    ("split", dict(score="raps", randomized=True, k_reg=2, lam=0.05)),
    ("split", dict(score="raps", randomized=True, tune=True)),
    ("split", dict(score="topk", randomized=True)),
    ("split", dict(score="topk")),
    ("split", dict(score="saps", randomized=True, weight=0.1)),
    ("split", dict(score="lac", alpha=[0.05, 0.1, 0.2])),
    ("mondrian", dict(condition="class", score="aps", randomized=True)),
    ("mondrian", dict(condition="group", score="lac", alpha=[0.1, 0.2])),
    ("mondrian", dict(condition="class", score="lac", alpha=0.01)),  # small classes -> inf
    ("conformal_risk_control", dict(loss="fnr", score="lac")),
    ("conformal_risk_control", dict(loss="miscoverage", score="raps", randomized=True)),
]


@pytest.mark.parametrize("kind,params", ALL_CONFIGS)
def test_artifact_round_trip_bit_identical(kind, params, tmp_path):
    from calib.artifacts import load_pipeline, save_artifact
    from calib.calibrators import TemperatureScaling
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1200, 8)).astype(np.float32) * 3
    labels = np.argmax(logits + rng.gumbel(size=logits.shape) * 2, axis=1)  # informative logits
    groups = np.array(["a", "b", "c"])[rng.integers(0, 3, 1200)]
    cal = TemperatureScaling().fit(logits[:600], labels[:600])
    probs = cal.predict_proba(logits)
    pred = REGISTRY[kind](**params).fit(probs[:600], labels[:600], groups=groups[:600])
    before = pred.predict_set(probs[600:], groups=groups[600:])
    save_artifact(cal, tmp_path / "a", conformal=pred)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["components"]["conformal"]["kind"] == kind
    loaded = load_pipeline(tmp_path / "a")["conformal"]
    assert type(loaded) is type(pred)
    loaded_probs = load_pipeline(tmp_path / "a")["calibrator"].predict_proba(logits[600:])
    np.testing.assert_array_equal(loaded_probs, probs[600:])
    np.testing.assert_array_equal(loaded.predict_set(loaded_probs, groups=groups[600:]), before)
    np.testing.assert_array_equal(np.asarray(loaded.qhat_), np.asarray(pred.qhat_))


def test_randomized_sets_reproducible_and_seed_dependent():
    p, y = _probs(3000, 10, seed=6)
    a = SplitConformal(score="aps", randomized=True, seed=1).fit(p[:1500], y[:1500])
    np.testing.assert_array_equal(a.predict_set(p[1500:]), a.predict_set(p[1500:]))
    b = SplitConformal(score="aps", randomized=True, seed=2).fit(p[:1500], y[:1500])
    assert (a.predict_set(p[1500:]) != b.predict_set(p[1500:])).any()


def test_predict_set_is_score_below_qhat_and_lists_of_alpha_agree():
    p, y = _probs(3000, 12, seed=7)
    for score in ("lac", "aps", "raps", "saps", "topk"):
        many = SplitConformal(score=score, alpha=[0.05, 0.2], never_empty=False).fit(p[:1500], y[:1500])
        for j, a in enumerate((0.05, 0.2)):
            one = SplitConformal(score=score, alpha=a, never_empty=False).fit(p[:1500], y[:1500])
            assert one.qhat_ == many.qhat_[j]
            sets = one.predict_set(p[1500:])
            np.testing.assert_array_equal(sets, many.predict_set(p[1500:])[:, :, j])
            np.testing.assert_array_equal(sets, one.score_matrix(p[1500:]) <= one.qhat_)


def test_callable_score_works_but_cannot_be_stored():
    p, y = _probs(1000, 5, seed=8)
    cp = SplitConformal(score=lambda q: 1.0 - q, alpha=0.1).fit(p[:500], y[:500])
    ref = SplitConformal(score="lac", alpha=0.1).fit(p[:500], y[:500])
    np.testing.assert_array_equal(cp.predict_set(p[500:]), ref.predict_set(p[500:]))
    with pytest.raises(TypeError, match="callables cannot be saved"):
        cp.get_params()


def test_raps_tuning_uses_held_out_rows():
    p, y = _probs(5000, 20, seed=9, conc=0.2)
    cp = SplitConformal(score="raps", randomized=True, tune=True, tune_fraction=0.2, alpha=0.1).fit(p, y)
    assert cp.n_calibration_ == 4000
    assert cp.k_reg_ >= 1 and cp.lam_ in (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5)


# --- Mondrian ---------------------------------------------------------------------------------------------------
def test_mondrian_class_quantile_is_per_class_split_quantile():
    p, y = _probs(6000, 6, seed=10)
    m = MondrianConformal(condition="class", score="aps", alpha=0.1, randomized=False).fit(p[:3000], y[:3000])
    for c in range(6):
        rows = y[:3000] == c
        q = SplitConformal(score="aps", alpha=0.1, randomized=False).fit(p[:3000][rows], y[:3000][rows]).qhat_
        assert m.qhat_[c] == q
    sets = m.predict_set(p[3000:])
    np.testing.assert_array_equal(sets, aps_scores(p[3000:]) <= m.qhat_[None, :])


def test_mondrian_group_and_small_strata_rules():
    p, y = _probs(3000, 5, seed=11)
    g = np.where(np.arange(3000) % 100 == 0, "tiny", np.where(np.arange(3000) % 2 == 0, "even", "odd"))
    m = MondrianConformal(condition="group", alpha=0.1).fit(p, y, groups=g)
    assert m.groups_.tolist() == ["even", "odd", "tiny"]
    # 'tiny' has 30 rows: enough for alpha=0.1; at alpha=0.02 it needs 49 rows
    m2 = MondrianConformal(condition="group", alpha=0.02).fit(p, y, groups=g)
    assert np.isinf(m2.qhat_[2]) and m2.small_strata_.tolist() == [2]
    assert m2.predict_set(p[:5], groups=np.array(["tiny"] * 5)).all()
    with pytest.raises(ValueError, match="too small"):
        MondrianConformal(condition="group", alpha=0.02, small_strata="error").fit(p, y, groups=g)
    with pytest.warns(UserWarning, match="pooled quantile"):
        m3 = MondrianConformal(condition="group", alpha=0.02, small_strata="marginal").fit(p, y, groups=g)
    assert m3.qhat_[2] == SplitConformal(alpha=0.02).fit(p, y).qhat_
    even = g == "even"
    np.testing.assert_array_equal(
        m.predict_set(p[even], groups=g[even]),
        SplitConformal(alpha=0.1).fit(p[even], y[even]).predict_set(p[even]))


# --- risk control and p-values ---------------------------------------------------------------------------------
def test_risk_control_miscoverage_equals_split_conformal():
    p, y = _probs(2000, 10, seed=12)
    for score in ("lac", "aps"):
        for a in (0.05, 0.1, 0.3):
            crc = ConformalRiskControl(loss="miscoverage", score=score, alpha=a).fit(p, y)
            assert crc.qhat_ == SplitConformal(score=score, alpha=a).fit(p, y).qhat_


def test_risk_control_fnr_matches_definition_on_a_grid():
    rng = np.random.default_rng(13)
    p, _ = _probs(400, 6, seed=13)
    Y = rng.random((400, 6)) < np.minimum(1.0, 2 * p)
    crc = ConformalRiskControl(loss="fnr", score="lac", alpha=0.15).fit(p, Y)
    s = lac_scores(p)
    cnt = Y.sum(1)

    def risk(lam):
        covered = (Y & (s <= lam)).sum(1)
        loss = np.where(cnt > 0, 1 - covered / np.maximum(cnt, 1), 0.0)
        return (400 * loss.mean() + 1) / 401

    cands = np.unique(s[Y])
    ok = [lam for lam in cands if risk(lam) <= 0.15 + 1e-12]
    assert crc.qhat_ == min(ok)


def test_pvalues_give_the_conformal_set():
    p, y = _probs(3000, 8, seed=14)
    for score in ("lac", "aps"):
        cp = SplitConformal(score=score, alpha=0.1, randomized=False).fit(p[:1500], y[:1500])
        pv = class_pvalues(cp, p[:1500], y[:1500], p[1500:])
        np.testing.assert_array_equal(pv > 0.1, cp.predict_set(p[1500:]))
        sm = class_pvalues(cp, p[:1500], y[:1500], p[1500:], smoothed=True)
        assert (sm <= pv + 1e-12).all()
        if score == "lac":  # no ties: smoothing moves a p-value down by less than 1/(n+1)
            assert (sm >= pv - 1 / 1501 - 1e-12).all()
    # a smoothed p-value of an exchangeable point is exactly U(0, 1) (fresh calibration set each time):
    # KS against U(0, 1) over 3000 independent repetitions; the plain one is super-uniform.
    from scipy import stats

    rng = np.random.default_rng(0)
    data = rng.random((3000, 21))
    sm = np.array([conformal_pvalues(r[:20], r[20:], smoothed=True, seed=i)[0] for i, r in enumerate(data)])
    plain = np.array([conformal_pvalues(r[:20], r[20:])[0] for r in data])
    assert stats.kstest(sm, "uniform").pvalue > 1e-3
    # plain p-values are uniform on {1/21, ..., 21/21}: P(p <= j/21) = j/21 (binomial bound, 3000 draws)
    j = 4
    assert abs((plain <= j / 21 + 1e-12).mean() - j / 21) < 4 * math.sqrt(j / 21 * (1 - j / 21) / 3000)


# --- metrics ------------------------------------------------------------------------------------------------------
def test_set_metrics_against_loops():
    rng = np.random.default_rng(15)
    sets = rng.random((300, 4)) < 0.4
    y = rng.integers(0, 4, 300)
    sizes = [int(s.sum()) for s in sets]
    hits = [bool(sets[i, y[i]]) for i in range(300)]
    assert cm.coverage(sets, y) == pytest.approx(sum(hits) / 300)
    assert cm.mean_set_size(sets) == pytest.approx(sum(sizes) / 300)
    assert cm.size_histogram(sets).tolist() == [sizes.count(s) for s in range(5)]
    for c in range(4):
        rows = [i for i in range(300) if y[i] == c]
        assert cm.class_conditional_coverage(sets, y)[c] == pytest.approx(sum(hits[i] for i in rows) / len(rows))
    ssc = cm.size_stratified_coverage(sets, y)
    for size, (count, cov) in ssc.items():
        rows = [i for i in range(300) if sizes[i] == size]
        assert count == len(rows) and cov == pytest.approx(sum(hits[i] for i in rows) / len(rows))


# --- pipeline stage -------------------------------------------------------------------------------------------------
REQUIRED = {"score", "alpha", "qhat", "coverage", "mean_set_size", "singleton_rate", "empty_rate", "min_class_coverage"}


@pytest.mark.parametrize("kind,params", [("split", dict(score="aps")), ("split", dict(alpha=[0.1, 0.2])),
                                         ("mondrian", dict(condition="class")),
                                         (ConformalRiskControl.kind, dict())])
def test_conformal_stage_section_and_plot_data(kind, params):
    from calib.plotting import FigureSpec

    p, y = _probs(2000, 10, seed=16)
    section, plot_data = conformal_stage(REGISTRY[kind](**params), p[:1000], y[:1000], p[1000:], y[1000:])
    assert REQUIRED <= set(section)
    json.dumps(section, allow_nan=False)
    assert set(plot_data) == {"conformal_coverage.png", "set_size_histogram.png", "class_coverage.png"}
    assert all(isinstance(spec, FigureSpec) for spec in plot_data.values())
    curve = plot_data["conformal_coverage.png"].data
    assert curve.alphas.shape == curve.coverage.shape == curve.band_low.shape == curve.band_high.shape == (15,)
    assert (curve.band_low <= curve.band_high).all() and curve.n_calibration == 1000 and curve.n_test == 1000
    assert plot_data["set_size_histogram.png"].data.histogram.shape == (11,)
    assert plot_data["set_size_histogram.png"].data.histogram.sum() == 1000
    cc = plot_data["class_coverage.png"].data
    assert cc.coverage.shape == (10,) and (np.diff(cc.coverage) >= 0).all()
    assert "matplotlib.figure" not in {type(v.data).__module__ for v in plot_data.values()}


def test_conformal_stage_group_coverage_section():
    p, y = _probs(3000, 6, seed=25)
    g = np.array(["x", "y", "z"])[np.arange(3000) % 3]
    section, figs = conformal_stage(MondrianConformal(condition="group", alpha=0.2), p[:1500], y[:1500], p[1500:],
                                    y[1500:], cal_groups=g[:1500], test_groups=g[1500:], plots=False)
    assert section["strata"] == ["x", "y", "z"] and len(section["qhat"]) == 3
    assert set(section["group_coverage"]) == {"x", "y", "z"}
    for name in "xyz":
        rows = g[1500:] == name
        m = MondrianConformal(condition="group", alpha=0.2).fit(p[:1500], y[:1500], groups=g[:1500])
        sets = m.predict_set(p[1500:][rows], groups=g[1500:][rows])
        assert section["group_coverage"][name]["coverage"] == pytest.approx(cm.coverage(sets, y[1500:][rows]))
    assert figs == {}


def test_conformal_stage_group_needs_groups():
    p, y = _probs(200, 4, seed=17)
    with pytest.raises(ValueError, match="cal_groups and test_groups"):
        conformal_stage(MondrianConformal(condition="group"), p[:100], y[:100], p[100:], y[100:])


def test_pipeline_with_conformal_stage(tmp_path):
    from calib.calibrators import TemperatureScaling
    from calib.datasets import synthetic
    from calib.pipeline import fit_and_evaluate

    data = synthetic(n=4000, n_classes=10, temperature=2.0, seed=0)
    cal, test = data.split_cal_test(cal_fraction=0.5, seed=0)
    res = fit_and_evaluate(cal, test, TemperatureScaling(), conformal=SplitConformal(score="aps"))
    assert REQUIRED <= set(res.metrics["conformal"])
    assert set(res.plots) == {"conformal_coverage.png", "set_size_histogram.png", "class_coverage.png"}
    res.write(tmp_path)
    for name in ("reliability.png", *res.plots):
        assert (tmp_path / name).is_file()
    from calib.artifacts import load_pipeline

    loaded = load_pipeline(tmp_path / "artifact")["conformal"]
    assert loaded.qhat_ == res.conformal.qhat_


@pytest.mark.parametrize("option", ["lac", "aps", "raps", "topk", "saps", "mondrian_class", "mondrian_group",
                                    "risk_control"])
def test_conf_options_instantiate(option):
    from pathlib import Path

    from omegaconf import OmegaConf

    from calib._hydra import instantiate

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "conformal" / f"{option}.yaml")
    cfg = OmegaConf.create({"seed": 0, "conformal": cfg}).conformal  # its `seed: ${seed}` is the run's root seed
    assert cfg._target_.startswith("calib.conformal.")
    obj = instantiate(cfg)
    assert type(obj) in REGISTRY.values()
    bad = OmegaConf.merge(cfg, {"alpha": 1.5})
    with pytest.raises(Exception, match=r"alpha in \(0, 1\)"):
        instantiate(bad)


# --- bad input -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, -0.1, [0.1, 2.0]])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"Expected alpha in \(0, 1\)"):
        SplitConformal(alpha=alpha)


def test_bad_constructor_values():
    with pytest.raises(ValueError, match="Unknown score 'foo'"):
        SplitConformal(score="foo")
    with pytest.raises(ValueError, match="randomized=False for score 'lac'"):
        SplitConformal(score="lac", randomized=True)
    with pytest.raises(ValueError, match="tuning applies to 'raps'"):
        SplitConformal(score="aps", tune=True)
    with pytest.raises(ValueError, match="Unknown condition"):
        MondrianConformal(condition="feature")


def test_probs_not_summing_to_one():
    p, y = _probs(100, 4, seed=18)
    with pytest.raises(ValueError, match="summing to 1"):
        SplitConformal().fit(p * 1.1, y)
    cp = SplitConformal().fit(p, y)
    with pytest.raises(ValueError, match="summing to 1"):
        cp.predict_set(p * 0.5)


def test_k_mismatch_between_fit_and_predict():
    p, y = _probs(100, 4, seed=19)
    q, _ = _probs(10, 5, seed=19)
    cp = SplitConformal().fit(p, y)
    with pytest.raises(ValueError, match="Expected probs with 4 classes"):
        cp.predict_set(q)


def test_unseen_group_and_missing_groups():
    p, y = _probs(400, 4, seed=20)
    g = np.array([0, 1])[np.arange(400) % 2]
    m = MondrianConformal(condition="group").fit(p, y, groups=g)
    with pytest.raises(ValueError, match=r"unseen group\(s\) \[7\]"):
        m.predict_set(p[:3], groups=np.array([0, 7, 1]))
    with pytest.raises(ValueError, match="Expected groups of shape"):
        MondrianConformal(condition="group").fit(p, y)


def test_n_too_small_for_alpha():
    p, y = _probs(8, 4, seed=21)
    with pytest.raises(ValueError, match=r"at least 19 calibration scores for alpha=0.05"):
        SplitConformal(alpha=0.05).fit(p, y)
    cp = SplitConformal(alpha=0.05, allow_infinite=True).fit(p, y)
    assert cp.qhat_ == np.inf and cp.predict_set(p).all()
    with pytest.raises(ValueError, match="control the risk"):
        ConformalRiskControl(alpha=0.05).fit(p, y)


def test_not_fitted():
    with pytest.raises(ValueError, match="not fitted yet; call fit"):
        SplitConformal().predict_set(np.full((2, 2), 0.5))


@pytest.mark.parametrize("tiers", [(2, 5), (1,), (64, 512), None])
@pytest.mark.parametrize("ties", [False, True])
def test_partial_sort_sets_equal_full_definition(monkeypatch, tiers, ties):
    """The argpartition tiers of rank_sets must give exactly {j : s_j <= qhat}, ties included."""
    import calib.conformal.scores as sc

    monkeypatch.setattr(sc, "PARTIAL_TIERS", tiers)
    p, y = _probs(3000, 80, seed=22, conc=0.5)
    if ties:  # many exact ties: quantise to multiples of 1/64 and renormalise by the last column
        p = np.floor(p * 64) / 64
        p[:, -1] = 1.0 - p[:, :-1].sum(1)
        p = np.clip(p, 0, 1)
        p[:, -1] = 1.0 - p[:, :-1].sum(1)
        p = p[p[:, -1] >= 0]
        y = y[: p.shape[0]]
    half = p.shape[0] // 2
    for score, kw in (("aps", {}), ("raps", dict(k_reg=2, lam=0.02)), ("saps", {}), ("topk", {})):
        for randomized in (False, True):
            cp = SplitConformal(score=score, alpha=[0.05, 0.3], randomized=randomized, **kw).fit(p[:half], y[:half])
            sets = cp.predict_set(p[half:])
            np.testing.assert_array_equal(sets, cp.score_matrix(p[half:])[:, :, None] <= cp.qhat_[None, None, :])
            if not randomized:  # label scores (no sort, summed in class order) = sorted cumsum up to rounding
                np.testing.assert_allclose(cp.label_scores(p[:half], y[:half]),
                                           cp.score_matrix(p[:half])[np.arange(half), y[:half]], rtol=0, atol=1e-12)


def test_label_scores_without_sort_equal_sorted_scores():
    from calib.conformal.scores import _rank_scores_sorted, label_rank_scores, sorted_order

    p, y = _probs(2000, 30, seed=23)
    p = np.round(p, 2)  # ties
    p /= p.sum(1, keepdims=True)
    u = np.random.default_rng(0).random(2000)
    order = sorted_order(p)
    pos = np.argmax(order == y[:, None], axis=1)
    for kind, kw in (("aps", {}), ("raps", dict(k_reg=3, lam=0.1)), ("saps", dict(weight=0.2)), ("topk", {})):
        full = _rank_scores_sorted(np.take_along_axis(p, order, 1), kind, u, **kw)[np.arange(2000), pos]
        np.testing.assert_allclose(label_rank_scores(p, y, kind, u, **kw), full, rtol=0, atol=1e-12)


def test_lac_threshold_trick_is_exact():
    from calib.conformal.scores import lac_prob_threshold

    rng = np.random.default_rng(24)
    for dtype in (np.float32, np.float64):
        v = np.concatenate([rng.random(100000), [0.0, 1.0, 1e-30, 1 - 1e-9]]).astype(dtype)
        for q in (-0.1, 0.0, 1e-12, 0.1, 0.5, float(1.0 - np.float64(v[7])), 0.999999, 1.0, np.inf):
            t = lac_prob_threshold(q, dtype)
            np.testing.assert_array_equal(v >= t, 1.0 - v.astype(np.float64) <= q)
