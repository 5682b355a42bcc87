"""ODIR cross-validation speed: the Newton solver (numpy, today's default for few classes) vs LBFGS (torch, the
solver before issue 14), on Kull et al.'s grid (36 lambdas x 12 mus) and folds, same process, same inputs.

    python bench/odir.py                 # both Kull et al. sets, Dir-ODIR and MS-ODIR
    python bench/odir.py --quick         # one set, one method, a 3 x 3 grid (smoke run)
    python bench/odir.py --lbfgs-folds 5 # the whole LBFGS CV too (~12-15 min per row on one core)

Per (dataset, method) it prints:
* the full 5-fold CV with the default solver (Newton): seconds, the chosen (lambda, mu), and the pair that
  LBFGS's CV chose (recorded in tests/test_calibrators_kull.py) with the gap between their mean validation NLLs
  in the Newton table (CV-optimal ties: within 5e-7, see that test);
* one fold's whole path (432 warm-started fits) with each solver: seconds, their ratio, the largest difference
  between the two solvers' validation NLLs over the grid, and whether their argmins agree (up to ties).

Timing: one BLAS / torch thread per fit in both solvers (what each uses at this size). Needs the Kull et al.
sets in ../shared/data (not redistributable); rows for absent sets are skipped with a message.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import versions  # noqa: E402

SETS = ("c10_convnet_kull", "c10_densenet40_kangsepp")
#: the pairs LBFGS's 5-fold CV chose (tests/test_calibrators_kull.py CV_SELECTED)
LBFGS_SELECTED = {
    ("c10_densenet40_kangsepp", "Dir-ODIR"): (1e6, 0.01),
    ("c10_densenet40_kangsepp", "MS-ODIR"): (5e5, 1e-4),
    ("c10_convnet_kull", "Dir-ODIR"): (10.0, 1000.0),
    ("c10_convnet_kull", "MS-ODIR"): (50.0, 1000.0),
}
TIE = 5e-7


def _cls(method):
    from calib.calibrators import DirichletCalibration, MatrixScaling

    return DirichletCalibration if method == "Dir-ODIR" else MatrixScaling


def fold_path(method, x, y, solver, lambdas, mus, seed=15):
    """Validation NLL over the grid on the first of 5 folds, with the CV's own warm-started path."""
    from calib.calibrators._linear import _linear_softmax, _nll, fit_linear, kfold_indices

    feats = _cls(method)()._features(x)
    val = kfold_indices(len(y), 5, seed)[0]
    tr = np.ones(len(y), bool)
    tr[val] = False
    grid = [(lam, mu) for lam in lambdas for mu in mus]
    order = sorted(range(len(grid)), key=lambda g: (grid[g][1], -grid[g][0]))
    scores, prev, head = np.zeros(len(grid)), None, None
    t0 = time.perf_counter()
    for g in order:
        lam, mu = grid[g]
        new_mu = prev is None or prev[0] != mu
        W, b, _ = fit_linear(feats[tr], y[tr], structure="full", reg_lambda=lam, reg_mu=mu, solver=solver,
                             init=head if new_mu else prev[1], warn=False)
        prev = (mu, (W, b))
        head = (W, b) if new_mu else head
        scores[g] = _nll(_linear_softmax(feats[val], W, b), y[val])
    return time.perf_counter() - t0, grid, scores


def main(argv=None):
    from calib.calibrators._linear import kull_lambda_grid, kull_mu_grid
    from calib.io import load_logits

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--quick", action="store_true", help="one set, Dir-ODIR, a 3 x 3 grid")
    ap.add_argument("--lbfgs-folds", type=int, choices=(1, 5), default=1,
                    help="LBFGS on one fold's path (default) or the whole 5-fold CV as well")
    args = ap.parse_args(argv)
    print(versions())
    lambdas, mus = kull_lambda_grid(), kull_mu_grid()
    methods, sets = ("Dir-ODIR", "MS-ODIR"), SETS
    if args.quick:
        lambdas, mus, methods, sets = (1e6, 10.0, 1e-3), (1e3, 1.0, 1e-3), ("Dir-ODIR",), SETS[:1]
    print(f"grid {len(lambdas)} lambdas x {len(mus)} mus = {len(lambdas) * len(mus)} pairs; 5 folds (seed 15)")
    head = (f"{'dataset':24s} {'method':8s} {'n':>5s} {'CV s':>6s} {'chosen':>14s} {'LBFGS chose':>14s} "
            f"{'gap':>8s} {'fold Newton s':>13s} {'fold LBFGS s':>12s} {'ratio':>6s} {'max |dNLL|':>10s} same")
    print(head)
    print("-" * len(head))
    for ds in sets:
        path = Path(args.data_root) / ds / "logits.npz"
        if not path.exists():
            print(f"{ds}: {path} not found (Kull et al.'s logits are not redistributable); skipped")
            continue
        d = load_logits(path)
        x, y = d.logits[d.split == 0], d.labels[d.split == 0]
        for method in methods:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                cal = _cls(method)(cv_folds=5, cv_lambdas=lambdas, cv_mus=mus).fit(x, y)
                cv_s = time.perf_counter() - t0
                r = cal.cv_results_
                table = {(float(a), float(b)): float(v) for a, b, v in zip(r["lambdas"], r["mus"], r["mean_val_nll"])}
                rec = LBFGS_SELECTED.get((ds, method))
                gap = "-" if args.quick or rec not in table else f"{table[rec] - min(table.values()):.1e}"
                tn, grid, sn = fold_path(method, x, y, "newton", lambdas, mus)
                tl, _, sl = fold_path(method, x, y, "lbfgs", lambdas, mus)
                same = abs(sl[int(np.argmin(sn))] - sl.min()) <= TIE and abs(sn[int(np.argmin(sl))] - sn.min()) <= TIE
                print(f"{ds:24s} {method:8s} {len(y):5d} {cv_s:6.1f} {str(cal.selected_reg_):>14s} "
                      f"{str(rec) if not args.quick else '-':>14s} {gap:>8s} {tn:13.1f} {tl:12.1f} {tl / tn:6.1f} "
                      f"{np.abs(sn - sl).max():10.1e} {'yes' if same else 'NO'}", flush=True)
                if args.lbfgs_folds == 5:
                    t0 = time.perf_counter()
                    lb = _cls(method)(cv_folds=5, cv_lambdas=lambdas, cv_mus=mus, solver="lbfgs").fit(x, y)
                    tl5 = time.perf_counter() - t0
                    print(f"{'':24s} {method:8s} whole LBFGS CV: {tl5:.1f} s (x{tl5 / cv_s:.1f} the Newton CV), "
                          f"chose {lb.selected_reg_}")
    print(f"gap: mean validation NLL of LBFGS's pair minus the Newton CV minimum (ties: <= {TIE:g}); "
          "same: each solver's argmin is within the tie of the other's minimum on the fold path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
