"""MFU accounting (trainer/hardware.py) and the loop's ``mfu`` metric."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.config import ModelConfig, RunConfig
from trainer.flops import count_params
from trainer.hardware import (
    ENV_PEAK,
    PEAKS,
    match_device,
    mfu,
    mfu_dtype,
    mfu_flops_per_token,
    peak_tflops,
    resolve_peak_tflops,
)
from trainer.loop import train

TINY = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ffn=128, seq_len=32)


def test_mfu_flops_hand_count_dense() -> None:
    """d 64, 2 layers, 4 heads of 16 (2 KV), d_ffn 128, s 32, V 512; per layer forward:
    projections 2*64*(4*16 + 2*2*16) + 2*(4*16)*64, scores 4*32*4*16, SwiGLU 6*64*128; head 6*64*512."""
    per_layer = (2 * 64 * (64 + 64) + 2 * 64 * 64) + 4 * 32 * 4 * 16 + 6 * 64 * 128
    assert per_layer == 81920
    expected = 3 * 2 * per_layer + 6 * 64 * 512
    assert mfu_flops_per_token(ModelConfig(**TINY)) == expected == 688128


def test_mfu_flops_hand_count_moe_with_mtp() -> None:
    """Layer 0 dense, layer 1 MoE (8 experts, top-2, 1 shared, width 32: 6*64*32*3 + router 2*64*8);
    one MTP module: its MoE block + its 2d->d projection 2*128*64 (x3) and its own head pass 6*64*512."""
    moe = dict(n_experts=8, top_k=2, n_shared_experts=1, d_expert=32, n_dense_layers=1)
    attn = (2 * 64 * (64 + 64) + 2 * 64 * 64) + 4 * 32 * 4 * 16
    dense_layer, moe_layer = attn + 6 * 64 * 128, attn + 6 * 64 * 32 * 3 + 2 * 64 * 8
    head = 6 * 64 * 512
    cfg = ModelConfig(**TINY, moe=moe)
    assert mfu_flops_per_token(cfg) == 3 * (dense_layer + moe_layer) + head
    cfg_mtp = ModelConfig(**TINY, moe=moe, n_mtp_layers=1)
    mtp = 3 * (moe_layer + 2 * 128 * 64) + head
    assert mfu_flops_per_token(cfg_mtp) == 3 * (dense_layer + moe_layer) + head + mtp


@settings(max_examples=30, deadline=None)
@given(
    d_h=st.sampled_from([8, 16, 32]), n_kv=st.integers(1, 4), group=st.integers(1, 3),
    layers=st.integers(1, 4), d_ffn=st.integers(1, 300), seq=st.integers(1, 5000),
    vocab=st.integers(2, 70000), qk_norm=st.booleans(),
    moe=st.none() | st.tuples(st.integers(1, 4), st.integers(0, 2), st.integers(1, 64)),
)  # fmt: skip
def test_mfu_flops_is_palm_6n_plus_12lhqt(
    d_h: int, n_kv: int, group: int, layers: int, d_ffn: int, seq: int, vocab: int, qk_norm: bool,
    moe: tuple[int, int, int] | None,
) -> None:  # fmt: skip
    """PaLM App. B: F = 6 N + 12 L H Q T, with N the active matmul parameters (trainer.flops' own count minus
    RMSNorm weights, plus the head d*V) -- an independent count from parameters, not from the FLOP formula."""
    n_heads = n_kv * group
    d_model = n_heads * d_h
    moe_cfg = None
    if moe is not None:
        top_k, shared, d_expert = moe
        moe_cfg = dict(n_experts=2 * top_k, top_k=top_k, n_shared_experts=shared, d_expert=d_expert,
                       n_dense_layers=layers // 2)  # fmt: skip
    cfg = ModelConfig(
        vocab_size=vocab, d_model=d_model, n_layers=layers, n_heads=n_heads, n_kv_heads=n_kv, d_ffn=d_ffn,
        seq_len=seq, qk_norm=qk_norm, moe=moe_cfg,
    )  # fmt: skip
    norms = layers * (2 * d_model + (2 * d_h if qk_norm else 0)) + d_model
    n_matmul = count_params(cfg).active_nonembed - norms + d_model * vocab
    assert mfu_flops_per_token(cfg) == 6 * n_matmul + 12 * layers * n_heads * d_h * seq


def test_mfu_ratio() -> None:
    # 1000 tokens/s x 1e9 FLOPs/token = 1e12 FLOP/s over 2 GPUs of 1 TFLOP/s peak
    assert mfu(1000.0, 1e9, 1.0, n_gpus=2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0.0)


@pytest.mark.parametrize(
    "name,key,bf16,fp8",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4, 1978.9),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5, 1513.0),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5, 1670.5),
        ("NVIDIA H200", "H200 SXM", 989.4, 1978.9),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5, 1670.5),
        ("NVIDIA GH200 480GB", "GH200", 989.4, 1978.9),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0, None),
        ("NVIDIA A100 80GB PCIe", "A100", 312.0, None),
        ("NVIDIA L40S", "L40S", 362.05, 733.0),
        ("NVIDIA L40", "L40", 181.05, 362.0),
        ("NVIDIA L4", "L4", 121.0, 242.5),
    ],
)
def test_device_table_lookup(name: str, key: str, bf16: float, fp8: float | None) -> None:
    entry = match_device(name)
    assert entry is not None and entry.name == key
    assert peak_tflops(name, "bf16") == bf16 and peak_tflops(name, "fp8") == fp8


def test_unknown_devices_and_table_invariants() -> None:
    assert match_device("Tesla T4") is None and peak_tflops("Tesla T4") is None
    assert peak_tflops(None) is None
    with pytest.raises(ValueError):
        peak_tflops("NVIDIA H100 PCIe", "int8")
    for entry in PEAKS.values():  # datasheets: FP8 ~ 2 x BF16, TF32 = BF16 / 2
        if entry.fp8 is not None:
            assert entry.fp8 == pytest.approx(2 * entry.bf16, rel=0.02), entry  # L40S sheet: 733 vs 362.05
        assert entry.tf32 == pytest.approx(entry.bf16 / 2, rel=0.02), entry
        assert entry.fp32 <= entry.tf32  # L40: both 90.5


def test_mfu_dtype_and_peak_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert mfu_dtype("bf16") == "bf16" and mfu_dtype("fp8") == "bf16"
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert mfu_dtype("fp32") == "fp32"
        torch.set_float32_matmul_precision("high")
        assert mfu_dtype("fp32") == "tf32"
    finally:
        torch.set_float32_matmul_precision(saved)

    monkeypatch.delenv(ENV_PEAK, raising=False)
    cfg = RunConfig()
    assert resolve_peak_tflops(cfg, "cpu") is None  # no table entry for a CPU
    monkeypatch.setenv(ENV_PEAK, "123.5")
    assert resolve_peak_tflops(cfg, "cpu") == 123.5
    with_cfg = cfg.with_overrides({"parallel.peak_tflops": 7.0})
    assert resolve_peak_tflops(with_cfg, "cpu") == 7.0  # the run's own value wins over the environment
    assert with_cfg.config_hash() == cfg.config_hash()  # a label, not run content
    for bad in ("fast", "-1", "0", "inf"):
        monkeypatch.setenv(ENV_PEAK, bad)
        with pytest.raises(ValueError, match=ENV_PEAK):
            resolve_peak_tflops(cfg, "cpu")


# ---- the loop's metric ------------------------------------------------------------------------------
SEQ, BATCH, STEPS = 32, 4, 4


@pytest.fixture(scope="module")
def token_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    paths = []
    for split, n in (("train", 20_000), ("val", 4_000)):
        path = folder / f"{split}.bin"
        rng.integers(0, TINY["vocab_size"], size=n, dtype=np.uint16).tofile(path)
        sidecar = {"dtype": "uint16", "vocab_size": TINY["vocab_size"], "split": split}
        Path(str(path) + ".json").write_text(json.dumps(sidecar))
        paths.append(str(path))
    return paths


def _train(token_paths: list[str], tmp_path: Path, **over: Any) -> list[tuple[int, dict[str, float]]]:
    torch.set_num_threads(1)
    cfg = RunConfig.from_dict(
        {
            "model": TINY,
            "data": {"source": "tokens", "paths": token_paths, "cache_dir": str(tmp_path / "cache")},
            "optim": {"batch_size": BATCH, "tokens": STEPS * BATCH * SEQ},
            "schedule": {"kind": "constant"},
            "log_interval": 1,
            "eval_interval": 100,
            "eval_batches": 1,
            "device": "cpu",
        }
    ).with_overrides(over)
    seen: list[tuple[int, dict[str, float]]] = []
    res = train(cfg, report=lambda s, m: seen.append((s, dict(m))))
    assert res.status == "finished", res.error
    return [(s, m) for s, m in seen if "tokens_per_s" in m]


def test_loop_reports_mfu_with_configured_peak(
    token_paths: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_PEAK, raising=False)
    peak = 0.002  # TFLOP/s: a made-up CPU "peak" so the metric is in a readable range
    logged = _train(token_paths, tmp_path, **{"parallel.peak_tflops": peak})
    assert [s for s, _ in logged] == list(range(1, STEPS + 1))
    F = mfu_flops_per_token(ModelConfig(**TINY))
    for _, m in logged:
        assert m["mfu"] == pytest.approx(m["tokens_per_s"] * F / (peak * 1e12), rel=1e-12)
        assert math.isfinite(m["mfu"]) and m["mfu"] > 0


def test_loop_mfu_from_env_and_absent_without_peak(
    token_paths: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_PEAK, raising=False)
    logged = _train(token_paths, tmp_path)
    assert logged and all("mfu" not in m for _, m in logged)  # CPU: no device peak known
    monkeypatch.setenv(ENV_PEAK, "0.5")
    logged = _train(token_paths, tmp_path)
    F = mfu_flops_per_token(ModelConfig(**TINY))
    for _, m in logged:
        assert m["mfu"] == pytest.approx(m["tokens_per_s"] * F / 0.5e12, rel=1e-12)
