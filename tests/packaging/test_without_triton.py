"""A laptop without Triton wheels: ``fit``, ``recommend``, ``dashboard`` and ``report`` still run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cli_runs_with_triton_unimportable(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("no_triton_worker.py")), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == {"fit": 0, "recommend": 0, "report": 0, "dashboard": 0}, done.stderr[-3000:]
    assert not result["triton_loaded"]
    assert (tmp_path / "laws.json").exists() and (tmp_path / "rep" / "report.html").exists()


def test_the_blocker_blocks(tmp_path):
    """The check can fail: with the blocker in place, importing a Triton kernel module raises."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from no_triton_worker import BlockTriton; "
        "sys.meta_path.insert(0, BlockTriton()); import kernels.quant"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
    )
    assert done.returncode != 0 and "No module named 'triton'" in done.stderr
