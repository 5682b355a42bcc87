"""Serving is not calibration: the home of what watches and adapts a fitted pipeline after deployment.

This package is an algorithm package (numpy and the standard library at module level, like
:mod:`calib.calibrators`, :mod:`calib.conformal` and :mod:`calib.policy`), so the numpy-only runtime can
serve what it fits. It holds, each as a module here and never spread over ``calib/policy``:

- :mod:`~calib.shift.reference`: reference statistics stored in the artifact at fit time (class counts,
  confusion matrix, confidence and novelty-score samples, the ATC threshold, the policy's fit-time rates) as a
  registered component;
- :mod:`~calib.shift.label_shift`: label-shift estimation (EM prior adjustment, BBSE) and prior-corrected
  probabilities; :mod:`~calib.shift.conformal`: label-shift-weighted split conformal;
  :mod:`~calib.shift.adapt`: routing thresholds re-chosen under the weights;
- :mod:`~calib.shift.monitor`: label-free monitoring of a serving batch (estimated accuracy, drift tests,
  conformal novelty p-values), from the calibration arrays or from a reference alone.

The report of a serving batch against an artifact (``calib monitor``) is evaluation:
:mod:`calib.evaluation.monitor`. The shift *report* of an experiment (which guarantees break when the test distribution differs from
the calibration one) is evaluation: :mod:`calib.evaluation.shift_report`.
"""

from calib.shift.adapt import WeightedThreshold, reweight_policy
from calib.shift.conformal import LabelShiftConformal, weighted_conformal_thresholds
from calib.shift.label_shift import LabelShiftEstimate, adjust_probs, estimate_label_shift
from calib.shift.monitor import (NOVELTY_SCORES, AccuracyEstimate, benjamini_hochberg, drift_tests, estimate_accuracy,
                                 flagged_by_class, novelty_pvalues)
from calib.shift.reference import ReferenceStats, novelty_scores

#: kind -> class of the artifact's ``reference`` component (artifacts rebuild it only through this registry)
REGISTRY = {ReferenceStats.kind: ReferenceStats}
#: conformal predictors this package adds: they fill a pipeline's ``conformal`` slot (calib.artifacts and
#: calib.deploy read this registry beside calib.conformal.REGISTRY)
CONFORMAL_REGISTRY = {LabelShiftConformal.kind: LabelShiftConformal}

__all__ = ["REGISTRY", "CONFORMAL_REGISTRY", "ReferenceStats", "novelty_scores", "NOVELTY_SCORES",
           "LabelShiftConformal", "weighted_conformal_thresholds", "AccuracyEstimate", "estimate_accuracy",
           "drift_tests", "novelty_pvalues", "benjamini_hochberg", "flagged_by_class", "LabelShiftEstimate",
           "estimate_label_shift", "adjust_probs", "reweight_policy", "WeightedThreshold"]
