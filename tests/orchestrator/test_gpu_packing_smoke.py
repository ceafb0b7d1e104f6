"""benchmarks/gpu_packing.py: refuses to invent numbers without a GPU; --smoke runs its code path (the real
driver, Ray with a logical GPU, micro trials on the CPU) and packed mode really runs trials side by side."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_packing.py"


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_packing", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _intervals_overlap(trials: list[dict[str, Any]]) -> bool:
    """Some two trials' [start, end) child-run intervals intersect."""
    spans = sorted((t["start_s"], t["end_s"]) for t in trials)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))


def test_max_overlap_counts_alive_trials() -> None:
    max_overlap = _module().max_overlap

    def rec(a: float, b: float | None) -> dict[str, Any]:
        return {"start_s": a, "end_s": b}

    assert max_overlap([]) == 0
    assert max_overlap([rec(0, 1), rec(1, 2), rec(2, 3)]) == 1  # back to back: never two alive
    assert max_overlap([rec(0, 2), rec(1, 3), rec(1.5, 4), rec(3.5, 5)]) == 3
    assert max_overlap([rec(0, 2), rec(1, None)]) == 1  # a trial that never closed its run is left out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_exits_clearly_without_gpu(tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    res = _run(["--out", str(out)], timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "no CUDA GPU present" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_smoke_packs_trials_and_finishes_the_same_set(tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    res = _run(["--smoke", "--trials", "4", "--steps", "40", "--ks", "2", "--out", str(out)], timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    data = json.loads(out.read_text())
    assert data["smoke"] is True and data["trials"] == 4 and data["ray_resources"]["GPU"] == 1.0
    serial, packed = data["serial"], data["packed"]["2"]
    assert (serial["gpus_per_trial"], serial["concurrency"]) == (1.0, 1)
    assert (packed["gpus_per_trial"], packed["concurrency"]) == (0.5, 2)
    for mode in (serial, packed):
        assert mode["finished"] == 4 and mode["counts"] == {"finished": 4}, mode["counts"]
        assert len(mode["trials"]) == 4 and {t["family"] for t in mode["trials"]} == {"dense", "moe"}
        assert all(t["end_s"] is not None and t["end_s"] > t["start_s"] for t in mode["trials"])
        assert mode["runs_per_hour"] > 0 and mode["wall_s"] > 0
        assert mode["gpu"] is None or mode["gpu"]["n_samples"] > 0  # None without nvidia-smi
    # the same trials (by config hash) finished in both modes
    assert packed["finished_hashes"] == serial["finished_hashes"] and len(set(serial["finished_hashes"])) == 4
    assert data["same_finished_set"] is True and data["all_finished"] is True
    # one at a time never overlaps; packed really ran two trials at once
    assert serial["max_trials_alive"] == 1 and not _intervals_overlap(serial["trials"])
    assert packed["max_trials_alive"] == 2 and _intervals_overlap(packed["trials"])
    ratio = packed["runs_per_hour"] / serial["runs_per_hour"]
    assert data["ratios"]["2"] == pytest.approx(ratio)
    assert "x serial" in res.stdout and "k2" in res.stdout


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_small(tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    res = _run(["--trials", "4", "--steps", "50", "--ks", "2", "--out", str(out)], timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    data = json.loads(out.read_text())
    assert data["smoke"] is False and data["same_finished_set"] is True
    assert data["packed"]["2"]["max_trials_alive"] == 2
