"""Points from one run against independently trained runs (trainer.points), on the CPU.

For each model size N, one parent run with ``points: {at_fractions: FRACTIONS, mode: MODE}`` trains D tokens;
for each f_k < 1 an independent run of the same config (same seed and data, no points) trains D_k = s_k·B
tokens (WSM: merged at its own end; WSD: decayed over the branch's b_k updates at its end) and its final
validation loss is compared with the parent's point at D_k (same validation batches).

- Warmup: by default 2 % of each run's own updates, as a sweep with ``warmup_fraction`` trains it, so the
  point (the parent's longer warmup) and the independent run differ in warmup; a second independent run
  with the parent's warmup in updates then separates the warmup's share from the merge/branch's own.
  With ``--warmup-steps W`` every run has ``schedule.warmup_steps: W``: point and independent run share
  data order, warmup and LR up to D_k, so they are equal by construction (a merge of the same checkpoints,
  a branch of the same updates) and the row's "diff" is 0 up to float summation order.
- Seed noise: every pair's independent run is also trained with each of ``--other-seeds``; |point −
  independent, other seed| is the comparison a researcher cares about (a point against a run that shares
  nothing with it but the config), and the std over seeds (ddof = 1) of the independent runs is its floor.

    python benchmarks/branch_points.py [--mode wsm|wsd] [--d-models 32,48] [--tokens 800000]
        [--fractions 0.25,0.5,1.0] [--warmup-steps W] [--other-seeds 1,2]
        [--out benchmarks/results/branch_points.json]

Writes ``branch_point_max_abs_diff`` (nats; max over pairs of |point − independent, same seed|),
``max_abs_diff_same_warmup`` (against the parent's-warmup runs, fraction warmup only),
``max_abs_diff_other_seeds``, ``seed_std_pooled`` and ``seed_diff_std`` (√2 × pooled std: the std of a
difference of two seeds), the rows, the command, date, commit and wall time. Runs the trainer directly (no
Ray), one thread.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainer.config import RunConfig
from trainer.flops import count_params
from trainer.loop import train
from trainer.points import point_specs
from trainer.schedule import LRSchedule

REPO = Path(__file__).resolve().parents[1]


def base_config(d_model: int, tokens: int, mode: str, seed: int = 0) -> dict[str, Any]:
    """A ladder-sized dense model (as benchmarks/seed_noise.py's point) on the default corpus."""
    return {
        "name": f"points-d{d_model}",
        "seed": seed,
        "device": "cpu",
        "eval_interval": 10_000,
        "eval_batches": 16,
        "log_interval": 50,
        "model": {
            "vocab_size": 512,
            "d_model": d_model,
            "n_layers": 1,
            "n_heads": d_model // 8,
            "n_kv_heads": d_model // 8,
            "head_dim": 8,
            "d_ffn": round(d_model * 8 / 3 / 8) * 8,
            "seq_len": 128,
        },
        "optim": {"lr": 3.0e-3, "batch_size": 4, "tokens": tokens},
        "schedule": {"kind": mode, "decay_fraction": 0.2},
        "data": {"source": "default", "max_corpus_bytes": 32_000_000},
    }


def independent(
    parent: RunConfig, step: int, branch_steps: int, seed: int, same_warmup: bool = False
) -> RunConfig:
    """The run a researcher would train to D_k: the parent's config without points, ending at D_k (WSD: plus
    the branch, decayed over it), with the parent's ``schedule`` (a warmup fraction of its own steps, or the
    parent's ``warmup_steps``). ``same_warmup``: the parent's warmup in updates (the point's own prefix) even
    when the parent gives a fraction, which isolates the merge/branch itself."""
    data = parent.model_dump(mode="json")
    data.pop("points", None)
    total = step + branch_steps
    data["optim"]["tokens"] = total * parent.batch_tokens
    data["seed"] = seed
    if branch_steps:
        data["schedule"]["decay_fraction"] = branch_steps / total
    if same_warmup:
        data["schedule"]["warmup_steps"] = LRSchedule.from_config(parent).warmup_steps
    return RunConfig.from_dict(data)


def compare_pair(parent_cfg: RunConfig, p: dict[str, float], n: int, args: argparse.Namespace) -> dict:
    """One (N, D_k) row: the point against the independent run (seed 0), against it with the parent's
    warmup in updates (only when the parent's warmup is a fraction; else that is the same run) and against
    the independent run with each of ``--other-seeds`` (the seed noise of the comparison)."""
    spec = next(s for s in point_specs(parent_cfg) if s.fraction == p["point_fraction"])

    def run(seed: int, same: bool = False) -> Any:
        return train(independent(parent_cfg, spec.step, spec.branch_steps, seed, same))

    point = p["point_val_loss"]
    alone = run(parent_cfg.seed)
    row = {
        "d_model": parent_cfg.model.d_model,
        "N": n,
        "fraction": p["point_fraction"],
        "D_k": int(p["point_at_tokens"]),
        "tokens": int(p["point_tokens"]),
        "warmup_steps": LRSchedule.from_config(parent_cfg).warmup_steps,
        "independent_warmup_steps": LRSchedule.from_config(
            independent(parent_cfg, spec.step, spec.branch_steps, parent_cfg.seed)
        ).warmup_steps,
        "point_loss": point,
        "independent_loss": alone.val_loss,
        "diff": point - alone.val_loss,
    }
    if parent_cfg.schedule.warmup_steps is None:
        same = run(parent_cfg.seed, True).val_loss
        row.update(same_warmup_loss=same, diff_same_warmup=point - same)
    others = [run(s).val_loss for s in args.other_seeds]
    losses = [alone.val_loss, *others]
    row.update(
        other_seeds=args.other_seeds,
        other_seed_losses=others,
        diff_other_seeds=[point - v for v in others],
        seed_std=statistics.stdev(losses) if len(losses) > 1 else None,
    )
    print(
        f"  f={row['fraction']:<5} point {point:.4f} independent {alone.val_loss:.4f}"
        + (f" (parent's warmup: {row['same_warmup_loss']:.4f})" if "same_warmup_loss" in row else "")
        + f"; other seeds {', '.join(f'{v:.4f}' for v in others)}",
        flush=True,
    )
    return row


def compare_size(d_model: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    data = base_config(d_model, args.tokens, args.mode)
    data["points"] = {"at_fractions": args.fractions, "mode": args.mode}
    if args.warmup_steps is not None:
        data["schedule"]["warmup_steps"] = args.warmup_steps
    parent_cfg = RunConfig.from_dict(data)
    parent = train(parent_cfg)
    n = count_params(parent_cfg.model).active_nonembed
    w = LRSchedule.from_config(parent_cfg).warmup_steps
    print(
        f"d_model {d_model}: N = {n:,}, parent {parent.tokens:,} tokens, warmup {w}, "
        f"val_loss {parent.val_loss:.4f}"
    )
    specs = {p.fraction: p for p in point_specs(parent_cfg)}
    return [
        compare_pair(parent_cfg, p, n, args)
        for p in parent.points
        if specs[p["point_fraction"]].step < parent_cfg.steps
    ]


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip()


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table of RESULTS.md: the point against the independent run of the same seed, of the
    parent's warmup (when it differs) and of the other seeds, with the seed std of the independent runs."""
    same = any("same_warmup_loss" in r for r in rows)
    head = (
        "| N (non-emb.) | d_model | f_k | D_k | warmup (point / indep.) | point loss | independent | diff |"
    )
    if same:
        head += " indep., parent's warmup | diff |"
    head += " other seeds | diff | seed std |"
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for r in rows:
        line = (
            f"| {r['N']:,} | {r['d_model']} | {r['fraction']} | {r['D_k']:,} | {r['warmup_steps']} / "
            f"{r['independent_warmup_steps']} | {r['point_loss']:.4f} | {r['independent_loss']:.4f} "
            f"| {r['diff']:+.4f} |"
        )
        if same:
            line += f" {r['same_warmup_loss']:.4f} | {r['diff_same_warmup']:+.4f} |"
        others = " / ".join(f"{v:.4f}" for v in r["other_seed_losses"])
        diffs = " / ".join(f"{v:+.4f}" for v in r["diff_other_seeds"])
        std = f"{r['seed_std']:.4f}" if r["seed_std"] is not None else "–"
        line += f" {others} | {diffs} | {std} |"
        lines.append(line)
    return lines


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Max |diff| against the same seed, the parent's warmup and the other seeds; the seed noise floor: the
    pooled std of the independent runs over seeds (root mean of the per-pair variances) and the std of a
    difference of two seeds, √2 times it."""
    stds = [r["seed_std"] for r in rows if r["seed_std"] is not None]
    pooled = math.sqrt(sum(v * v for v in stds) / len(stds)) if stds else None
    other = [abs(d) for r in rows for d in r["diff_other_seeds"]]
    out = {
        "branch_point_max_abs_diff": max(abs(r["diff"]) for r in rows),
        "max_abs_diff_other_seeds": max(other) if other else None,
        "seed_std_pooled": pooled,
        "seed_diff_std": math.sqrt(2.0) * pooled if pooled is not None else None,
    }
    if all("diff_same_warmup" in r for r in rows):
        out["max_abs_diff_same_warmup"] = max(abs(r["diff_same_warmup"]) for r in rows)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["wsm", "wsd"], default="wsm")
    ap.add_argument("--d-models", default="32,48")
    ap.add_argument("--tokens", type=int, default=800_000, help="the parent run's D")
    ap.add_argument("--fractions", default="0.25,0.5,1.0")
    ap.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="schedule.warmup_steps of the parent and every independent run (default: 2%% of each run's own)",
    )
    ap.add_argument("--other-seeds", default="1,2", help="more seeds of every pair's independent run")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/branch_points.json"))
    args = ap.parse_args(argv)
    args.fractions = [float(x) for x in args.fractions.split(",")]
    args.other_seeds = [int(x) for x in args.other_seeds.split(",") if x]
    torch.set_num_threads(1)
    t0, commit = time.perf_counter(), _commit()  # the code that runs
    rows = [r for d in (int(x) for x in args.d_models.split(",")) for r in compare_size(d, args)]
    result = {
        "mode": args.mode,
        "warmup_steps": args.warmup_steps,
        **summary(rows),
        "rows": rows,
        "command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "commit": commit,
        "wall_s": time.perf_counter() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n".join(table(rows)))
    for k in ("branch_point_max_abs_diff", "max_abs_diff_same_warmup", "max_abs_diff_other_seeds"):
        if result.get(k) is not None:
            print(f"{k} = {result[k]:.4f} nats")
    if result["seed_std_pooled"] is not None:
        print(
            f"seed std (pooled) {result['seed_std_pooled']:.4f}; "
            f"of a difference of two seeds {result['seed_diff_std']:.4f}"
        )
    print(f"wall {result['wall_s']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
