"""Post-hoc calibrators: logits (n, k) in, calibrated probabilities (n, k) out.

Every entry of :data:`REGISTRY` follows :class:`calib.calibrators.base.Calibrator`: keyword-only
constructor validated at construction, ``fit(logits, labels) -> self``, ``predict_proba(logits)``,
``get_state()`` / ``from_state()`` for pickle-free artifacts.
"""

from calib.calibrators.base import Calibrator, NotFittedError, softmax
from calib.calibrators.binary import BetaCalibration, PlattScaling
from calib.calibrators.dirichlet import DirichletCalibration
from calib.calibrators.ensemble import EnsembleTemperatureScaling
from calib.calibrators.histogram import HistogramBinning
from calib.calibrators.identity import IdentityCalibrator
from calib.calibrators.isotonic import IsotonicCalibration
from calib.calibrators.netcal_adapter import NetcalCalibrator
from calib.calibrators.temperature import TemperatureScaling
from calib.calibrators.vector_matrix import MatrixScaling, VectorScaling

#: name -> class; the artifact loader rebuilds calibrators only through this table.
REGISTRY: dict[str, type[Calibrator]] = {
    cls.kind: cls
    for cls in (
        IdentityCalibrator,
        TemperatureScaling,
        VectorScaling,
        MatrixScaling,
        DirichletCalibration,
        EnsembleTemperatureScaling,
        IsotonicCalibration,
        HistogramBinning,
        PlattScaling,
        BetaCalibration,
        NetcalCalibrator,
    )
}

__all__ = [
    "REGISTRY", "Calibrator", "NotFittedError", "softmax", "IdentityCalibrator", "TemperatureScaling",
    "VectorScaling", "MatrixScaling", "DirichletCalibration", "EnsembleTemperatureScaling", "IsotonicCalibration",
    "HistogramBinning", "PlattScaling", "BetaCalibration", "NetcalCalibrator",
]
