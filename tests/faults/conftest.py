"""Fixtures of the fault-injection suite (``pytest -m faults``).

``reference_run``: one uninterrupted training of ``faultlib.micro_config()`` (module-scoped), the loss curve
every damaged-then-resumed run must reproduce. ``finished_run``: a fresh copy of that run's folder
(checkpoints at steps 30 and 40) for a test to damage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from trainer.loop import TrainResult, train

FAULTS_DIR = Path(__file__).parent


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    from faultlib import micro_config

    torch.set_num_threads(1)
    workdir = tmp_path_factory.mktemp("reference")
    result = train(micro_config(), workdir=workdir)
    assert result.status == "finished" and result.steps == 40
    return result, workdir


@pytest.fixture
def finished_run(reference_run: tuple[TrainResult, Path], tmp_path: Path) -> Path:
    """A copy of the reference run's folder: checkpoints/step_00000030.pt and step_00000040.pt (+ .sha256)."""
    _, src = reference_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst
