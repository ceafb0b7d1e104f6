"""Seed noise at one ladder point: train one config with several seeds, one run at a time, and report the
final validation losses, their sample standard deviation (ddof = 1) and range; with ``--per-doc`` also the
loss of each final checkpoint over the WHOLE validation split (128-token windows), to separate the noise of
the evaluation sample from the noise of training.

    python benchmarks/seed_noise.py [--seeds 0,1,2] [--set eval_batches=64 ...] [--per-doc] [--out R.json]

The default point (``POINT``) is a ladder-sized dense model: d_model 48, 1 layer, vocab 512, seq 128, batch 4,
1.2M tokens, WSD, lr 3e-3, on the default corpus (~35-140 s per run on one thread, depending on load).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

POINT: dict[str, Any] = {
    "device": "cpu",
    "eval_interval": 100,
    "eval_batches": 8,
    "log_interval": 50,
    "model": {
        "vocab_size": 512,
        "d_model": 48,
        "n_layers": 1,
        "n_heads": 6,
        "n_kv_heads": 6,
        "head_dim": 8,
        "d_ffn": 136,
        "seq_len": 128,
    },
    "optim": {"lr": 3.0e-3, "batch_size": 4, "tokens": 1_200_000},
    "schedule": {"kind": "wsd"},
    "data": {"source": "default", "max_corpus_bytes": 32_000_000},
}


def full_split_loss(cfg_path: Path, workdir: Path) -> float:
    """Mean next-token loss of the run's final checkpoint over the whole validation split."""
    import numpy as np
    import torch

    from trainer.config import RunConfig
    from trainer.data import prepare_data
    from trainer.model import build_model

    cfg = RunConfig.from_yaml(cfg_path)
    art = prepare_data(cfg)
    T = cfg.model.seq_len
    val_N = np.fromfile(art.val_path, dtype=art.dtype).astype(np.int64)
    n_win = (len(val_N) - 1) // T
    ids = torch.from_numpy(val_N[: n_win * T + 1])
    x_WT, y_WT = ids[:-1].view(n_win, T), ids[1:].view(n_win, T)
    ckpt = sorted((workdir / "checkpoints").glob("step_*.pt"))[-1]
    model = build_model(cfg.model, cfg.precision, device="cpu")
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["model"])
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, n_win, 256):
            logits_BTV = model(x_WT[i : i + 256], return_logits=True).logits_BTV
            total += torch.nn.functional.cross_entropy(
                logits_BTV.flatten(0, 1).float(), y_WT[i : i + 256].flatten(), reduction="sum"
            ).item()
    return total / (n_win * T)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", action="append", default=[], help="RunConfig override k=v")
    p.add_argument("--per-doc", action="store_true", help="also the loss over the whole validation split")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "point.yaml"
        cfg_path.write_text(yaml.safe_dump(POINT))
        for seed in seeds:
            work = Path(tmp) / f"seed{seed}"
            sets = [f"seed={seed}", *args.set]
            cmd = [sys.executable, "-m", "trainer", "--config", str(cfg_path), "--json", "--threads", "1"]
            cmd += ["--no-resume", "--workdir", str(work)] + [x for s in sets for x in ("--set", s)]
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            row = {"seed": seed, "val_loss": out["val_loss"], "wall_s": out["wall_s"]}
            if args.per_doc:
                run_cfg = Path(tmp) / f"seed{seed}.yaml"
                from trainer.config import RunConfig

                RunConfig.from_yaml(cfg_path).with_overrides(_parse_sets(sets)).to_yaml(run_cfg)
                row["full_split_loss"] = full_split_loss(run_cfg, work)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary: dict[str, Any] = {"overrides": args.set, "runs": rows}
    for key in ("val_loss", "full_split_loss"):
        vals = [r[key] for r in rows if key in r]
        if len(vals) >= 2:
            summary[key] = {"std": statistics.stdev(vals), "range": max(vals) - min(vals)}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    return {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in sets)}


if __name__ == "__main__":
    sys.exit(main())
