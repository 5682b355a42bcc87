"""Conformal prediction on calibrated probabilities: nonconformity scores (score objects), the
finite-sample quantile, split, Mondrian and risk-control predictors, p-values. Set metrics, audits and
plots are evaluation (:mod:`calib.evaluation`, :mod:`calib.plotting`).

:data:`REGISTRY` maps each storable predictor's ``kind`` to its class (used by :mod:`calib.artifacts`).
"""

from calib.conformal.mondrian import MondrianConformal
from calib.conformal.pvalues import class_pvalues, conformal_pvalues
from calib.conformal.quantile import (conformal_quantile, conformal_rank, coverage_law, expected_coverage_band,
                                      min_calibration_size)
from calib.conformal.risk_control import ConformalRiskControl, risk_control_threshold
from calib.conformal.scores import (APS, LAC, RAPS, SAPS, SCORES, CallableScore, Score, TopK, aps_scores, lac_scores,
                                   make_score, raps_scores, saps_scores, topk_scores)
from calib.conformal.split import (EMPTY_WARN_RATE, FULL_WARN_RATE, SetSizeWarning, SplitConformal, check_alpha,
                                   data_fingerprint)

REGISTRY = {cls.kind: cls for cls in (SplitConformal, MondrianConformal, ConformalRiskControl)}

#: kinds written by older calib versions -> the kind that reads them now
LEGACY_KINDS = {"risk_control": ConformalRiskControl.kind}

__all__ = ["REGISTRY", "LEGACY_KINDS", "SplitConformal", "MondrianConformal", "ConformalRiskControl", "SCORES",
           "Score", "LAC", "APS", "RAPS", "SAPS", "TopK", "CallableScore", "make_score", "lac_scores",
           "aps_scores", "raps_scores", "saps_scores", "topk_scores", "conformal_quantile", "conformal_rank",
           "coverage_law", "expected_coverage_band", "min_calibration_size", "conformal_pvalues", "class_pvalues",
           "risk_control_threshold", "check_alpha", "SetSizeWarning", "EMPTY_WARN_RATE", "FULL_WARN_RATE",
           "data_fingerprint"]
