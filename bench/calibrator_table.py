"""Every calibrator on the real CIFAR logit sets: one markdown table of test NLL / ECE / classwise-ECE / Brier.

    python bench/calibrator_table.py                 # all datasets below, default calibrators
    python bench/calibrator_table.py --with-odir     # + MS-ODIR / Dir-ODIR with 5-fold CV (slow, ~4 min each)

Each dataset's own split (split == 0 calibrates, split == 1 tests) through
``calib.evaluation.pipeline.fit_and_evaluate``; metrics as in ``calib.metrics.summary`` (ECE: 15 equal-width bins;
classwise-ECE: mean over classes, 15 equal-width bins). Two-class methods (platt, beta) do not apply to
these 10/100-class sets and are left out; netcal runs its HistogramBinning (the registry default).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("CALIB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

DATASETS = {
    "c10_densenet40_kangsepp": "c10_densenet40_kangsepp/logits.npz",
    "c10_convnet_kull": "c10_convnet_kull/logits.npz",
    "c10lt_resnet110": "c10lt_sctl/resnet110.npz",
    "c100_resnet56": "cifar_chenyaofo/cifar100_resnet56.npz",
}

CALIBRATORS = [
    ("identity", {}),
    ("temperature", {}),
    ("ensemble_temperature", {}),
    ("vector_scaling", {}),
    ("matrix_scaling", {}),
    ("dirichlet", {}),
    ("dirichlet", {"matrix": "diagonal"}),
    ("isotonic", {}),
    ("isotonic", {"multiclass": "top_label"}),
    ("histogram_binning", {}),
    ("histogram_binning", {"multiclass": "top_label"}),
    ("netcal", {"method": "HistogramBinning"}),
]
ODIR = [("matrix_scaling", {"cv_folds": 5}), ("dirichlet", {"cv_folds": 5})]


import sys as _sys
_sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parent))
from _common import versions as _common_versions  # noqa: E402

def label(name, kwargs):
    if not kwargs:
        return name
    return name + "(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"


def main(argv=None):
    from calib import load_logits
    from calib.calibrators import REGISTRY
    from calib.evaluation.pipeline import fit_and_evaluate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--with-odir", action="store_true")
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    args = ap.parse_args(argv)
    print(_common_versions("netcal"))
    cals = CALIBRATORS + (ODIR if args.with_odir else [])
    rows = []
    for ds in args.datasets:
        path = SHARED / DATASETS[ds]
        if not path.is_file():
            print(f"skip {ds}: {path} not found")
            continue
        cal, test = load_logits(path).split_cal_test()
        for name, kwargs in cals:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    res = fit_and_evaluate(cal, test, REGISTRY[name](**kwargs))
                except Exception as err:  # report and go on: one failing method must not hide the rest
                    rows.append((ds, label(name, kwargs), f"error: {type(err).__name__}: {err}"[:80], "", "", "", ""))
                    continue
            m = res.metrics["calibrated"]
            rows.append((ds, label(name, kwargs), f"{m['nll']:.4f}", f"{m['ece']:.4f}",
                         f"{m['classwise_ece']:.4f}", f"{m['brier']:.5f}", f"{time.perf_counter() - t:.1f}"))
    print("| dataset | calibrator | NLL | ECE | classwise-ECE | Brier | fit+eval s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return rows


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
