"""The frontier-law design (``windtunnel.orchestrator.propose_frontier``) replayed on a real ladder.

The LR-searched validation ladder (``experiments/results/windtunnel_validation_cpu_lr*/``: 5 budgets
5e9-5e11 FLOPs, 5 sizes x 4 LRs each, and targets 30x, 50x, 100x beyond, each observed with 2-3 seeds) is
cut to its lowest ``--start`` budgets. Every later budget is a candidate block in two compositions that the
ladder already trained: its 5 sizes at all 4 LRs, and its 5 sizes at the one grid LR nearest the start fit's
``lr_opt`` (a block without an LR search). For each candidate:

- expected: the linearised interval width at each target after the block (``propose_frontier.choose_blocks``
  on the start fit, the block's FLOPs as trained), what the design ranks by;
- actual: the frontier law refitted on the start budgets plus the block (the engine's fit, ``--bootstrap``
  resamples): its prediction, 95 % interval and error at each observed target.

The design's picks (k = 1 at the 30x target's compute) are marked: without a budget (greedy per FLOP) and
within ``--budget-share`` of the full grid ladder's FLOPs (the better of per-FLOP and plain greedy,
``design.greedy_design``). Nothing is trained: every block is a set of runs the ladder has, so the numbers are
the real outcome of each choice.

    python benchmarks/design_frontier.py [--start 3] [--bootstrap 100] [--budget-share 0.25]

Prints a table; writes ``benchmarks/results/design_frontier.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the validation study's files

from validation_targets import ladder_runs, summaries  # noqa: E402


def targets() -> list[dict]:
    """(compute, observed mean loss, seed std, factor) of every committed target of the LR ladder."""
    return [
        {
            "study": s["study"],
            "compute": float(s["target_compute"]),
            "observed": float(s["observed_loss"]),
            "seed_std": float(s["seed_noise_std"]),
            "factor": float(s["extrapolation_factor"]),
        }
        for s in summaries()
    ]


def fit(runs: pd.DataFrame, bootstrap: int):
    from windtunnel.laws import fit_laws

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_laws(runs.reset_index(drop=True), laws=["frontier", "lr_opt"], bootstrap=bootstrap, seed=0)


def outcome(lawset, tgts: list[dict]) -> list[dict]:
    if "frontier" not in lawset.laws:
        return [{"error": lawset.errors.get("frontier", "no frontier law")} for _ in tgts]
    rows = []
    for t in tgts:
        v, lo, hi = (float(x) for x in lawset.predict("frontier", t["compute"]))
        rows.append(
            {
                "predicted": v,
                "pi95": [lo, hi],
                "width": hi - lo,
                "error": t["observed"] - v,
                "inside": bool(lo <= t["observed"] <= hi),
            }
        )
    return rows


def main() -> None:
    from windtunnel.laws.base import budget_labels
    from windtunnel.orchestrator.propose_frontier import choose_blocks, frontier_state

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", type=int, default=3, help="lowest budgets the design starts from")
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--budget-share", type=float, default=0.25, help="the budgeted pick's FLOPs / the grid's")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/design_frontier.json")
    args = ap.parse_args()
    t0 = time.time()
    runs, tgts = ladder_runs(), targets()
    labels, centers = budget_labels(runs["compute"].to_numpy(float))
    start = runs[labels < args.start]
    base_set = fit(start, args.bootstrap)
    cands = []
    for b in range(args.start, len(centers)):
        block = runs[labels == b]
        lr_star = float(base_set.predict("lr_opt", centers[b])[0]) if "lr_opt" in base_set.laws else math.nan
        lrs = np.unique(block["lr"].to_numpy(float))
        one = lrs[np.argmin(np.abs(np.log(lrs / lr_star)))] if math.isfinite(lr_star) else lrs[len(lrs) // 2]
        cands.append({"name": f"C={centers[b]:.2g}, 4 LRs", "budget": float(centers[b]), "runs": block})
        cands.append(
            {
                "name": f"C={centers[b]:.2g}, lr {one:.2g} (lr_opt {lr_star:.2g})",
                "budget": float(centers[b]),
                "runs": block[np.isclose(block["lr"], one)],
            }
        )
    cost = np.array([float(c["runs"]["compute"].sum()) for c in cands])
    budgets = np.array([c["budget"] for c in cands])
    states = [frontier_state(base_set, t["compute"]) for t in tgts]
    pick = choose_blocks(states[0], budgets, cost, k=1).chosen
    budget = args.budget_share * float(runs["compute"].sum())
    pick_b = choose_blocks(states[0], budgets, cost, k=1, budget=budget).chosen
    rows = [{"name": f"start: {args.start} budgets", "flops": float(start["compute"].sum()),
             "expected_width": [s.width for s in states], "actual": outcome(base_set, tgts)}]  # fmt: skip
    for i, c in enumerate(cands):
        expected = [choose_blocks(s, budgets[[i]], cost[[i]], k=1).width_after[0] for s in states]
        lawset = fit(pd.concat([start, c["runs"]]), args.bootstrap)
        mark = ("  <- pick per FLOP" if i in pick else "") + (
            f"  <- pick within {budget:.2g}" if i in pick_b else ""
        )
        rows.append({"name": c["name"] + mark, "flops": float(cost[i]),
                     "expected_width": expected, "actual": outcome(lawset, tgts)})  # fmt: skip
    grid = fit(runs, args.bootstrap)
    rows.append({"name": "grid: all budgets, 4 LRs", "flops": float(runs["compute"].sum()),
                 "expected_width": [math.nan] * len(tgts), "actual": outcome(grid, tgts)})  # fmt: skip

    head = " | ".join(f"{t['factor']:.0f}x: exp. width / width / error" for t in tgts)
    print(f"| ladder | FLOPs | {head} |")
    for r in rows:
        cells = []
        for e, a in zip(r["expected_width"], r["actual"], strict=True):
            if "error" in a and "width" not in a:
                cells.append(f"{e:.3f} / no fit")
            else:
                mark = "" if a["inside"] else " (outside)"
                cells.append(f"{e:.3f} / {a['width']:.3f} / {a['error']:+.3f}{mark}")
        print(f"| {r['name']} | {r['flops']:.3g} | " + " | ".join(cells) + " |")
    for t in tgts:
        c, obs, std = t["compute"], t["observed"], t["seed_std"]
        print(f"target {t['factor']:.0f}x: C = {c:.3g}, observed {obs:.4f} (seed std {std:.4f})")
    out = {"start_budgets": args.start, "bootstrap": args.bootstrap, "targets": tgts, "rows": rows,
           "design_pick_per_flop": [cands[i]["name"] for i in pick], "budget": budget,
           "design_pick_within_budget": [cands[i]["name"] for i in pick_b],
           "wall_s": time.time() - t0}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} ({out['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
