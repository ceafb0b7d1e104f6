"""Data/expert parallel on the CPU: ``torchrun --nproc_per_node 2`` (gloo, 1 thread per rank) against what a
researcher would otherwise do with two cores, one process with 2 intra-op threads (and 1 thread, for scale).

Same config, same global batch, same steps in every row; the figure is the median training throughput
(tokens/s of the global batch) over the steps after ``--warmup``, read from the run's own per-step metrics,
and the final loss (the runs must agree: same global batch). Rows: dense (the docs/DESIGN.md "Platform" shape:
d 128, 2 layers, seq 128, batch 32) and a small MoE (8 experts top-2 + 1 shared) with dp=2 and with dp=2,
ep=2.

    python benchmarks/data_parallel.py [--steps 30] [--warmup 5] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from trainer.config import RunConfig

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def make_cfg(args: argparse.Namespace, moe: bool, dp: int = 1, ep: int = 1) -> RunConfig:
    data: dict[str, Any] = {
        "name": "bench",
        "model": {
            "vocab_size": 2048,
            "d_model": 128,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "d_ffn": 512,
            "seq_len": 128,
            "init_std": 0.02,
        },
        "data": {"max_corpus_bytes": 2_000_000, "cache_dir": args.cache_dir},
        "optim": {"lr": 2e-3, "batch_size": 32, "tokens": args.steps * 32 * 128},
        "schedule": {"kind": "constant", "warmup_fraction": 0.1},
        "eval_interval": 10_000,
        "eval_batches": 1,
        "log_interval": 1,
        "parallel": {"dp": dp, "ep": ep},
    }
    if moe:
        data["model"]["moe"] = {"n_experts": 8, "top_k": 2, "n_shared_experts": 1, "d_expert": 128}
        data["model"]["moe"]["n_dense_layers"] = 0
    return RunConfig.from_dict(data)


def summarize(history: list, warmup: int, wall_s: float) -> dict[str, float]:
    steps = [(s, m) for s, m in history if "tokens_per_s" in m]
    tps = [m["tokens_per_s"] for s, m in steps if s > warmup]
    return {
        "tokens_per_s": statistics.median(tps),
        "step_s": statistics.median(m["step_time_s"] for s, m in steps if s > warmup),
        "final_loss": steps[-1][1]["loss"],
        "wall_s": wall_s,
    }


def run_one_process(cfg: RunConfig, threads: int, warmup: int) -> dict[str, float]:
    from trainer.loop import train

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    res = train(cfg)
    assert res.status == "finished", res.error
    return summarize(res.history, warmup, time.perf_counter() - t0)


def run_torchrun(cfg: RunConfig, warmup: int, tmp: Path) -> dict[str, float]:
    cfg_path, out = tmp / "cfg.yaml", tmp / "out.json"
    cfg.to_yaml(cfg_path)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", __file__, "--worker", str(cfg_path), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=1800)
    wall = time.perf_counter() - t0
    return summarize(json.loads(out.read_text()), warmup, wall)


def worker(cfg_path: str, out: str) -> None:
    """Run under torchrun: train and let rank 0 write the history."""
    from trainer.distributed import env_rank
    from trainer.loop import train

    torch.set_num_threads(1)
    res = train(RunConfig.from_yaml(cfg_path))
    assert res.status == "finished", res.error
    if env_rank() == 0:
        Path(out).write_text(json.dumps(res.history))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cache-dir", default=str(Path("~/.cache/windtunnel").expanduser()))
    ap.add_argument("--worker", nargs=2, metavar=("CFG", "OUT"))
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    from trainer.data import prepare_data

    prepare_data(make_cfg(args, False))  # cached before any timing
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("dense", "moe"):
            moe = family == "moe"
            cases: list[tuple[str, Any]] = [
                ("1 process, 1 thread", lambda m=moe: run_one_process(make_cfg(args, m), 1, args.warmup)),
                ("1 process, 2 threads", lambda m=moe: run_one_process(make_cfg(args, m), 2, args.warmup)),
                (
                    "torchrun 2 x 1 thread, dp=2",
                    lambda m=moe: run_torchrun(make_cfg(args, m, dp=2), args.warmup, Path(tmp)),
                ),
            ]
            if moe:
                cases.append(
                    (
                        "torchrun 2 x 1 thread, dp=2 ep=2",
                        lambda: run_torchrun(make_cfg(args, True, dp=2, ep=2), args.warmup, Path(tmp)),
                    )
                )
            for name, fn in cases:
                r = fn()
                rows.append({"model": family, "setup": name, **r})
                print(f"{family:5s} {name:34s} {r['tokens_per_s']:9.0f} tok/s  loss {r['final_loss']:.5f}")
    load_after = os.getloadavg()
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["setup"] == "1 process, 2 threads")
        r["vs_2_threads"] = r["tokens_per_s"] / base["tokens_per_s"]
    header = "| model | setup | tokens/s (median) | step s | vs 1 process 2 threads | final loss | wall s |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['setup']} | {r['tokens_per_s']:.0f} | {r['step_s']:.3f} | "
            f"{r['vs_2_threads']:.2f}x | {r['final_loss']:.5f} | {r['wall_s']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    RESULTS.mkdir(exist_ok=True)
    payload = {"rows": rows, "steps": args.steps, "warmup": args.warmup, "load": [load_before, load_after]}
    (RESULTS / "data_parallel.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
