"""benchmarks/trainer_gpu.py: refuses to invent numbers without a GPU; its code paths run in --smoke mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.config import ModelConfig
from trainer.hardware import ENV_PEAK, mfu_flops_per_token

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "trainer_gpu.py"


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(ENV_PEAK, None)
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_exits_clearly_without_gpu(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], env=_env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2
    assert "no CUDA GPU present" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".md").exists()


def test_smoke_needs_out() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], env=_env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "--out" in res.stderr


def test_smoke_run_writes_schema(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    peak = 0.01
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--peak-tflops", str(peak)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data) >= {"device", "date", "torch", "command", "rows", "fp8_over_bf16", "ceilings"}
    assert data["synthetic_tokens"] is True and "--smoke" in data["command"]
    assert [(r["model"], r["precision"]) for r in data["rows"]] == [
        ("dense-tiny", "bf16"), ("dense-tiny", "fp8"), ("moe-tiny", "bf16"), ("moe-tiny", "fp8"),
    ]  # fmt: skip
    for row in data["rows"]:
        assert row["status"] == "finished", row
        assert row["steps_timed"] == data["steps"] - data["warmup"]
        assert (
            row["tokens_per_s"] > 0 and row["step_time_p25_s"] <= row["step_time_s"] <= row["step_time_p75_s"]
        )
        # the loop's reported mfu (median over the timed steps; odd count) = tokens/s x F / peak
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * row["mfu_flops_per_token"] / (peak * 1e12))
        assert row["peak_tflops"] == peak
        assert "peak_mem_gb" not in row  # CPU: no CUDA memory statistics, none invented
    dense = data["rows"][0]
    tiny = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, d_ffn=128, seq_len=32)
    assert dense["mfu_flops_per_token"] == mfu_flops_per_token(tiny)
    assert dense["n_total"] > 0 and data["rows"][2]["n_active"] < data["rows"][2]["n_total"]  # MoE
    ratios = {r["model"]: r for r in data["fp8_over_bf16"]}
    assert set(ratios) == {"dense-tiny", "moe-tiny"}
    fp8, bf16 = data["rows"][1], data["rows"][0]
    assert ratios["dense-tiny"]["tokens_per_s_fp8_over_bf16"] == pytest.approx(
        fp8["tokens_per_s"] / bf16["tokens_per_s"]
    )
    assert data["ceilings"]["bf16_matmul_tflops"] > 0
    md = out.with_suffix(".md").read_text()
    assert "| dense-tiny | fp8 |" in md and "Command: `python benchmarks/trainer_gpu.py --smoke" in md
