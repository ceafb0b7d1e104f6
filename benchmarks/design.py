"""Grid ladder vs adaptive run design for the same target, same trainer and data, measured on the CPU.

    python benchmarks/design.py --grid-store /work/vrun1/mlflow.db [--experiment windtunnel_validation_cpu]
        [--observed-loss L] [--k 2] [--rounds 6] [--bootstrap 50] [--seed-budgets 2]
        [--points 0.25,0.5,1.0 [--mode wsm|wsd]] [--repeats R] [--seed S] [--out R.json]
    python benchmarks/design.py --rescore R.json (--grid-store DB | --observed-loss L)   # fill abs errors

The grid is the validation study's IsoFLOP ladder (its runs read from a COPY of ``--grid-store``; the store
itself is never written). The target is the validation study's target run: its (N, D) from the target
trials' ``run_config`` tags, its observed loss the mean of their finished losses (or ``--observed-loss``).

- grid: the parametric law fitted on all ladder runs (``propose.fit_target`` at the target's (N, D)); its
  95 % interval width and |prediction − observed|; and the width of every prefix of the ladder in budget
  order (what the grid reaches at lower compute);
- adaptive: starts from the ladder's ``--seed-budgets`` smallest budgets, then ``--rounds`` rounds of
  ``propose`` (k runs that most narrow the target's interval within the round's budget,
  ``windtunnel.laws.design``), each run trained for real by the trainer (``trainer.loop.train``, one thread,
  the ladder's base config and data) and refitted. Its total compute is ``--adaptive-fraction`` of the
  grid's (a few CPU minutes at the default 5 %), split evenly over the rounds; every round is recorded, and
  the first round whose width is at most the grid's gives ``compute_ratio``. With ``--points`` each proposed
  run may carry points at those token fractions (``trainer.points``, mode ``--mode``, default the ladder's
  schedule): the design weighs all its rows against its FLOPs counted once, the trainer takes them, and
  their rows join every later fit (``runtable.expand_points``).
- repeats: ``--repeats R`` runs the adaptive design R times from the same seed runs; repeat i trains its
  proposals with seed ``--seed`` + i and fits with bootstrap seed 1000·i (+ round for the proposal's fit).
  The acceptance keys are the means over the repeats; ``repeat_stats`` holds mean, std (ddof 1), min, max.

Compute is training FLOPs as the trainer counts them, output layer included (``expand.trial_flops``), for
both designs. ``compute_ratio`` = adaptive compute when its width first reaches the grid's ÷ grid compute
(null when it did not within the rounds). Writes ``--out`` (benchmarks/results/design.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import PointsConfig, RunConfig  # noqa: E402
from windtunnel.orchestrator.expand import trial_flops  # noqa: E402
from windtunnel.orchestrator.propose import fit_target, propose, shape_of  # noqa: E402


def load_grid(store: Path, experiment: str) -> tuple[pd.DataFrame, dict[str, RunConfig], list[RunConfig]]:
    """(ladder run table with ``cost``, run_id -> RunConfig, the target trials' RunConfigs), from a copy."""
    from mlflow import MlflowClient

    from windtunnel.orchestrator.spec_target import TARGET_STUDY
    from windtunnel.orchestrator.tracking import runs_from_mlflow

    tmp = Path(tempfile.mkdtemp(prefix="design_bench_"))
    shutil.copy(store, tmp / "grid.db")
    uri = f"sqlite:///{tmp / 'grid.db'}"
    df = runs_from_mlflow(uri, experiment)
    client = MlflowClient(uri)
    cfgs = {
        rid: RunConfig.model_validate_json(client.get_run(rid).data.tags["run_config"])
        for rid in df["run_id"]
    }
    is_target = df["study"] == TARGET_STUDY
    targets = [cfgs[r] for r in df.loc[is_target, "run_id"]]
    grid = df[~is_target & (df["status"] == "finished")].reset_index(drop=True)
    grid["cost"] = [trial_flops(cfgs[r]) for r in grid["run_id"]]
    observed = df.loc[is_target & (df["status"] == "finished"), "loss"]
    grid.attrs["observed"] = [float(v) for v in observed]
    return grid, cfgs, targets


def target_point(target: RunConfig) -> tuple[float, float, float]:
    """(N, D, C = M·D) of the target run as the run table counts it."""
    from windtunnel.orchestrator.trial import run_table_row

    row = run_table_row(target, float(target.steps * target.batch_tokens), math.nan)
    return row["params"], row["tokens"], row["compute"]


def fit_record(
    runs: pd.DataFrame, point: tuple[float, float], compute: float, args: Any, seed: int = 0
) -> dict[str, Any]:
    tf = fit_target(runs, compute, args.bootstrap, seed=seed, point=point)
    return {"n_runs": int(len(runs)), "predicted": tf.value, "pi95": [tf.lo, tf.hi], "width": tf.width}


def grid_curve(grid: pd.DataFrame, point, compute: float, args: Any) -> list[dict[str, Any]]:
    """The grid's width at every prefix of its budgets (ascending), with the prefix's compute."""
    from windtunnel.laws.base import budget_labels

    labels, _ = budget_labels(grid["compute"].to_numpy(float))
    out = []
    for top in range(int(labels.max()) + 1):
        sub = grid[labels <= top]
        if len(sub) < 6 or sub["params"].nunique() < 2 or sub["tokens"].nunique() < 2:
            continue
        rec = fit_record(sub, point, compute, args)
        out.append({"budgets": top + 1, "compute": float(sub["cost"].sum()), **rec})
        print(f"grid prefix {top + 1} budgets: {rec['n_runs']} runs, width {rec['width']:.4f}", flush=True)
    return out


def train_run(cfg: RunConfig, workdir: Path, run_id: str) -> dict[str, Any]:
    """Train one proposal with the trainer in a child process (one thread); its run-table row, with its
    point rows (``runtable.expand_points``: the run's own row first) under ``point_rows``."""
    cfg_path = workdir / f"{cfg.config_hash()}.yaml"
    cfg.to_yaml(cfg_path)
    code = (
        "import json,sys,torch; torch.set_num_threads(1)\n"
        "from trainer.config import RunConfig; from trainer.loop import train\n"
        "from windtunnel.orchestrator.trial import run_table_row\n"
        "from windtunnel.runtable import expand_points, stored_point_metrics\n"
        "cfg = RunConfig.from_yaml(sys.argv[1]); r = train(cfg)\n"
        "row = run_table_row(cfg, r.tokens, r.val_loss); row.update(status=r.status, wall_s=r.wall_s)\n"
        "row.update(run_id=sys.argv[2])\n"
        "row['point_rows'] = expand_points(row, stored_point_metrics(r.points))\n"
        "print('ROW' + json.dumps(row))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(cfg_path), run_id], capture_output=True, text=True, env=env
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"trainer failed: {proc.stderr[-2000:]}")
    return json.loads(lines[-1][3:])


def run_adaptive(grid, base, point, compute, grid_width, grid_cost, args, repeat: int = 0) -> dict[str, Any]:
    """Seed runs (the smallest budgets), then propose -> train -> refit rounds (module docstring). Repeat
    ``repeat`` trains its proposals with seed ``args.seed + repeat`` and fits with bootstrap seeds of its own;
    with ``args.points`` the proposals may carry points, whose rows join the fit."""
    from windtunnel.laws.base import budget_labels

    labels, _ = budget_labels(grid["compute"].to_numpy(float))
    runs = grid[labels < args.seed_budgets].drop(columns=["cost"]).reset_index(drop=True)
    spent = float(grid.loc[labels < args.seed_budgets, "cost"].sum())
    rounds = [{"round": 0, "compute": spent, **fit_record(runs, point, compute, args, seed=1000 * repeat)}]
    print(f"adaptive seed: {len(runs)} runs, {spent:.3g} FLOPs, width {rounds[0]['width']:.4f}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="design_runs_"))
    reached = spent if rounds[0]["width"] <= grid_width else None
    per_round = (args.adaptive_fraction * grid_cost - spent) / args.rounds
    base = base.model_copy(update={"seed": args.seed + repeat})
    for r in range(1, args.rounds + 1):
        if per_round <= 0:
            break
        fit_seed = 1000 * repeat + r
        ps = propose(
            runs,
            base,
            compute,
            args.k,
            per_round,
            args.bootstrap,
            fit_seed,
            shape=args.shape,
            point=point,
            points=args.pts,
        )
        if not ps.proposals:
            break
        trained = []
        for p in ps.proposals:
            t0 = time.perf_counter()
            row = train_run(p.cfg, workdir, f"adaptive-x{repeat}-r{r}-{p.cfg.config_hash()[:8]}")
            rows = [{**x, "sweep": "adaptive", "family": "dense"} for x in row.pop("point_rows")]
            trained.append(
                {
                    "d_model": p.cfg.model.d_model,
                    "n_layers": p.cfg.model.n_layers,
                    "tokens": p.tokens,
                    "points": [[x["tokens"], x["loss"]] for x in rows[1:]],
                    "flops": p.flops,
                    "loss": row["loss"],
                    "wall_s": time.perf_counter() - t0,
                }
            )
            runs = pd.concat([runs, pd.DataFrame(rows)], ignore_index=True)
            spent += p.flops
        rec = {"round": r, "compute": spent, "width_at_proposal": ps.width_before}
        rec.update(expected_width=ps.width_after, runs=trained, n_rows=int(len(runs)))
        rec.update(fit_record(runs, point, compute, args, seed=1000 * repeat))
        rounds.append(rec)
        n_pts = sum(len(t["points"]) for t in trained)
        print(
            f"adaptive round {r}: {len(trained)} runs (+{n_pts} point rows), {spent:.3g} FLOPs, "
            f"width {rec['width']:.4f} (expected {ps.width_after:.4f})",
            flush=True,
        )
        if rec["width"] <= grid_width and reached is None:
            reached = spent
    return {"rounds": rounds, "reached_compute": reached, "seed": args.seed + repeat}


def width_at(curve: list[dict[str, Any]], compute: float) -> float | None:
    """The grid's width at the largest prefix costing no more than ``compute`` (None if none does)."""
    fit = [c for c in curve if c["compute"] <= compute * (1 + 1e-9)]
    return fit[-1]["width"] if fit else None


ACCEPTANCE = ("compute_ratio", "pi_width_adaptive", "abs_err_adaptive")


def repeat_record(ad: dict[str, Any], grid_cost: float, observed: float | None, curve) -> dict[str, Any]:
    """One repeat's acceptance figures (``compute_ratio`` null when its width never reached the grid's)."""
    last = ad["rounds"][-1]
    reached = ad["reached_compute"]
    return {
        "seed": ad["seed"],
        "compute_ratio": reached / grid_cost if reached is not None else None,
        "pi_width_adaptive": last["width"],
        "abs_err_adaptive": abs(last["predicted"] - observed) if observed is not None else None,
        "predicted_adaptive": last["predicted"],
        "adaptive_compute": last["compute"],
        "pi_width_grid_at_adaptive_compute": width_at(curve, last["compute"]),
        "widths_by_round": [r["width"] for r in ad["rounds"]],
    }


def repeat_stats(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample std (ddof 1), min and max over the repeats of each acceptance figure; a figure that is
    null in some repeat (width not reached) is summarised over the others, with how many it is over."""
    out = {}
    for k in ACCEPTANCE:
        v = [r[k] for r in reps if r[k] is not None]
        out[k] = {
            "n": len(v),
            "of": len(reps),
            "mean": float(np.mean(v)) if v else None,
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "min": float(min(v)) if v else None,
            "max": float(max(v)) if v else None,
        }
    return out


def summarise(grid_rec, curve, ads, grid_cost, observed, args) -> dict[str, Any]:
    """The acceptance keys (the adaptive ones: means over the repeats, null where no repeat has a value),
    each repeat's figures and their spread, the grid's record and the rounds of every repeat."""
    reps = [repeat_record(ad, grid_cost, observed, curve) for ad in ads]
    stats = repeat_stats(reps)
    mode = args.pts.mode if args.pts is not None else None
    bp, bp_note = branch_point_diff(mode or "wsm")
    return {
        **{k: stats[k]["mean"] for k in ACCEPTANCE},
        "pi_width_grid": grid_rec["width"],
        "abs_err_grid": abs(grid_rec["predicted"] - observed) if observed is not None else None,
        "branch_point_max_abs_diff": bp,
        "points": args.pts.model_dump(mode="json", exclude_none=True) if args.pts is not None else None,
        "repeat_stats": stats,
        "repeats": reps,
        "grid_compute": grid_cost,
        "adaptive_compute": float(np.mean([r["adaptive_compute"] for r in reps])),
        "observed_target_loss": observed,
        "grid": grid_rec,
        "grid_curve": curve,
        "adaptive": ads[0],
        "adaptive_repeats": ads,
        "notes": [
            bp_note,
            "compute_ratio, pi_width_adaptive, abs_err_adaptive: means over the repeats (repeat_stats)",
            (
                f"adaptive runs may carry points at {args.pts.at_fractions} (mode {mode}); "
                "their rows join the fit"
                if args.pts is not None
                else "adaptive design without many points per run (one point per trained run)"
            ),
            "compute = training FLOPs with the output layer and any WSD branches (expand.trial_flops), "
            "both designs",
        ],
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("pts", "shape")
        },
    }


def observed_from_store(store: Path, experiment: str) -> float | None:
    """Mean finished loss of the target trials in a copy of the store (None while none has finished)."""
    grid, _, _ = load_grid(store, experiment)
    return float(np.mean(grid.attrs["observed"])) if grid.attrs["observed"] else None


def branch_point_diff(mode: str = "wsm") -> tuple[float | None, str]:
    """The many-points-per-run validation's max |point − independent run| (nats) for points of ``mode`` with
    the ladder's warmup fraction (the configuration the adaptive runs use), from its own result
    (``benchmarks/branch_points.py``: branch_points.json for WSM, branch_points_wsd.json for WSD)."""
    name = "branch_points.json" if mode == "wsm" else f"branch_points_{mode}.json"
    src = Path(__file__).resolve().parent / "results" / name
    if not src.exists():
        return None, f"branch_point_max_abs_diff: null; run benchmarks/branch_points.py --mode {mode} first"
    val = json.loads(src.read_text()).get("branch_point_max_abs_diff")
    return (
        val,
        f"branch_point_max_abs_diff from {src.name} (benchmarks/branch_points.py, {mode.upper()} points)",
    )


def rescore(path: Path, observed: float) -> dict[str, Any]:
    """Fill the absolute errors of a written result from the observed target loss (no refit, no training)."""
    out = json.loads(path.read_text())
    out["observed_target_loss"] = observed
    out["abs_err_grid"] = abs(out["grid"]["predicted"] - observed)
    for rep in out.get("repeats", []):
        rep["abs_err_adaptive"] = abs(rep["predicted_adaptive"] - observed)
    if out.get("repeats"):
        out["repeat_stats"] = repeat_stats(out["repeats"])
        out["abs_err_adaptive"] = out["repeat_stats"]["abs_err_adaptive"]["mean"]
    else:
        out["abs_err_adaptive"] = abs(out["adaptive"]["rounds"][-1]["predicted"] - observed)
    mode = (out.get("points") or {}).get("mode", "wsm")
    out["branch_point_max_abs_diff"], note = branch_point_diff(mode)
    out["notes"] = [n for n in out.get("notes", []) if not n.startswith("branch_point_max_abs_diff")] + [note]
    out["rescored_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    path.write_text(json.dumps(out, indent=2, default=float))
    return out


def points_config(args: argparse.Namespace, base: RunConfig) -> PointsConfig | None:
    """``--points``/``--mode`` as the PointsConfig the proposals may carry (mode default: the ladder's
    schedule when it is wsm or wsd, else wsm)."""
    if args.points is None:
        return None
    kind = base.schedule.kind
    mode = args.mode or (kind if kind in ("wsm", "wsd") else "wsm")
    try:
        return PointsConfig(at_fractions=[float(x) for x in args.points.split(",")], mode=mode)
    except ValueError as err:
        raise SystemExit(f"design.py: error: --points {args.points}: {str(err).splitlines()[0]}") from None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid-store", type=Path, default=None, help="the validation study's sqlite store")
    p.add_argument("--rescore", type=Path, default=None, help="fill abs errors of this result JSON and stop")
    p.add_argument("--experiment", default="windtunnel_validation_cpu")
    p.add_argument(
        "--observed-loss", type=float, default=None, help="observed target loss (else the store's)"
    )
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument(
        "--adaptive-fraction",
        type=float,
        default=0.05,
        help="the adaptive design's total compute (seed included) as a share of the grid's; split evenly "
        "over the rounds as each round's budget",
    )
    p.add_argument("--bootstrap", type=int, default=50)
    p.add_argument(
        "--seed-budgets", type=int, default=2, help="the ladder's smallest budgets the design starts from"
    )
    p.add_argument(
        "--points",
        default=None,
        help="token fractions, e.g. 0.25,0.5,1.0: the adaptive runs may give a row at each (trainer.points)",
    )
    p.add_argument("--mode", choices=["wsm", "wsd"], default=None, help="points mode (default: the ladder's)")
    p.add_argument(
        "--aspect-ratio",
        type=float,
        default=None,
        help="d_model / n_layers of the proposed models (default: the largest grid run's; the 1-layer "
        "study's ladder rule has 100000: every model one layer)",
    )
    p.add_argument("--repeats", type=int, default=1, help="adaptive designs, each with its own seeds")
    p.add_argument("--seed", type=int, default=0, help="training seed of the first repeat's proposals")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "design.json")
    args = p.parse_args()
    if args.repeats < 1:
        raise SystemExit("design.py: error: --repeats must be >= 1")
    return args


def main() -> int:
    args = parse_args()
    if args.rescore is not None:
        obs = args.observed_loss
        if obs is None and args.grid_store is not None:
            obs = observed_from_store(args.grid_store, args.experiment)
        if obs is None:
            raise SystemExit(
                "design.py: error: --rescore needs --observed-loss or a store with a finished target"
            )
        out = rescore(args.rescore, obs)
        print(json.dumps({k: out[k] for k in ("observed_target_loss", "abs_err_grid", "abs_err_adaptive")}))
        return 0
    if args.grid_store is None:
        raise SystemExit("design.py: error: --grid-store is required")
    t0 = time.perf_counter()
    grid, cfgs, targets = load_grid(args.grid_store, args.experiment)
    if not targets:
        raise SystemExit("design.py: error: the grid store has no target run to take the target point from")
    n_t, d_t, c_t = target_point(targets[0])
    observed = args.observed_loss
    if observed is None and grid.attrs["observed"]:
        observed = float(np.mean(grid.attrs["observed"]))
    grid_cost = float(grid["cost"].sum())
    print(
        f"target N={n_t:.4g} D={d_t:.4g} C={c_t:.3g}; grid {len(grid)} runs, {grid_cost:.3g} FLOPs",
        flush=True,
    )
    grid_rec = fit_record(grid, (n_t, d_t), c_t, args)
    curve = grid_curve(grid, (n_t, d_t), c_t, args)
    base = cfgs[grid.loc[grid["compute"].idxmax(), "run_id"]]
    args.pts = points_config(args, base)
    args.shape = shape_of(base)
    if args.aspect_ratio is not None:
        args.shape = args.shape.model_copy(update={"aspect_ratio": args.aspect_ratio})
    ads = []
    for i in range(args.repeats):
        print(f"repeat {i + 1}/{args.repeats} (seed {args.seed + i})", flush=True)
        ads.append(run_adaptive(grid, base, (n_t, d_t), c_t, grid_rec["width"], grid_cost, args, i))
    out = summarise(grid_rec, curve, ads, grid_cost, observed, args)
    out["target"] = {"params": n_t, "tokens": d_t, "compute": c_t, "shape": shape_of(targets[0]).model_dump()}
    out["wall_s"] = time.perf_counter() - t0
    out["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    out["commit"] = commit.stdout.strip()
    out["command"] = " ".join(["python", "benchmarks/design.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    print(
        json.dumps(
            {
                k: out[k]
                for k in (
                    "compute_ratio",
                    "pi_width_grid",
                    "pi_width_adaptive",
                    "abs_err_grid",
                    "abs_err_adaptive",
                    "repeat_stats",
                )
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
