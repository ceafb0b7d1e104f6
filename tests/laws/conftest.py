from __future__ import annotations

import os
from pathlib import Path

import pytest


def anchors_root() -> Path:
    env = os.environ.get("WINDTUNNEL_ANCHORS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "anchors"


@pytest.fixture(scope="session")
def anchors() -> Path:
    root = anchors_root()
    if not (root / "epoch_chinchilla_replication").exists():
        pytest.skip(f"anchor data sets not found at {root} (set WINDTUNNEL_ANCHORS)")
    return root
