"""The validation study's panel: ladder points, the fitted loss law along the compute-optimal path with its
95 % band, the prediction at the target with its 95 % interval, the observed target runs (one marker per
seed, their mean ± seed std), and the study's table (``ValidationStudy.table``) under the chart.

One plotly figure (chart and table), so the Dash tab and the static report show the same thing; the
report's matplotlib redraw takes the chart's traces and skips the table.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.figures import LAYOUT, _empty, _hover
from dashboards.validation import ValidationStudy, law_path

HEIGHT = 720
GRID_POINTS = 80
MEAN_OFFSET = 1.25  # the seeds' mean is drawn this factor right of C_target, clear of the prediction's bar


def _law_traces(fig: go.Figure, study: ValidationStudy, c_lo: float, c_hi: float) -> None:
    """The prediction's law (line and 95 % band) and the set's other loss law (dashed), C from the
    smallest ladder run to past the target."""
    if study.laws is None:
        return
    C_G = np.geomspace(c_lo, c_hi, GRID_POINTS)
    chosen = study.prediction.law
    others = [n for n in study.prediction.alternatives if n in study.laws.laws and n != chosen]
    for name in ([chosen] if chosen in study.laws.laws else []) + others:
        v, lo, hi = law_path(study.laws, name, C_G)
        ok = np.isfinite(v)
        if not ok.any():
            continue
        if name == chosen:
            band_ok = ok & np.isfinite(lo) & np.isfinite(hi)
            if band_ok.any():
                x = C_G[band_ok]
                fig.add_trace(
                    go.Scatter(
                        x=np.concatenate([x, x[::-1]]),
                        y=np.concatenate([hi[band_ok], lo[band_ok][::-1]]),
                        fill="toself",
                        fillcolor="#1f77b4",
                        opacity=0.2,
                        line=dict(width=0),
                        hoverinfo="skip",
                        name=f"{name} 95% band",
                    ),
                    row=1,
                    col=1,
                )
        fig.add_trace(
            go.Scatter(
                x=C_G[ok],
                y=v[ok],
                mode="lines",
                name=f"{name} law{' (predicts)' if name == chosen else ''}",
                line=dict(
                    color="#1f77b4" if name == chosen else "#7f7f7f", dash=None if name == chosen else "dash"
                ),
            ),
            row=1,
            col=1,
        )


def _target_traces(fig: go.Figure, study: ValidationStudy, s: dict) -> None:
    """The prediction (diamond, 95 % interval), each finished seed (x) and their mean ± seed std."""
    c_t, p = s["target_compute"], s["predicted"]
    lo, hi = s["pi95"]
    fig.add_trace(
        go.Scatter(
            x=[c_t],
            y=[p],
            mode="markers",
            name=f"prediction ({study.prediction.law}), 95% interval",
            marker=dict(symbol="diamond", size=12, color="#ff7f0e"),
            error_y=dict(type="data", symmetric=False, array=[hi - p], arrayminus=[p - lo]),
            hovertemplate=f"predicted {p:.4f} [{lo:.4f}, {hi:.4f}]<br>C=%{{x:.3g}}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fin = study.finished
    if fin.empty:
        return
    seeds = [f"seed {int(x)}" if np.isfinite(x) else "seed ?" for x in fin["seed"]]
    c_obs = np.where(np.isfinite(fin["compute"]), fin["compute"], c_t)
    fig.add_trace(
        go.Scatter(
            x=c_obs,
            y=fin["loss"],
            mode="markers",
            name="observed target (per seed)",
            marker=dict(symbol="x", size=10, color="#d62728"),
            text=seeds,
            hovertemplate="%{text}: loss %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    std = s["seed_std"] or 0.0
    fig.add_trace(
        go.Scatter(
            x=[c_t * MEAN_OFFSET],
            y=[s["observed"]],
            mode="markers",
            name="observed mean ± seed std",
            marker=dict(symbol="square", size=9, color="#d62728"),
            error_y=dict(type="data", array=[std]),
            hovertemplate=f"observed {s['observed']:.4f} ± {std:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )


def validation_figure(study: ValidationStudy | None) -> go.Figure:
    """The panel of one experiment's validation study (module docstring); an empty panel saying why when
    the experiment has no recorded target prediction."""
    if study is None:
        return _empty("Validation study", "no validation study: no target prediction recorded here")
    s = study.stats()
    fig = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.66, 0.34],
        vertical_spacing=0.1,
        specs=[[{"type": "xy"}], [{"type": "table"}]],
    )
    fig.update_layout(
        **{**LAYOUT, "height": HEIGHT},
        title=f"Validation: the prediction {s['extrapolation_factor']:.0f}x beyond the ladder, observed",
    )
    ladder = study.ladder
    if len(ladder):
        fig.add_trace(
            go.Scatter(
                x=ladder["compute"],
                y=ladder["loss"],
                mode="markers",
                name="ladder runs",
                marker=dict(color="#555555", size=6, opacity=0.7),
                **_hover(ladder),
            ),
            row=1,
            col=1,
        )
    c_lo = float(ladder["compute"].min()) if len(ladder) else s["target_compute"] / 100
    _law_traces(fig, study, c_lo, s["target_compute"] * 1.3)
    _target_traces(fig, study, s)
    table = study.table()
    fig.add_trace(
        go.Table(
            header=dict(values=["", "value"], align="left"),
            cells=dict(values=[table["item"], table["value"]], align="left"),
            columnwidth=[1, 4],
        ),
        row=2,
        col=1,
    )
    fig.update_xaxes(type="log", title="compute C = M·D (FLOPs)", row=1, col=1)
    fig.update_yaxes(title="final validation loss (nats)", row=1, col=1)
    return fig
