"""``windtunnel report``: a self-contained HTML file (plotly.js inlined) and PNG/SVG paper figures."""

from __future__ import annotations

import re
from pathlib import Path

from windtunnel.cli import main


def test_report_cli(store: dict, tmp_path) -> None:
    out = tmp_path / "rep"
    rc = main(
        [
            "report",
            "--experiment",
            store["experiment"],
            "--out",
            str(out),
            "--tracking-uri",
            store["uri"],
            "--laws",
            store["laws"],
        ]
    )
    assert rc == 0
    html = (out / "report.html").read_text()
    # offline: plotly.js is inlined once and no external script is referenced
    assert html.count("plotly.js v") >= 1 and len(html) > 3_000_000
    assert not re.search(r"<script[^>]+src=", html)
    assert html.count('class="plotly-graph-div"') == 9
    assert "Recommendation at" in html
    figs = sorted(p.name for p in (out / "figures").iterdir())
    stems = ["batch", "frontier", "isoflop", "lev-A", "lev-G", "lr", "resid"]
    assert figs == sorted([f"{s}.png" for s in stems] + [f"{s}.svg" for s in stems])
    assert (out / "figures" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "figures" / "frontier.svg").read_text().lstrip().startswith("<?xml")


def test_report_unknown_experiment(store: dict, tmp_path) -> None:
    assert (
        main(["report", "--experiment", "nope", "--out", str(tmp_path), "--tracking-uri", store["uri"]]) == 2
    )


def test_report_in_an_empty_folder_creates_no_store(tmp_path) -> None:
    """A read-only command: no mlflow.db appears, MLflow prints nothing, one line says why (exit 2)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    cmd = [sys.executable, "-m", "windtunnel", "report", "--experiment", "nope", "--out", "rep"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("windtunnel report: error: --tracking-uri: no MLflow store at mlflow.db")
    assert list(tmp_path.iterdir()) == []


def test_report_fitting_its_own_laws_leaves_no_temporary_file(store: dict, tmp_path) -> None:
    import tempfile

    from dashboards.report import write_report

    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("windtunnel-report-laws-*"))
    out = write_report(store["uri"], store["experiment"], tmp_path / "rep")
    assert "laws fitted now" in out["laws"] and out["html"].exists()
    assert set(tmp.glob("windtunnel-report-laws-*")) == before
