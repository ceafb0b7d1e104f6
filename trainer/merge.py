"""Weighted checkpoint merging for WSM: θ̂ = Σ_j c_j θ_{n+j} (Tian et al., arXiv 2507.17634).

The merge weights c_j come from a decay shape via ``trainer.schedule.merge_weights`` (c_k = w_k,
c_j = w_j - w_{j+1}, c_0 = 1 - w_1). Floating tensors are accumulated in float64 and cast back to their
own dtype; integer/bool tensors (counters, masks) are taken from the newest checkpoint.

Offline use: ``python -m trainer merge --checkpoints DIR --shape mean --window 8 --out merged.pt`` merges
the newest ``window`` ``step_*.pt`` files in DIR (a run's ``merge/`` or ``checkpoints/`` folder).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from trainer.checkpoint import list_step_files, load_checkpoint, save_checkpoint, step_of
from trainer.schedule import merge_weights


def merge_state_dicts(
    state_dicts: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """θ̂[name] = Σ_j c_j · θ_j[name], oldest first; float64 accumulation, result in each tensor's dtype."""
    if len(state_dicts) != len(weights) or not state_dicts:
        raise ValueError(
            f"need one weight per state dict (got {len(state_dicts)} dicts, {len(weights)} weights)"
        )
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"merge weights must sum to 1 (sum = {sum(weights):.8f})")
    keys = list(state_dicts[-1].keys())
    for j, sd in enumerate(state_dicts):
        if set(sd.keys()) != set(keys):
            raise ValueError(f"state dict {j} has different keys from the newest one")
    merged: dict[str, torch.Tensor] = {}
    for name in keys:
        newest = state_dicts[-1][name]
        if not torch.is_floating_point(newest):
            merged[name] = newest.clone()
            continue
        acc = torch.zeros(newest.shape, dtype=torch.float64, device=newest.device)
        for c_j, sd in zip(weights, state_dicts, strict=True):
            acc.add_(sd[name].to(device=newest.device, dtype=torch.float64), alpha=float(c_j))
        merged[name] = acc.to(newest.dtype)
    return merged


def _model_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The model weights of a loaded file: a trainer checkpoint's ``model`` entry or a bare state dict."""
    if "model" in ckpt and isinstance(ckpt["model"], Mapping):
        return dict(ckpt["model"])
    return ckpt


def merge_checkpoint_files(
    paths: Sequence[str | Path], shape: str = "mean", ema_decay: float = 0.9, verify: bool = True
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Merge checkpoint files (oldest first) with the WSM weights of ``shape``; returns (state, weights)."""
    weights = merge_weights(len(paths), shape, ema_decay)  # type: ignore[arg-type]
    state_dicts = [_model_state(load_checkpoint(p, verify=verify)) for p in paths]
    return merge_state_dicts(state_dicts, weights), weights


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", required=True, help="folder of step_XXXXXXXX.pt checkpoints")
    parser.add_argument("--shape", default="mean", choices=["mean", "linear", "1-sqrt", "ema"])
    parser.add_argument("--window", type=int, default=8, help="merge the newest N checkpoints")
    parser.add_argument("--ema-decay", type=float, default=0.9)
    parser.add_argument("--out", required=True, help="output file (a checkpoint with a 'model' entry)")


def merge_main(args: argparse.Namespace) -> int:
    """Run the offline merge; prints the steps and weights used. Returns an exit status."""
    paths = list_step_files(args.checkpoints)
    if not paths:
        raise SystemExit(f"error: --checkpoints: no step_*.pt files in {args.checkpoints}")
    if args.window < 1:
        raise SystemExit("error: --window: must be >= 1")
    paths = paths[-args.window :]
    merged, weights = merge_checkpoint_files(paths, args.shape, args.ema_decay)
    steps = [step_of(p) for p in paths]
    save_checkpoint(args.out, {"model": merged, "merged_steps": steps, "merge_weights": weights})
    for s, c in zip(steps, weights, strict=True):
        print(f"step {s:>8d}  c = {c:.6f}")
    print(f"merged {len(paths)} checkpoints ({args.shape}) -> {args.out}")
    return 0
