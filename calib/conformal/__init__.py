"""Conformal prediction on calibrated probabilities: scores, finite-sample quantile, split, Mondrian,
risk control, p-values, set metrics and plots.

:data:`REGISTRY` maps each storable predictor's ``kind`` to its class (used by :mod:`calib.artifacts`).
"""

from calib.conformal.mondrian import MondrianConformal
from calib.conformal.pvalues import class_pvalues, conformal_pvalues
from calib.conformal.quantile import (conformal_quantile, conformal_rank, coverage_law, expected_coverage_band,
                                      min_calibration_size)
from calib.conformal.risk_control import ConformalRiskControl, risk_control_threshold
from calib.conformal.scores import SCORES, aps_scores, lac_scores, raps_scores, saps_scores, topk_scores
from calib.conformal.split import SplitConformal, check_alpha

REGISTRY = {cls.kind: cls for cls in (SplitConformal, MondrianConformal, ConformalRiskControl)}

__all__ = ["REGISTRY", "SplitConformal", "MondrianConformal", "ConformalRiskControl", "SCORES", "lac_scores",
           "aps_scores", "raps_scores", "saps_scores", "topk_scores", "conformal_quantile", "conformal_rank",
           "coverage_law", "expected_coverage_band", "min_calibration_size", "conformal_pvalues", "class_pvalues",
           "risk_control_threshold", "check_alpha"]
