"""``windtunnel report``: a self-contained HTML file (plotly.js inlined) and PNG/SVG paper figures."""

from __future__ import annotations

import re

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
