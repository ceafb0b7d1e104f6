"""Benchmark of the law engine: whole-suite wall time with 1,000 bootstrap resamples, and the batched
parametric
fit against a straightforward scipy loop over the same 4,500 Epoch grid starts.

    python benchmarks/laws.py [--bootstrap 1000] [--loop-numeric-every 25]

Writes benchmarks/results/laws.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from windtunnel.laws import fit_laws
from windtunnel.laws.anchors import ANCHOR_LAWS, load_epoch_chinchilla, load_porian
from windtunnel.laws.parametric import epoch_grid, fit_parametric, make_objective
from windtunnel.laws.synthetic import synthetic_runs

RESULTS = Path(__file__).resolve().parent / "results"


def suite(runs, laws, n_boot: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0, c0 = time.perf_counter(), time.process_time()
        ls = fit_laws(runs, laws=laws, bootstrap=n_boot)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "n_runs": len(runs), "laws": sorted(ls.laws), "errors": ls.errors}


def scipy_loop(logN, logD, logL, grid, numeric: bool) -> tuple[float, float, np.ndarray]:
    """The straightforward method: one scipy L-BFGS-B call per start (default options), keep the best."""
    fg = make_objective(logN, logD, logL, np.ones((1, logN.size)), 1e-3)

    def fun(x):
        f, g = fg(x[None, :], np.zeros(1, int))
        return (float(f[0]), g[0]) if not numeric else float(f[0])

    t0, c0 = time.perf_counter(), time.process_time()
    best_f, best_x = np.inf, None
    with np.errstate(all="ignore"):
        for x0 in grid:
            res = minimize(fun, x0, jac=not numeric, method="L-BFGS-B")
            if res.fun < best_f:
                best_f, best_x = float(res.fun), res.x
    return time.perf_counter() - t0, time.process_time() - c0, best_f, best_x


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument(
        "--loop-numeric-every", type=int, default=125, help="numeric-gradient loop on every k-th start"
    )
    args = p.parse_args()
    out: dict = {"cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()}

    porian = load_porian()
    out["suite_porian"] = suite(porian, ANCHOR_LAWS["porian"], args.bootstrap)
    print("suite_porian", out["suite_porian"], flush=True)
    syn = synthetic_runs(1000)
    out["suite_synthetic_1000"] = suite(syn, None, args.bootstrap)
    print("suite_synthetic_1000", out["suite_synthetic_1000"], flush=True)

    runs = load_epoch_chinchilla()
    N, D, L = (runs[c].to_numpy(float) for c in ("params", "tokens", "loss"))
    grid = epoch_grid()
    rows = {}
    for strategy in ("halving", "full"):
        t0, c0 = time.perf_counter(), time.process_time()
        coef, f, _ = fit_parametric(N, D, L, strategy=strategy)
        rows[f"batched_{strategy}"] = {
            "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "objective": f,
            "coefficients": coef,
            "starts": len(grid),
        }
        print(strategy, rows[f"batched_{strategy}"], flush=True)
    wall, cpu, f, x = scipy_loop(np.log(N), np.log(D), np.log(L), grid, numeric=False)
    rows["scipy_loop_analytic_grad"] = {
        "wall_s": wall,
        "cpu_s": cpu,
        "objective": f,
        "starts": len(grid),
        "coefficients": {"E": float(np.exp(x[2])), "alpha": float(x[3]), "beta": float(x[4])},
    }
    print("scipy_loop_analytic_grad", rows["scipy_loop_analytic_grad"], flush=True)
    sub = grid[:: args.loop_numeric_every]
    wall, cpu, f, x = scipy_loop(np.log(N), np.log(D), np.log(L), sub, numeric=True)
    rows["scipy_loop_numeric_grad_subset"] = {
        "wall_s": wall,
        "cpu_s": cpu,
        "objective": f,
        "starts": len(sub),
        "cpu_per_start_s": cpu / len(sub),
    }
    out["parametric_epoch"] = rows
    base = rows["scipy_loop_analytic_grad"]
    out["speedup_vs_scipy_loop_analytic"] = {
        k: {"wall": base["wall_s"] / rows[k]["wall_s"], "cpu": base["cpu_s"] / rows[k]["cpu_s"]}
        for k in ("batched_halving", "batched_full")
    }
    numeric_all = rows["scipy_loop_numeric_grad_subset"]["cpu_per_start_s"] * len(grid)
    out["scipy_loop_numeric_grad_all_starts_cpu_s_estimate"] = numeric_all
    out["load_avg_at_end"] = os.getloadavg()

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "laws.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"{'case':45s} {'wall s':>9s} {'cpu s':>9s}  note")
    for k in ("suite_porian", "suite_synthetic_1000"):
        print(
            f"{k + f' ({args.bootstrap} bootstrap)':45s} {out[k]['wall_s']:9.1f} {out[k]['cpu_s']:9.1f}  "
            f"{out[k]['n_runs']} runs, "
            f"laws {','.join(out[k]['laws'])}, errors {out[k]['errors'] or 'none'}"
        )
    for k, r in rows.items():
        print(
            f"{'parametric ' + k:45s} {r['wall_s']:9.1f} {r['cpu_s']:9.1f}  "
            f"objective {r['objective']:.9e}, {r['starts']} starts"
        )
    for k, v in out["speedup_vs_scipy_loop_analytic"].items():
        print(f"speed-up {k} vs scipy loop (analytic grad): wall {v['wall']:.1f}x, cpu {v['cpu']:.1f}x")
    print(
        f"scipy loop with numeric gradients, all {len(grid)} starts "
        f"(estimate from the subset): {numeric_all:.0f} cpu s"
    )
    print(f"load average start {out['load_avg_at_start']}, end {out['load_avg_at_end']}")


if __name__ == "__main__":
    main()
