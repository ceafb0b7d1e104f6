"""notebooks/analysis.ipynb runs top to bottom (nbclient) against a small seeded store given by env vars."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "analysis.ipynb"


@pytest.mark.slow
def test_analysis_notebook_executes(store: dict, monkeypatch, tmp_path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("WINDTUNNEL_TRACKING_URI", store["uri"])
    monkeypatch.setenv("WINDTUNNEL_EXPERIMENT", store["experiment"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        env=dict(os.environ),
    ).execute()
    outputs = {
        i: "".join(
            o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in c.get("outputs", [])
        )
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
    }
    text = "\n".join(outputs.values())
    assert store["uri"] in text  # it used the store from the environment, not a demo one
    assert "'finished': 33" in text
    assert "lr_opt" in text and "model:" in text  # fitted laws listed, a RunConfig YAML printed
