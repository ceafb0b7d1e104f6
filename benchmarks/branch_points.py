"""Points from one run against independently trained runs (trainer.points), on the CPU.

For each model size N, one parent run with ``points: {at_fractions: FRACTIONS, mode: MODE}`` trains D tokens;
for each f_k < 1 an independent run of the same config (same seed, data and warmup fraction, no points)
trains D_k = s_k·B tokens (WSM: merged at its own end; WSD: decayed over the branch's b_k updates at its
end) and its final validation loss is compared with the parent's point at D_k (same validation batches).
Its warmup is a fraction of its own (shorter) run, as a sweep would train it; a second independent run with
the parent's warmup in updates separates the warmup's share of the difference from the merge/branch's own.
The seed noise of the comparison: the independent run of one pair with ``--noise-seeds`` more seeds, sample
standard deviation (ddof = 1) over all its seeds.

    python benchmarks/branch_points.py [--mode wsm|wsd] [--d-models 32,48] [--tokens 800000]
        [--fractions 0.25,0.5,1.0] [--noise-seeds 1,2] [--out benchmarks/results/branch_points.json]

Writes ``branch_point_max_abs_diff`` (nats; max over pairs of |point − independent|),
``max_abs_diff_same_warmup`` (the same against the parent's-warmup runs), the rows, the seed
noise, the command, date, commit and wall time. Runs the trainer directly (no Ray), one thread.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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
    the branch, decayed over it). Its warmup is the same fraction of its own steps; with ``same_warmup`` it
    is the parent's warmup in updates (the point's own prefix), which isolates the merge/branch itself."""
    data = parent.model_dump(mode="json")
    data.pop("points", None)
    total = step + branch_steps
    data["optim"]["tokens"] = total * parent.batch_tokens
    data["seed"] = seed
    if branch_steps:
        data["schedule"]["decay_fraction"] = branch_steps / total
    w = LRSchedule.from_config(parent).warmup_steps
    if same_warmup:
        data["schedule"]["warmup_fraction"] = (w + 0.25) / total  # rounds to w updates
    cfg = RunConfig.from_dict(data)
    if same_warmup and LRSchedule.from_config(cfg).warmup_steps != w:
        raise ValueError(f"independent run at {step} updates: warmup is not the parent's {w} updates")
    return cfg


def compare_size(d_model: int, args: argparse.Namespace) -> tuple[list[dict[str, Any]], RunConfig]:
    data = base_config(d_model, args.tokens, args.mode)
    data["points"] = {"at_fractions": args.fractions, "mode": args.mode}
    parent_cfg = RunConfig.from_dict(data)
    parent = train(parent_cfg)
    n = count_params(parent_cfg.model).active_nonembed
    print(f"d_model {d_model}: N = {n:,}, parent {parent.tokens:,} tokens, val_loss {parent.val_loss:.4f}")
    rows = []
    specs = {p.fraction: p for p in point_specs(parent_cfg)}
    for p in parent.points:
        spec = specs[p["point_fraction"]]
        if spec.step >= parent_cfg.steps:
            continue
        alone = train(independent(parent_cfg, spec.step, spec.branch_steps, seed=0))
        diff = p["point_val_loss"] - alone.val_loss
        same = train(independent(parent_cfg, spec.step, spec.branch_steps, seed=0, same_warmup=True))
        rows.append(
            {
                "d_model": d_model,
                "N": n,
                "fraction": p["point_fraction"],
                "D_k": int(p["point_at_tokens"]),
                "tokens": int(p["point_tokens"]),
                "point_loss": p["point_val_loss"],
                "independent_loss": alone.val_loss,
                "diff": diff,
                "same_warmup_loss": same.val_loss,
                "diff_same_warmup": p["point_val_loss"] - same.val_loss,
            }
        )
        print(
            f"  f={p['point_fraction']:<5} point {p['point_val_loss']:.4f} independent {alone.val_loss:.4f}"
            f" (parent's warmup: {same.val_loss:.4f})"
        )
    return rows, parent_cfg


def seed_noise(parent_cfg: RunConfig, row: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    spec = next(p for p in point_specs(parent_cfg) if p.fraction == row["fraction"])
    losses = [row["independent_loss"]]
    for s in seeds:
        losses.append(train(independent(parent_cfg, spec.step, spec.branch_steps, seed=s)).val_loss)
    return {
        "d_model": row["d_model"],
        "fraction": row["fraction"],
        "seeds": [0, *seeds],
        "losses": losses,
        "std": statistics.stdev(losses) if len(losses) > 1 else None,
    }


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip()


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| N (non-emb.) | d_model | f_k | D_k | point loss | independent loss | diff (nats) "
        "| indep., parent's warmup | diff (nats) |",
        "|---" * 9 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['N']:,} | {r['d_model']} | {r['fraction']} | {r['D_k']:,} | {r['point_loss']:.4f} "
            f"| {r['independent_loss']:.4f} | {r['diff']:+.4f} | {r['same_warmup_loss']:.4f} "
            f"| {r['diff_same_warmup']:+.4f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["wsm", "wsd"], default="wsm")
    ap.add_argument("--d-models", default="32,48")
    ap.add_argument("--tokens", type=int, default=800_000, help="the parent run's D")
    ap.add_argument("--fractions", default="0.25,0.5,1.0")
    ap.add_argument("--noise-seeds", default="1,2", help="more seeds of the first pair's independent run")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/branch_points.json"))
    args = ap.parse_args(argv)
    args.fractions = [float(x) for x in args.fractions.split(",")]
    torch.set_num_threads(1)
    t0, commit = time.perf_counter(), _commit()  # the code that runs
    rows: list[dict[str, Any]] = []
    parents = []
    for d in (int(x) for x in args.d_models.split(",")):
        r, cfg = compare_size(d, args)
        rows += r
        parents.append(cfg)
    seeds = [int(x) for x in args.noise_seeds.split(",") if x]
    noise = seed_noise(parents[0], rows[0], seeds) if seeds else None
    result = {
        "mode": args.mode,
        "branch_point_max_abs_diff": max(abs(r["diff"]) for r in rows),
        "max_abs_diff_same_warmup": max(abs(r["diff_same_warmup"]) for r in rows),
        "rows": rows,
        "seed_noise": noise,
        "command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "commit": commit,
        "wall_s": time.perf_counter() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n".join(table(rows)))
    print(f"branch_point_max_abs_diff = {result['branch_point_max_abs_diff']:.4f} nats")
    if noise is not None:
        where = f"d_model {noise['d_model']}, f = {noise['fraction']}"
        print(f"seed noise ({where}): {noise['losses']}, std {noise['std']}")
    print(f"wall {result['wall_s']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
