"""Worker script that tests/trainer/test_distributed.py launches with ``torchrun --nproc_per_node 2``.

    torchrun --standalone --nproc_per_node 2 tests/trainer/dist_worker.py OUTDIR ep_layer \
        train:A.yaml train:B.yaml crash:C.yaml:WORKDIR:STEP

Each rank writes ``OUTDIR/<name>.rank<r>.json``; the test compares them with one-process runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.config import RunConfig
from trainer.loop import train
from trainer.model import build_model
from trainer.model.moe import MoE
from trainer.parallel.expert_parallel import ExpertParallelMoE, expert_parameters


def _dump(outdir: Path, name: str, payload: dict[str, Any]) -> None:
    (outdir / f"{name}.rank{dist.get_rank()}.json").write_text(json.dumps(payload))


def ep_layer(outdir: Path) -> None:
    """EP MoE layer vs the one-process MoE with the same weights, on the concatenation of every rank's
    tokens: outputs, input gradients, expert gradients (each rank's slice) and replicated gradients
    (summed over ranks). Case ``skewed`` routes every token to rank 0's experts (rank 1 receives nothing)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = RunConfig.from_dict(
        {
            "model": {
                "vocab_size": 64,
                "d_model": 16,
                "n_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 1,
                "d_ffn": 32,
                "seq_len": 8,
                "init_std": 0.2,
                "moe": {
                    "n_experts": 8,
                    "top_k": 2,
                    "n_shared_experts": 1,
                    "d_expert": 8,
                    "n_dense_layers": 0,
                },
            }
        }
    )
    results = {}
    for case in ("uniform", "skewed"):
        torch.manual_seed(0)
        ref = build_model(cfg.model).blocks[0].ffn
        assert isinstance(ref, MoE)
        if case == "skewed":
            with torch.no_grad():
                ref.router.expert_bias_E[:4] = 10.0  # experts 0-3 live on rank 0
        B, T, D = 2, 8, 16
        gen = torch.Generator().manual_seed(1)
        x_all_BTD = torch.randn(world * B, T, D, generator=gen)
        g_all_BTD = torch.randn(world * B, T, D, generator=gen)  # upstream gradient
        # a copy: from_moe shares the router and shared experts with the module it is built from
        ep = ExpertParallelMoE.from_moe(copy.deepcopy(ref), None, rank, world)  # group None: the world

        x_ref = x_all_BTD.clone().requires_grad_(True)
        y_ref, _ = ref(x_ref)
        (y_ref * g_all_BTD).sum().backward()

        sl = slice(rank * B, (rank + 1) * B)
        x_loc = x_all_BTD[sl].clone().requires_grad_(True)
        y_loc, _ = ep(x_loc)
        (y_loc * g_all_BTD[sl]).sum().backward()

        n_local = 8 // world
        lo = rank * n_local
        load_E = ep.last_load_E.clone()
        dist.all_reduce(load_E)  # slots every rank routed to each expert
        diffs = {
            "received_rows": int(load_E[lo : lo + n_local].sum()),
            "out": (y_loc - y_ref[sl]).abs().max().item(),
            "grad_x": (x_loc.grad - x_ref.grad[sl]).abs().max().item(),
        }
        for name in ("w_gate_EDF", "w_up_EDF", "w_down_EFD"):
            full = getattr(ref, name).grad[lo : lo + n_local]
            diffs[f"grad_{name}"] = (getattr(ep, name).grad - full).abs().max().item()
        for name, p in ep.named_parameters():
            if name.startswith("w_"):
                continue
            g = p.grad.clone()
            dist.all_reduce(g)  # replicated parameters: each rank has its own tokens' part
            diffs[f"grad_{name}"] = (g - dict(ref.named_parameters())[name].grad).abs().max().item()
        diffs["ref_out_absmax"] = y_ref.abs().max().item()
        results[case] = diffs
    _dump(outdir, "ep_layer", results)


def _replicated_hash(model: torch.nn.Module) -> str:
    sharded = {id(p) for p in expert_parameters(model)}
    h = hashlib.sha256()
    for p in model.parameters():
        if id(p) not in sharded:
            h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_keep_model(cfg: RunConfig) -> tuple[Any, torch.nn.Module]:
    """``trainer.loop.train(cfg)`` and the model it trained (the loop's ``build_model`` is wrapped)."""
    import trainer.loop as loop

    built: list[torch.nn.Module] = []
    orig = loop.build_model

    def keep(*args: Any, **kwargs: Any) -> torch.nn.Module:
        built.append(orig(*args, **kwargs))
        return built[-1]

    loop.build_model = keep
    try:
        res = train(cfg)
    finally:
        loop.build_model = orig
    return res, built[0]


def run_train(outdir: Path, cfg_paths: list[str]) -> None:
    """Train each config and dump history, router biases and a hash of the weights every rank should
    hold identically (all but the sharded experts)."""
    for path in cfg_paths:
        cfg = RunConfig.from_yaml(path)
        res, model = train_keep_model(cfg)
        biases = [m.router.expert_bias_E.tolist() for m in model.modules() if isinstance(m, MoE)]
        _dump(
            outdir,
            cfg.name,
            {
                "summary": res.summary(),
                "history": res.history,
                "biases": biases,
                "replicated_hash": _replicated_hash(model),
            },
        )


def crash(outdir: Path, cfg_path: str, workdir: str, at_step: int) -> None:
    """Train with checkpoints in ``workdir`` and kill rank 0 (``os._exit``) when it reports ``at_step``:
    torchrun then tears the other rank down, as after a lost node."""
    cfg = RunConfig.from_yaml(cfg_path)

    def report(step: int, metrics: dict[str, float]) -> None:
        if step == at_step:
            (outdir / "crashed").write_text(str(step))
            os._exit(17)

    train(cfg, report=report, workdir=workdir)


def main(argv: list[str]) -> int:
    """``OUTDIR JOB [JOB ...]``, jobs run in order in one launch (process start-up is the expensive part):
    ``ep_layer``, ``train:CFG.yaml``, ``crash:CFG.yaml:WORKDIR:STEP`` (last: it ends the launch)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    outdir = Path(argv[0])
    try:
        for job in argv[1:]:
            kind, *rest = job.split(":")
            if kind == "ep_layer":
                ep_layer(outdir)
            elif kind == "train":
                run_train(outdir, rest)
            elif kind == "crash":
                crash(outdir, rest[0], rest[1], int(rest[2]))
            else:
                raise SystemExit(f"unknown job {job}")
            dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
