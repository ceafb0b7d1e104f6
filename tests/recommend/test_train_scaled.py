"""The path from a recommendation into the trainer: the 1T-class config builds as is (``python -m trainer
--dry-run`` on the meta device) and its ``--scale-down`` copy trains for a few steps on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from trainer.config import RunConfig
from trainer.loop import train
from windtunnel.cli import main as cli_main


@pytest.mark.slow
def test_recommended_1t_dry_runs_and_scaled_copy_trains(tmp_path, capsys):
    out = tmp_path / "rec.yaml"
    rc = cli_main(
        ["recommend", "--laws", "ling", "--total-params", "1T", "--out", str(out), "--scale-down", "64"]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wrote scaled-down config" in printed and "predicted loss" in printed

    # the full recommendation builds as is in the trainer's own CLI
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(out), "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert 0.5e12 <= report["total_params"] <= 2e12 and report["params_match"]

    # the scaled-down copy keeps the family and trains three optimizer steps on the CPU
    torch.set_num_threads(1)
    scaled = RunConfig.from_yaml(tmp_path / "rec.scaled.yaml")
    full = RunConfig.from_yaml(out)
    assert scaled.model.moe.n_experts == full.model.moe.n_experts
    assert scaled.model.moe.top_k == full.model.moe.top_k
    assert scaled.precision.dtype == full.precision.dtype
    cfg = scaled.with_overrides(
        {"optim.tokens": 3 * scaled.batch_tokens, "data.cache_dir": str(tmp_path / "cache")}
    )
    result = train(cfg, workdir=tmp_path / "work")
    assert result.status == "finished" and result.steps == 3
    assert torch.isfinite(torch.tensor(result.final_loss))
    assert result.val_loss is not None and result.val_loss < 1.2 * torch.log(
        torch.tensor(cfg.model.vocab_size)
    )
