"""benchmarks/kernels_gpu.py: refuses to invent numbers without a GPU; its code paths run in --smoke mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels._triton_utils import gemm_configs, prune_block_m

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "kernels_gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_exits_clearly_without_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "k.json")], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2
    assert "no CUDA GPU present" in res.stderr
    assert not (tmp_path / "k.json").exists()


def test_smoke_run_writes_schema(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--reps", "1"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data) >= {"device", "date", "rows"}
    ops = [r["op"] for r in data["rows"]]
    assert ops == ["fp8_gemm", "grouped_gemm_bf16", "grouped_gemm_fp8"]
    for row in data["rows"]:
        assert row["ours_tflops"] is not None and row["ours_tflops"] > 0, row
        assert set(row) >= {"op", "shape", "ours_tflops", "baselines"}
        assert row["baselines"][
            "torch_bf16_matmul" if row["op"] == "fp8_gemm" else "torch_bf16_loop_over_experts"
        ]


def test_hopper_configs_and_pruning(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fixed, tuned = gemm_configs(tune_block_k=False), gemm_configs(tune_block_k=True)
    assert len(fixed) >= 4 and all("BLOCK_K" not in c.kwargs for c in fixed)
    assert len(tuned) == 2 * len(fixed) and all(c.kwargs["BLOCK_K"] in (64, 128) for c in tuned)
    kept = prune_block_m(fixed, {}, ALIGN=64)
    assert kept and all(c.kwargs["BLOCK_M"] == 64 for c in kept)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert len(gemm_configs(tune_block_k=True)) == 1
