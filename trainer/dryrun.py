"""Dry run: build any config (1T included) on the ``meta`` device and account for it without training."""

from __future__ import annotations

import time
from typing import Any

import torch

from trainer.config import RunConfig
from trainer.flops import activation_ratio, count_params, flops_per_token, granularity, memory_per_gpu


def dry_run(run_cfg: RunConfig) -> dict[str, Any]:
    """Build the model on ``torch.device("meta")`` (no memory, no data), count the built tensors, and check
    them against ``trainer.flops.count_params``.

    Returns total/active parameters (embedding and head included, MTP excluded, as published), the
    non-embedding versions, M = ``flops_per_token`` (training FLOPs per token, 3 x forward, embeddings and
    head excluded), compute C = M * D for ``optim.tokens`` D, A, G, and the memory estimate per GPU for
    ``run_cfg.parallel`` (``memory_per_gpu_gb`` is the total; ``memory_breakdown_gb`` the parts).
    ``params_match`` is True when the module's counts equal the analytic ones.
    """
    from trainer.model import build_model

    cfg = run_cfg.model
    t0 = time.perf_counter()
    model = build_model(cfg, None, device=torch.device("meta"))
    build_s = time.perf_counter() - t0
    built = model.param_counts()
    counts = count_params(cfg)
    m = flops_per_token(cfg)
    mem = memory_per_gpu(run_cfg)
    match = (
        built["total"] == counts.total
        and built["active"] == counts.active
        and built["embedding"] == counts.embedding
        and built["mtp"] == counts.mtp
    )
    par = run_cfg.parallel
    return {
        "name": run_cfg.name,
        "family": cfg.family,
        "total_params": counts.total,
        "active_params": counts.active,
        "total_params_nonembed": counts.total_nonembed,
        "params_nonembed_active": counts.active_nonembed,
        "embedding_params": counts.embedding,
        "mtp_params": counts.mtp,
        "module_total_params": built["total"],
        "module_active_params": built["active"],
        "module_mtp_params": built["mtp"],
        "params_match": match,
        "flops_per_token": m,
        "flops_per_token_with_mtp": flops_per_token(cfg, include_mtp=True),
        "activation_ratio": activation_ratio(cfg),
        "granularity": granularity(cfg),
        "tokens": run_cfg.optim.tokens,
        "compute": m * run_cfg.optim.tokens,
        "batch_tokens": run_cfg.batch_tokens,
        "steps": run_cfg.steps,
        "parallel": f"tp={par.tp} pp={par.pp} ep={par.ep} dp={par.dp} zero={par.zero_stage} "
        f"ckpt={par.activation_checkpointing} gpus={par.tp * par.pp * par.dp}",
        "memory_per_gpu_gb": mem["total"],
        "memory_breakdown_gb": {k: mem[k] for k in ("params", "grads", "optimizer", "activations")},
        "fits_gpu": mem["fits"],
        "build_s": build_s,
    }
