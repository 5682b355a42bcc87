"""Post-hoc calibrators: logits (n, k) in, calibrated probabilities (n, k) out.

Every entry of :data:`REGISTRY` follows :class:`calib.calibrators.base.Calibrator`: keyword-only
constructor validated at construction, ``fit(logits, labels) -> self``, ``predict_proba(logits)``,
``get_state()`` / ``from_state()`` for pickle-free artifacts.
"""

from calib.calibrators.base import Calibrator, NotFittedError, softmax
from calib.calibrators.identity import IdentityCalibrator
from calib.calibrators.temperature import TemperatureScaling

#: name -> class; the artifact loader rebuilds calibrators only through this table.
REGISTRY: dict[str, type[Calibrator]] = {
    cls.kind: cls
    for cls in (
        IdentityCalibrator,
        TemperatureScaling,
    )
}

__all__ = ["REGISTRY", "Calibrator", "NotFittedError", "softmax", "IdentityCalibrator", "TemperatureScaling"]
