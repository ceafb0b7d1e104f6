"""Checkpoint merge (trainer/merge.py) and checkpoint files (trainer/checkpoint.py)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    save_checkpoint,
)
from trainer.merge import merge_checkpoint_files, merge_state_dicts
from trainer.schedule import merge_weights

REPO = Path(__file__).resolve().parents[2]


def _toy(j: int) -> dict[str, torch.Tensor]:
    return {
        "w": torch.full((2, 3), float(j), dtype=torch.float32),
        "h": torch.tensor([j, 2 * j], dtype=torch.bfloat16),
        "count": torch.tensor(j, dtype=torch.int64),
    }


def test_merge_equals_hand_computed_weighted_sum() -> None:
    sds = [_toy(j) for j in (1, 2, 4)]
    c = [0.5, 0.3, 0.2]
    out = merge_state_dicts(sds, c)
    # 0.5*1 + 0.3*2 + 0.2*4 = 1.9
    assert torch.allclose(out["w"], torch.full((2, 3), 1.9))
    assert out["w"].dtype == torch.float32
    assert out["h"].dtype == torch.bfloat16
    assert torch.equal(out["h"], torch.tensor([1.9, 3.8], dtype=torch.bfloat16))
    assert int(out["count"]) == 4  # integer tensors come from the newest checkpoint


def test_merge_is_decay_weighted_update_sum() -> None:
    # WSM identity: sum_j c_j theta_{n+j} == theta_n + sum_i w_i * (theta_{n+i} - theta_{n+i-1})
    g = torch.Generator().manual_seed(0)
    thetas = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(6)]
    w = [0.9, 0.7, 0.4, 0.2, 0.05]
    from trainer.schedule import merge_weights_from_decay

    c = merge_weights_from_decay(w)
    merged = merge_state_dicts([{"p": t} for t in thetas], c)["p"]
    via_decay = thetas[0] + sum(w[i - 1] * (thetas[i] - thetas[i - 1]) for i in range(1, 6))
    assert torch.allclose(merged, via_decay, atol=1e-12)


def test_merge_rejects_bad_weights() -> None:
    with pytest.raises(ValueError):
        merge_state_dicts([_toy(1), _toy(2)], [0.5, 0.6])
    with pytest.raises(ValueError):
        merge_state_dicts([_toy(1)], [0.5, 0.5])


def test_checkpoint_roundtrip_and_corruption_fallback(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        # a whole training state: load_latest skips files that lack any of TRAINING_STATE_KEYS
        mgr.save(step, {"step": step, "model": _toy(step), "optimizer": {}, "rng": {}, "extra": {}})
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert files == ["step_00000020.pt", "step_00000030.pt"]  # keep_last=2
    assert mgr.load_latest()["step"] == 30
    # corrupt the newest: flip a byte
    newest = tmp_path / "checkpoints" / "step_00000030.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(newest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = mgr.load_latest()
    assert state["step"] == 20
    assert any("corrupt" in str(w.message) for w in caught)
    # no temp files left behind
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))


def test_merge_files_and_cli(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    for j in range(1, 6):
        mgr.save_merge(j * 10, _toy(j))
    paths = mgr.merge_paths()
    assert len(paths) == 5
    merged, c = merge_checkpoint_files(paths[-4:], "mean")
    assert c == pytest.approx([0.25] * 4)
    assert torch.allclose(merged["w"], torch.full((2, 3), 3.5))  # mean of 2,3,4,5
    out = tmp_path / "merged.pt"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "merge",
            "--checkpoints",
            str(tmp_path / "merge"),
            "--shape",
            "1-sqrt",
            "--window",
            "3",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    saved = load_checkpoint(out)
    c3 = merge_weights(3, "1-sqrt")
    expect = sum(cj * j for cj, j in zip(c3, (3, 4, 5), strict=True))
    assert saved["merged_steps"] == [30, 40, 50]
    assert torch.allclose(saved["model"]["w"], torch.full((2, 3), expect))


def test_save_checkpoint_writes_checksum(tmp_path: Path) -> None:
    p = save_checkpoint(tmp_path / "a" / "step_00000001.pt", {"x": torch.ones(3)})
    sidecar = p.with_name(p.name + ".sha256")
    assert sidecar.exists() and len(sidecar.read_text().split()[0]) == 64
    sidecar.unlink()
    with pytest.raises(CheckpointError):
        load_checkpoint(p)
