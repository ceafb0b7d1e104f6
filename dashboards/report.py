"""Static report: one self-contained HTML file (plotly.js inlined, opens offline) plus PNG/SVG figures.

The HTML holds the same figures as the dashboard (``dashboards.figures``), and the validation study's panel
and table when the experiment has one (``dashboards.validation``), and the adaptive-design rounds' panel when
it has any (``dashboards.adaptive_panel``); the paper figures are redrawn with
matplotlib from those very figure objects (``plotly_to_matplotlib``), so both always agree.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from dashboards import analysis, figures
from dashboards.adaptive_panel import load_rounds
from dashboards.data import load_sweeps
from dashboards.validation import load_study
from dashboards.views import DEFAULT_TARGET, GRAPHS, build_figures
from windtunnel.laws import LawSet, fit_laws

REPORT_BOOTSTRAP = 50  # bootstrap draws of a fit made for the report (no --laws)

TITLES = {
    "progress": "Sweep progress",
    "curves": "Loss curves",
    "isoflop": "IsoFLOP profiles",
    "frontier": "Loss frontier",
    "lr": "Learning-rate law",
    "batch": "Batch-size law",
    "lev-A": "Efficiency leverage vs activation ratio",
    "lev-G": "Efficiency leverage vs granularity",
    "resid": "Backtest residuals",
    "validation": "Validation study",
    "adaptive": "Adaptive design",
}
PAPER_FIGURES = ("isoflop", "frontier", "lr", "batch", "lev-A", "lev-G", "resid")


def _laws_for(tracking_uri: str, experiment: str, laws_path: str | None) -> tuple[LawSet, str]:
    """The law file given, else the laws fitted now on the experiment's finished runs (kept in memory)."""
    if laws_path is not None:
        return analysis.load_laws(laws_path), f"laws from {laws_path}"
    runs = load_sweeps(tracking_uri, experiment).runs
    lawset = fit_laws(runs[runs["state"] == "finished"], bootstrap=REPORT_BOOTSTRAP)
    return lawset, f"laws fitted now with windtunnel.laws.fit_laws (bootstrap {REPORT_BOOTSTRAP})"


def _errorbars(ax: Any, tr: go.Scatter, x: np.ndarray, y: np.ndarray, color: str | None) -> None:
    """A marker trace's plotly error bars (``error_x``/``error_y`` of type data) as matplotlib's."""

    def arms(err: Any) -> np.ndarray | None:
        if err is None or err.array is None:
            return None
        plus = np.asarray(err.array, dtype=float)
        minus = np.asarray(err.arrayminus, dtype=float) if err.arrayminus is not None else plus
        return np.vstack([minus, plus])

    xerr, yerr = arms(tr.error_x), arms(tr.error_y)
    if xerr is not None or yerr is not None:
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor=color or "black", capsize=3, lw=1)


def plotly_to_matplotlib(fig: go.Figure, path_stem: Path) -> list[Path]:
    """Redraw a plotly figure's scatter/bar traces with matplotlib; write ``path_stem``.png and .svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mfig, ax = plt.subplots(figsize=(6, 4), dpi=150)
    layout = fig.layout
    for tr in fig.data:
        if isinstance(tr, go.Table):  # tables stay in the HTML
            continue
        x = np.asarray(tr.x if tr.x is not None else [], dtype=object)
        y = np.asarray(tr.y if tr.y is not None else [], dtype=object)
        if isinstance(tr, go.Bar):
            bottom = getattr(ax, "_wt_bottom", {})
            xs = [str(v) for v in x]
            base = [bottom.get(k, 0.0) for k in xs]
            ax.bar(xs, y.astype(float), bottom=base, label=tr.name, color=tr.marker.color)
            for k, b, v in zip(xs, base, y.astype(float), strict=True):
                bottom[k] = b + v
            ax._wt_bottom = bottom
            continue
        x, y = x.astype(float), y.astype(float)
        label = tr.name if tr.showlegend is not False else None
        if tr.fill == "toself":
            ax.fill(x, y, alpha=0.25, color=tr.fillcolor or "grey", lw=0, label=label)
        elif tr.mode and "lines" in tr.mode:
            ax.plot(x, y, lw=1.2 if len(fig.data) < 20 else 0.7, color=tr.line.color, label=label)
        else:
            color = tr.marker.color if isinstance(tr.marker.color, str) else None
            marker = {"star": "*", "star-open": "*", "x": "x", "diamond": "D", "circle-open": "o"}.get(
                tr.marker.symbol or "", "o"
            )
            size = 14 if marker == "o" else 50
            if tr.marker.symbol == "circle-open":
                ax.scatter(x, y, s=size, marker=marker, facecolors="none", edgecolors=color, label=label)
            else:
                ax.scatter(x, y, s=size, marker=marker, color=color, label=label, alpha=0.8)
            _errorbars(ax, tr, x, y, color)
    for axis, setter, lab in (
        (layout.xaxis, ax.set_xscale, ax.set_xlabel),
        (layout.yaxis, ax.set_yscale, ax.set_ylabel),
    ):
        if axis.type == "log":
            setter("log")
        if axis.title and axis.title.text:
            lab(axis.title.text)
    if layout.yaxis.range is not None:  # plotly gives a log axis's range in log10 units
        lo, hi = layout.yaxis.range
        ax.set_ylim(*((10**lo, 10**hi) if layout.yaxis.type == "log" else (lo, hi)))
    if layout.title and layout.title.text:
        ax.set_title(layout.title.text, fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    if handles and len(handles) <= 12:
        ax.legend(fontsize=6)
    ax.grid(True, which="both", alpha=0.2)
    mfig.tight_layout()
    out = [path_stem.with_suffix(".png"), path_stem.with_suffix(".svg")]
    for p in out:
        mfig.savefig(p)
    plt.close(mfig)
    return out


def _panel_section(title: str, name: str, fig: go.Figure, table: pd.DataFrame) -> list[str]:
    """A panel's heading, its chart (div ``fig-NAME``, graph ``g-NAME``) and its table as plain HTML
    (class ``NAME-table``)."""
    return [
        f"<h2>{title}</h2>",
        f"<div id='fig-{name}'>",
        pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"g-{name}"),
        "</div>",
        table.to_html(index=False, escape=True, classes=f"{name}-table"),
    ]


def write_report(
    tracking_uri: str,
    experiment: str,
    outdir: str | Path,
    laws_path: str | None = None,
    target: float = DEFAULT_TARGET,
) -> dict[str, Any]:
    """Write ``outdir/report.html`` (self-contained) and ``outdir/figures/*.png|svg``; return their paths."""
    outdir = Path(outdir)
    (outdir / "figures").mkdir(parents=True, exist_ok=True)
    laws, laws_note = _laws_for(tracking_uri, experiment, laws_path)
    figs = build_figures(tracking_uri, experiment, laws, None, None, target, curve_limit=200)
    data = load_sweeps(tracking_uri, experiment)
    study = load_study(data, tracking_uri, laws)
    rounds = load_rounds(data, tracking_uri)
    grid = [g for g in GRAPHS if g not in ("validation", "adaptive")]
    rec = analysis.recommendation(laws, target) if laws.laws else None
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>windtunnel report — {html.escape(experiment)}</title>",
        "<style>body{font-family:sans-serif;margin:20px} .grid{display:grid;"
        "grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:8px}"
        "pre{background:#f6f6f6;padding:8px}"
        "</style></head><body>",
        f"<h1>windtunnel report — {html.escape(experiment)}</h1>",
        f"<p>store: {html.escape(tracking_uri)} · {html.escape(laws_note)} · target {target:.3g} FLOPs"
        f" · written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p>",
        f"<p>{figs['summary']['n_runs']} runs: "
        + ", ".join(f"{k} {v}" for k, v in sorted(figs["summary"]["states"].items()))
        + "</p>",
        "<div class='grid'>",
    ]
    for i, g in enumerate(grid):
        parts.append(f"<div id='fig-{g}'>")
        parts.append(
            pio.to_html(
                figs[g],
                full_html=False,
                include_plotlyjs=(i == 0),
                div_id=f"g-{g}",
                config={"displaylogo": False},
            )
        )
        parts.append("</div>")
    parts.append("</div>")
    if study is not None:
        title = "Validation study: predicted before training vs observed"
        parts += _panel_section(title, "validation", figs["validation"], study.table())
    if rounds is not None:
        title = "Adaptive design: the interval at the target, round by round"
        parts += _panel_section(title, "adaptive", figs["adaptive"], rounds.round_table())
    if rec is not None:
        parts.append(f"<h2>Recommendation at {target:.3g} FLOPs</h2><p>{html.escape(rec.note)}</p>")
        parts.append(rec.summary.to_html(index=False, escape=True))
        parts.append(f"<pre>{html.escape(rec.yaml_text)}</pre>")
    parts.append("</body></html>")
    report = outdir / "report.html"
    report.write_text("\n".join(parts))
    paper: list[Path] = []
    for g in PAPER_FIGURES + (("validation",) if study is not None else ()):
        if figs[g].data:
            paper += plotly_to_matplotlib(figs[g], outdir / "figures" / g)
    if rec is not None and rec.ok:
        (outdir / rec.filename).write_text(rec.yaml_text)
    return {"html": report, "figures": paper, "laws": laws_note}


__all__ = ["write_report", "plotly_to_matplotlib", "figures"]
