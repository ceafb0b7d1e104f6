"""``python -m trainer export``: a checkpoint becomes a HF folder whose weights load back exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, GenerationConfig

from trainer.checkpoint import save_checkpoint
from trainer.config import ModelConfig, MoEConfig, OptimConfig, RunConfig
from trainer.model.transformer import build_model

REPO = Path(__file__).resolve().parents[2]


def tiny_config() -> RunConfig:
    moe = MoEConfig(
        n_experts=4, top_k=2, n_shared_experts=1, d_expert=16, n_dense_layers=1, n_groups=1, topk_groups=1
    )
    model = ModelConfig(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        d_ffn=64,
        seq_len=16,
        moe=moe,
        n_mtp_layers=1,
    )
    return RunConfig(name="tiny", model=model, optim=OptimConfig(lr=1e-3, batch_size=2, tokens=64))


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", "export", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_export_round_trip(tmp_path):
    cfg = tiny_config()
    cfg.to_yaml(tmp_path / "cfg.yaml")
    torch.manual_seed(0)
    state = build_model(cfg.model).state_dict()
    save_checkpoint(tmp_path / "step_00000004.pt", {"step": 4, "model": state})
    out = tmp_path / "hf"
    done = run_export(
        "--checkpoint",
        str(tmp_path / "step_00000004.pt"),
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    loaded = load_file(str(out / "model.safetensors"))
    assert set(loaded) == set(state)
    for name, t in state.items():
        assert loaded[name].shape == t.shape and loaded[name].dtype == t.dtype
        assert torch.equal(loaded[name], t), name
    table = (out / "WEIGHTS.md").read_text()
    assert all(f"`{name}`" in table for name in state)
    hf = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert (hf.num_experts, hf.num_hidden_layers, hf.first_k_dense_replace) == (4, 2, 1)
    assert GenerationConfig.from_pretrained(out).max_length == 16
    assert json.loads((out / "config.json").read_text())["model_type"] == "bailing_moe_v2"


def test_export_bad_checkpoint_is_one_line(tmp_path):
    tiny_config().to_yaml(tmp_path / "cfg.yaml")
    done = run_export(
        "--checkpoint",
        str(tmp_path / "nope.pt"),
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--out",
        str(tmp_path / "o"),
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "nope.pt" in done.stderr


def test_trainer_help_lists_subcommands():
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0 and "trainer merge" in done.stdout and "trainer export" in done.stdout
