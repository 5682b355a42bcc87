"""Datasets by name: the embedded real logits sets and a synthetic generator with a known temperature.

Embedded (:data:`BUILTIN`): ``c10lt_densenet40``, ``c10lt_resnet110`` (the default), ``c10lt_resnet110_sd`` and
``c10lt_wrn28`` — held-out logits of four networks trained on long-tailed CIFAR-10 by Jung et al. (ICML 2023,
"Scaling of Class-wise Training Losses for Post-hoc Calibration", github.com/SeungjinJung/SCTL, MIT License).
Each has 10,216 long-tailed validation rows (``split == 0``) and the same 10,000 balanced CIFAR-10 test rows
(``split == 1``): a real label-shift case, and four models on one test set (``experiments/compare.py``).
Attribution and license text: ``calib/data/README.md`` and ``calib/data/LICENSE``.
"""

from __future__ import annotations

import math
import numbers
from importlib import resources

import numpy as np

from calib._validation import check_fraction, check_positive_int
from calib.io import LogitsData, load_logits

__all__ = ["BUILTIN", "load", "synthetic", "builtin_path"]

#: name -> file inside ``calib/data``.
BUILTIN = {"c10lt_densenet40": "c10lt_densenet40.npz", "c10lt_resnet110": "c10lt_resnet110.npz",
           "c10lt_resnet110_sd": "c10lt_resnet110_sd.npz", "c10lt_wrn28": "c10lt_wrn28.npz"}


def builtin_path(name):
    """Path of an embedded dataset file."""
    if not isinstance(name, str):
        raise TypeError(f"Expected a builtin dataset name as a str, got {type(name).__name__} {name!r}.")
    if name not in BUILTIN:
        raise ValueError(f"Unknown builtin dataset {name!r}; valid options: {sorted(BUILTIN)}.")
    return resources.files("calib") / "data" / BUILTIN[name]


def load(name="c10lt_resnet110") -> LogitsData:
    """Load an embedded dataset by name.

    >>> data = load("c10lt_resnet110")
    >>> data.logits.shape, int((data.split == 0).sum())
    ((20216, 10), 10216)
    """
    with resources.as_file(builtin_path(name)) as path:
        return load_logits(path)


def synthetic(*, n=20000, n_classes=10, temperature=2.0, scale=2.0, cal_fraction=0.5, seed=0) -> LogitsData:
    """Logits of a model that is miscalibrated by exactly ``temperature``.

    True logits ``z ~ N(0, scale^2)`` per entry, labels ``y ~ Categorical(softmax(z))``, observed
    logits ``temperature * z``: temperature scaling recovers ``temperature`` as n grows (T > 1 means
    over-confident). ``split`` puts the first ``round(cal_fraction * n)`` rows in calibration.

    >>> d = synthetic(n=4, n_classes=3, seed=1)
    >>> d.logits.shape, d.logits.dtype.name, d.split.tolist()
    ((4, 3), 'float32', [0, 0, 1, 1])
    """
    n = check_positive_int(n, "n", minimum=2)
    k = check_positive_int(n_classes, "n_classes", minimum=2)
    for name, value in (("temperature", temperature), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"Expected {name} as a real number > 0, got {type(value).__name__} {value!r}.")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"Expected {name} > 0 (finite), got {value!r}.")
    cal_fraction = check_fraction(cal_fraction, "cal_fraction")
    n_cal = round(cal_fraction * n)
    if not 0 < n_cal < n:
        raise ValueError(
            f"Expected cal_fraction * n to leave rows in both parts, got {n_cal} of {n} rows in calibration "
            f"(cal_fraction={cal_fraction!r}, n={n})."
        )
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, size=(n, k))
    # Gumbel-max draws y ~ softmax(z) exactly.
    labels = np.argmax(z + rng.gumbel(size=(n, k)), axis=1)
    split = (np.arange(n) >= n_cal).astype(np.int8)
    return LogitsData(logits=(temperature * z).astype(np.float32), labels=labels, split=split)
