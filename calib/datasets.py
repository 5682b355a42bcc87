"""Datasets by name: the embedded real logits sets, the opt-in sets calib cannot redistribute, and a synthetic
generator with a known temperature.

Embedded (:data:`BUILTIN`, in the package: no download; :func:`available` lists them with one line each):

- ``c10lt_densenet40``, ``c10lt_resnet110`` (the default), ``c10lt_resnet110_sd``, ``c10lt_wrn28`` — held-out
  logits of four networks trained on long-tailed CIFAR-10 by Jung et al. (ICML 2023, "Scaling of Class-wise Training
  Losses for Post-hoc Calibration", github.com/SeungjinJung/SCTL, MIT License). Each has 10,216 long-tailed
  validation rows (``split == 0``) and the same 10,000 balanced CIFAR-10 test rows (``split == 1``): a real
  label-shift case, and four models on one test set (``experiments/compare.py``).
- ``netcal_cifar10_wrn16_4``, ``netcal_cifar100_wrn16_4``, ``netcal_cifar100_densenet_bc100`` — CIFAR-10/100
  test-set softmax outputs shipped with netcal (github.com/EFS-OpenSource/calibration-framework, Apache-2.0);
  ``logits = log(probs)``; 10,000 rows, calib's seeded 50/50 split.
- ``c10_vgg16_kumar`` — CIFAR-10 VGG-16 softmax outputs of Kumar et al. (NeurIPS 2019, "Verified Uncertainty
  Calibration", github.com/p-lambda/verified_calibration, MIT); ``logits = log(probs)``; calib's seeded 50/50 split.

Attribution, license texts and reference numbers: ``calib/data/README.md`` and ``calib/data/LICENSE*``.

Opt-in (:data:`OPT_IN`): logits sets used by calib's tests and papers' tables whose redistribution terms are unstated
(``conf/data/cifar*_*.yaml``, ``kull_*.yaml``). They are read from ``$CALIB_SHARED_DATA`` (default
``../shared/data``) through :func:`load_opt_in`, whose error for an absent file says where they come from.
"""

from __future__ import annotations

import math
import numbers
import os
from importlib import resources
from pathlib import Path

import numpy as np

from calib._validation import check_fraction, check_positive_int
from calib.io import LogitsData, load_logits

__all__ = ["BUILTIN", "OPT_IN", "available", "builtin_path", "load", "load_opt_in", "synthetic"]

#: name -> file inside ``calib/data``.
BUILTIN = {"c10lt_densenet40": "c10lt_densenet40.npz", "c10lt_resnet110": "c10lt_resnet110.npz",
           "c10lt_resnet110_sd": "c10lt_resnet110_sd.npz", "c10lt_wrn28": "c10lt_wrn28.npz",
           "netcal_cifar10_wrn16_4": "netcal_cifar10_wrn16_4.npz",
           "netcal_cifar100_wrn16_4": "netcal_cifar100_wrn16_4.npz",
           "netcal_cifar100_densenet_bc100": "netcal_cifar100_densenet_bc100.npz",
           "c10_vgg16_kumar": "c10_vgg16_kumar.npz"}

_C10LT = ("long-tailed CIFAR-10 {model} logits (Jung et al. 2023, SCTL); 10 classes, 20,216 rows: 10,216 "
          "long-tailed calibration + 10,000 balanced test (label shift); MIT")
_NETCAL = ("{data} {model} softmax outputs shipped with netcal (logits = log probs); {k} classes, 10,000 rows: "
           "seeded 50/50 split; Apache-2.0")
#: name -> one line: what, classes, rows (and the split), license. Checked against the files by tests/test_datasets.py.
DESCRIPTIONS = {
    "c10lt_densenet40": _C10LT.format(model="DenseNet-40"),
    "c10lt_resnet110": _C10LT.format(model="ResNet-110").replace("logits (", "logits, the default (", 1),
    "c10lt_resnet110_sd": _C10LT.format(model="ResNet-110 (stochastic depth)"),
    "c10lt_wrn28": _C10LT.format(model="Wide-ResNet-28"),
    "netcal_cifar10_wrn16_4": _NETCAL.format(data="CIFAR-10", model="Wide-ResNet-16-4", k=10),
    "netcal_cifar100_wrn16_4": _NETCAL.format(data="CIFAR-100", model="Wide-ResNet-16-4", k=100),
    "netcal_cifar100_densenet_bc100": _NETCAL.format(data="CIFAR-100", model="DenseNet-BC-100", k=100),
    "c10_vgg16_kumar": ("CIFAR-10 VGG-16 softmax outputs (Kumar et al. 2019, verified_calibration; logits = log "
                        "probs); 10 classes, 10,000 rows: seeded 50/50 split; MIT"),
}

#: Opt-in sets (not redistributed): folder under ``$CALIB_SHARED_DATA`` -> where they come from.
OPT_IN = {
    "cifar_chenyaofo": (
        "CIFAR-10/100 test-set logits of the pretrained ResNet-20/32/44/56 and VGG-11/13/16/19-BN models of "
        "https://github.com/chenyaofo/pytorch-cifar-models (BSD-3-Clause models), as saved in "
        "https://github.com/kwekuka/wasscal (folder data/pretrained_logits/, files "
        "logits_<dataset>_<model>_pretrainedcy.p; that repository has no license file, so calib does not "
        "redistribute them)"),
    "c10_convnet_kull": (
        "CIFAR-10 ConvNet logits of Kull et al. 2019 (Dirichlet calibration, "
        "https://github.com/dirichletcal/experiments_dnn, model of https://github.com/aaron-xichen/pytorch-playground), "
        "as saved in https://github.com/kwekuka/wasscal (data/logits_c10_pretrained.p; no license file, so calib "
        "does not redistribute them)"),
    "c10_densenet40_kangsepp": (
        "CIFAR-10 DenseNet-40 logits of Kängsepp (https://github.com/markus93/NN_calibration, "
        "logits/probs_densenet40_c10_logits.p, used by Kull et al. 2019), as copied in "
        "https://github.com/zongyuange/Workshop-repository (sample_logits.p; no license file, so calib does not "
        "redistribute them)"),
}


def available() -> dict:
    """The embedded datasets: name -> one line (what, classes, rows and split, license).

    Every name loads with :func:`load` and is a Hydra option (``data=<name>``); attribution and license texts are
    in ``calib/data/README.md``.

    >>> sets = available()
    >>> sets["c10lt_resnet110"].split(";")[0]
    'long-tailed CIFAR-10 ResNet-110 logits, the default (Jung et al. 2023, SCTL)'
    >>> sorted(sets) == sorted(BUILTIN)
    True
    """
    return {name: DESCRIPTIONS[name] for name in BUILTIN}


def builtin_path(name):
    """Path of an embedded dataset file."""
    if not isinstance(name, str):
        raise TypeError(f"Expected a builtin dataset name as a str, got {type(name).__name__} {name!r}.")
    if name not in BUILTIN:
        hint = ""
        folder = _opt_in_folder(name)
        if folder is not None:
            hint = (f" {name!r} is an opt-in set, not embedded: data={name} reads it from $CALIB_SHARED_DATA "
                    f"(default ../shared/data)/{folder}/; it comes from {OPT_IN[folder]}.")
        raise ValueError(f"Unknown builtin dataset {name!r}; valid options: {sorted(BUILTIN)} "
                         f"(calib.datasets.available() describes each).{hint}")
    return resources.files("calib") / "data" / BUILTIN[name]


def load(name="c10lt_resnet110") -> LogitsData:
    """Load an embedded dataset by name (see :func:`available`).

    >>> data = load("c10lt_resnet110")
    >>> data.logits.shape, int((data.split == 0).sum())
    ((20216, 10), 10216)
    """
    with resources.as_file(builtin_path(name)) as path:
        return load_logits(path)


def _opt_in_folder(name):
    if name.startswith(("cifar10_", "cifar100_")):
        return "cifar_chenyaofo"
    return {"kull_convnet": "c10_convnet_kull", "kull_densenet40": "c10_densenet40_kangsepp"}.get(name)


def load_opt_in(path, *, source, **kwargs) -> LogitsData:
    """Read an opt-in logits file (``conf/data/cifar*_*.yaml``, ``kull_*.yaml``): :func:`calib.io.load_logits` of
    ``path``, whose absence is an error saying where the set comes from and how to point calib at it.

    ``source`` is a key of :data:`OPT_IN` (the folder the file sits in); ``kwargs`` go to ``load_logits``.
    """
    if not isinstance(source, str) or source not in OPT_IN:
        raise ValueError(f"Expected source as one of {sorted(OPT_IN)}, got {source!r}.")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Expected path as a str or os.PathLike, got {type(path).__name__} {path!r}.")
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"Expected the opt-in logits file {str(path)!r}, got no such file. This set is not part of calib (its "
            f"redistribution terms are unstated): {OPT_IN[source]}. Convert it to .npz (logits, labels, split) and "
            f"either set CALIB_SHARED_DATA to the folder holding {source}/ or pass data.path=<file>. Embedded sets "
            f"that need nothing: {sorted(BUILTIN)} (data=<name>, calib.datasets.available()).")
    return load_logits(path, **kwargs)


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
