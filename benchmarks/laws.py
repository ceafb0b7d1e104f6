"""Benchmark of the law engine: whole-suite wall time with 1,000 bootstrap resamples, the batched
parametric fit against a straightforward scipy loop over the same 4,500 Epoch grid starts, and the
bootstraps of the efficiency-leverage law and of StepFun's Step Law against the per-resample loops a
researcher would write.

    python benchmarks/laws.py [--bootstrap 1000] [--loop-numeric-every 25] [--sections all|new|...]

Writes benchmarks/results/laws.json (sections not run keep their previous numbers) and prints a table.
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


def leverage_bootstrap(n_boot: int, n_loop: int) -> dict:
    """EL-law bootstrap on noisy synthetic runs (Ling's published law, σ = 0.2 %): our batched bootstrap
    (all resamples in one batched L-BFGS, started at the full-data optimum) against the loop a researcher
    writes — resample the runs, rerun the whole fit (dense frontier grid + EL grid + polish) per resample."""
    from windtunnel.laws import load_laws
    from windtunnel.laws.base import bootstrap_weights, percentile_ci
    from windtunnel.laws.leverage import fit_leverage_law
    from windtunnel.laws.synthetic import synthetic_leverage_runs

    coef = load_laws("ling").laws["leverage"].coefficients
    runs = synthetic_leverage_runs(coef, sigma=0.002, seed=7)
    t0, c0 = time.perf_counter(), time.process_time()
    law = fit_leverage_law(runs, n_boot=n_boot, rng=np.random.default_rng(0), backtest=False)
    batched = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "resamples": n_boot}
    batched["ci95"] = {k: list(law.ci95[k]) for k in ("a", "d", "gamma", "beta")}
    rng = np.random.default_rng(1)
    W = bootstrap_weights(len(runs), n_loop, rng)[1:]
    draws = []
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for w in W:
            sample = runs.loc[np.repeat(np.arange(len(runs)), w.astype(int))].reset_index(drop=True)
            try:
                c = fit_leverage_law(sample, n_boot=0, backtest=False).coefficients
            except Exception:  # noqa: BLE001 - a degenerate resample
                continue
            draws.append([c[k] for k in ("a", "d", "gamma", "beta")])
    loop = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "resamples": n_loop}
    d = np.array(draws)
    loop["ci95"] = {k: list(percentile_ci(d[:, j])) for j, k in enumerate(("a", "d", "gamma", "beta"))}
    return {
        "n_runs": len(runs),
        "batched": batched,
        "loop_refit_per_resample": loop,
        "cpu_per_resample_ratio": (loop["cpu_s"] / n_loop) / (batched["cpu_s"] / n_boot),
    }


def steplaw_bootstrap(n_boot: int) -> dict:
    """Step Law bootstrap on StepFun's released dense runs: our batched weighted least squares (band
    recomputed in every resample) against StepFun's own procedure in code/fit_tool.py — pandas
    ``sample(frac=1, replace=True)`` of the band-filtered runs and a scikit-learn LinearRegression per
    resample (run serially here; they use a process pool)."""
    from sklearn.linear_model import LinearRegression

    from windtunnel.laws.anchors import load_steplaw
    from windtunnel.laws.base import percentile_ci
    from windtunnel.laws.steplaw import fit_steplaw_law

    runs = load_steplaw("dense")
    t0, c0 = time.perf_counter(), time.process_time()
    lr = fit_steplaw_law(runs, "steplaw_lr", n_boot=n_boot, rng=np.random.default_rng(0), backtest=False)
    bs = fit_steplaw_law(runs, "steplaw_batch", n_boot=n_boot, rng=np.random.default_rng(1), backtest=False)
    ours = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "resamples": n_boot}
    ours["ci95"] = {"alpha": list(lr.ci95["alpha"]), "beta": list(lr.ci95["beta"]), "b": list(bs.ci95["b"])}
    cell_min = runs.groupby(["params", "tokens"])["loss"].transform("min")
    kept = runs[(runs["loss"] / cell_min - 1).abs() < 0.0025].assign(
        logN=lambda d: np.log(d["params"]),
        logD=lambda d: np.log(d["tokens"]),
        loglr=lambda d: np.log(d["lr"]),
        logbs=lambda d: np.log(d["batch_tokens"]),
    )
    t0, c0 = time.perf_counter(), time.process_time()
    coefs = []
    for r in range(n_boot):
        sample = kept.sample(frac=1, replace=True, random_state=r)
        m_lr = LinearRegression().fit(sample[["logN", "logD"]], sample["loglr"])
        m_bs = LinearRegression().fit(sample[["logD"]], sample["logbs"])
        coefs.append([m_lr.coef_[0], m_lr.coef_[1], m_bs.coef_[0]])
    theirs = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "resamples": n_boot}
    c = np.array(coefs)
    theirs["ci95"] = {k: list(percentile_ci(c[:, j])) for j, k in enumerate(("alpha", "beta", "b"))}
    theirs["mean"] = dict(zip(("alpha", "beta", "b"), c.mean(0).tolist(), strict=True))
    return {
        "n_runs": len(runs),
        "n_band_runs": int(len(kept)),
        "batched_band_per_resample": ours,
        "stepfun_fit_tool_loop": theirs,
        "speedup_cpu": theirs["cpu_s"] / ours["cpu_s"],
        "speedup_wall": theirs["wall_s"] / ours["wall_s"],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument(
        "--loop-numeric-every", type=int, default=125, help="numeric-gradient loop on every k-th start"
    )
    p.add_argument(
        "--sections",
        default="all",
        help="all (default) or new (= the leverage and steplaw sections only)",
    )
    p.add_argument("--leverage-bootstrap", type=int, default=200)
    p.add_argument("--leverage-loop", type=int, default=40, help="resamples in the refit-per-resample loop")
    args = p.parse_args()
    sections = {"new": {"leverage", "steplaw"}, "all": {"suite", "parametric", "leverage", "steplaw"}}[
        args.sections
    ]
    path = RESULTS / "laws.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    load_start = os.getloadavg()
    out: dict = {**previous, "cpu_count": os.cpu_count(), "load_avg_at_start": load_start}
    if "suite" not in sections:  # the suite/parametric numbers keep the load they were measured under
        out["load_avg_at_start"] = previous.get("load_avg_at_start", load_start)
    if "leverage" in sections:
        out["leverage_bootstrap"] = leverage_bootstrap(args.leverage_bootstrap, args.leverage_loop)
        print("leverage_bootstrap", out["leverage_bootstrap"], flush=True)
    if "steplaw" in sections:
        out["steplaw_bootstrap"] = steplaw_bootstrap(args.bootstrap)
        print("steplaw_bootstrap", out["steplaw_bootstrap"], flush=True)
    if not {"suite", "parametric"} & sections:
        out["load_avg_new_sections"] = {"start": load_start, "end": os.getloadavg()}
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(out, indent=1, default=str))
        print_new(out)
        return

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
    out["load_avg_new_sections"] = {"start": load_start, "end": out["load_avg_at_end"]}

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
    print_new(out)
    print(f"load average start {out['load_avg_at_start']}, end {out['load_avg_at_end']}")


def print_new(out: dict) -> None:
    """Table rows of the leverage and Step Law bootstrap comparisons (when present)."""
    lev, step = out.get("leverage_bootstrap"), out.get("steplaw_bootstrap")
    if lev:
        for k in ("batched", "loop_refit_per_resample"):
            r = lev[k]
            print(
                f"{'leverage bootstrap ' + k:45s} {r['wall_s']:9.1f} {r['cpu_s']:9.1f}  "
                f"{r['resamples']} resamples, {r['cpu_s'] / r['resamples']:.3f} cpu s each, "
                f"gamma ci95 {np.round(r['ci95']['gamma'], 4).tolist()}"
            )
        print(f"leverage: cpu per resample, loop / batched = {lev['cpu_per_resample_ratio']:.1f}x")
    if step:
        for k in ("batched_band_per_resample", "stepfun_fit_tool_loop"):
            r = step[k]
            print(
                f"{'steplaw bootstrap ' + k:45s} {r['wall_s']:9.1f} {r['cpu_s']:9.1f}  "
                f"{r['resamples']} resamples, alpha ci95 {np.round(r['ci95']['alpha'], 3).tolist()}, "
                f"b ci95 {np.round(r['ci95']['b'], 3).tolist()}"
            )
        print(
            f"steplaw: StepFun loop / ours = {step['speedup_cpu']:.1f}x cpu, {step['speedup_wall']:.1f}x wall"
        )


if __name__ == "__main__":
    main()
