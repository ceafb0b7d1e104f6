"""Parameter / FLOP / memory accounting against the published Ling 2.0 numbers and the built module."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ModelConfig, MoEConfig, RunConfig
from trainer.dryrun import dry_run
from trainer.flops import activation_ratio, count_params, flops_per_token, granularity, memory_per_gpu
from trainer.model import build_model

MODELS = Path(__file__).resolve().parents[2] / "experiments" / "models"

# published totals / actives (Ling 2.0 report, arXiv 2510.22115) and C = M * 20T from docs/DESIGN.md
# "Published laws to reproduce"
PUBLISHED = {
    "ling-mini-2.0": (16.26e9, 1.43e9, 1.35e23),
    "ling-flash-2.0": (102.9e9, 6.1e9, 7.13e23),
    "ling-1t": (1000e9, 51e9, 6.4e24),
}


def _close(x: float, ref: float, rel: float) -> bool:
    return abs(x / ref - 1) <= rel


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_ling_params_and_compute(name: str) -> None:
    cfg = RunConfig.from_yaml(MODELS / f"{name}.yaml")
    total, active, compute = PUBLISHED[name]
    pc = count_params(cfg.model)
    assert _close(pc.total, total, 0.02), pc
    assert _close(pc.active, active, 0.02), pc
    assert pc.total == pc.total_nonembed + pc.embedding == pc.total_nonembed + 2 * 157184 * cfg.model.d_model
    assert pc.active_nonembed == pc.active - pc.embedding
    assert pc.mtp > 0
    assert _close(flops_per_token(cfg.model) * cfg.optim.tokens, compute, 0.05)
    assert flops_per_token(cfg.model, include_mtp=True) > flops_per_token(cfg.model)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_dry_run_meta_module_matches(name: str) -> None:
    cfg = RunConfig.from_yaml(MODELS / f"{name}.yaml")
    info = dry_run(cfg)
    assert info["params_match"], info
    assert info["module_total_params"] == info["total_params"] == count_params(cfg.model).total
    assert info["module_active_params"] == info["active_params"]
    assert info["flops_per_token"] == flops_per_token(cfg.model)
    assert info["build_s"] < 30
    assert 0 < info["memory_per_gpu_gb"] <= cfg.parallel.gpu_memory_gb and info["fits_gpu"]
    for key in (
        "total_params",
        "active_params",
        "flops_per_token",
        "params_nonembed_active",
        "memory_per_gpu_gb",
    ):
        assert key in info


def test_ling_1t_compute_and_ratios() -> None:
    cfg = RunConfig.from_yaml(MODELS / "ling-1t.yaml").model
    assert _close(flops_per_token(cfg) * 20e12, 6.4e24, 0.05)
    assert activation_ratio(cfg) == pytest.approx(9 / 257)
    assert granularity(cfg) == pytest.approx(8.0)


def _tiny(moe: bool, **kw: object) -> ModelConfig:
    moe_cfg = (
        MoEConfig(n_experts=8, top_k=2, n_shared_experts=1, d_expert=24, n_dense_layers=1) if moe else None
    )
    base: dict = dict(vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ffn=80, seq_len=16)
    base.update(kw)
    return ModelConfig(moe=moe_cfg, **base)


@pytest.mark.parametrize(
    "cfg",
    [
        _tiny(False),
        _tiny(True),
        _tiny(True, tie_embeddings=True, n_mtp_layers=2),
        _tiny(False, qk_norm=False, head_dim=16, n_mtp_layers=1),
    ],
)
def test_count_params_equals_module(cfg: ModelConfig) -> None:
    model = build_model(cfg, device="meta")
    built = model.param_counts()
    pc = count_params(cfg)
    assert (built["total"], built["active"], built["embedding"], built["mtp"]) == (
        pc.total,
        pc.active,
        pc.embedding,
        pc.mtp,
    )
    assert built["total"] + built["mtp"] == sum(p.numel() for p in model.parameters())


def test_flops_formula_by_hand() -> None:
    """M for a 1-layer dense model written out term by term (Ling App. C)."""
    cfg = ModelConfig(vocab_size=100, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, d_ffn=128, seq_len=32)
    d, dh, nh, nkv, s = 64, 16, 4, 2, 32
    fwd = 2 * d * (nh * dh + 2 * nkv * dh) + 2 * nh * dh * d + 4 * s * nh * dh + 6 * d * 128
    assert flops_per_token(cfg) == 3 * fwd
    moe = _tiny(True, n_layers=2)
    dense_layer = flops_per_token(_tiny(False, n_layers=1))
    moe_ffn = 3 * (6 * 32 * 24 * (2 + 1) + 2 * 32 * 8)
    attn = dense_layer - 3 * 6 * 32 * 80
    assert flops_per_token(moe) == pytest.approx(dense_layer + attn + moe_ffn)
    assert activation_ratio(_tiny(False)) == 1.0 and activation_ratio(moe) == pytest.approx(3 / 9)


def test_memory_layout_effects() -> None:
    base = RunConfig.from_yaml(MODELS / "ling-flash-2.0.yaml")
    mem = memory_per_gpu(base)
    assert mem["total"] == pytest.approx(mem["params"] + mem["grads"] + mem["optimizer"] + mem["activations"])
    # ZeRO stages shard more state; checkpointing cuts activations; more pipeline stages cut params
    z0 = memory_per_gpu(base.with_overrides({"parallel.zero_stage": 0}))
    z3 = memory_per_gpu(base.with_overrides({"parallel.zero_stage": 3}))
    assert z0["optimizer"] > mem["optimizer"] and z3["params"] < mem["params"] and z3["grads"] < mem["grads"]
    no_ckpt = memory_per_gpu(base.with_overrides({"parallel.activation_checkpointing": False}))
    assert no_ckpt["activations"] > 3 * mem["activations"]
    pp8 = memory_per_gpu(base.with_overrides({"parallel.pp": 8}))
    assert pp8["params"] < mem["params"]
    # single GPU, no parallelism: 16 bytes per parameter for weights + grads + Adam
    one = memory_per_gpu(base.with_overrides({"parallel": {"zero_stage": 0}, "model.n_mtp_layers": 0}))
    assert one["params"] + one["grads"] + one["optimizer"] == pytest.approx(
        16 * count_params(base.model).total / 1e9
    )
    assert not one["fits"]


def test_memory_counts_mtp_modules() -> None:
    """MTP modules add their parameters (16 bytes each without sharding) and activations to the stage."""
    base = RunConfig.from_yaml(MODELS / "ling-flash-2.0.yaml").with_overrides(
        {"parallel": {"zero_stage": 0, "activation_checkpointing": False}}
    )
    none = memory_per_gpu(base.with_overrides({"model.n_mtp_layers": 0}))
    one = memory_per_gpu(base.with_overrides({"model.n_mtp_layers": 1}))
    state = ("params", "grads", "optimizer")
    extra = sum(one[k] for k in state) - sum(none[k] for k in state)
    mtp = count_params(base.with_overrides({"model.n_mtp_layers": 1}).model).mtp
    assert mtp > 0 and extra == pytest.approx(16 * mtp / 1e9)
    assert one["activations"] > none["activations"]
