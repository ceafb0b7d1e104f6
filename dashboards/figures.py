"""Plotly figures of the dashboard and the static report, drawn from ``dashboards.analysis`` aggregates and
the law engine's ``LawSet.predict``.

Every figure is a plain ``plotly.graph_objects.Figure`` (log axes where the quantity spans decades, hover
text naming the run), so the Dash app and the offline HTML report draw the same thing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.analysis import ALLOCATION_LAWS, IsoFlopProfile, leverage_grid, near_optimal
from windtunnel.laws import LawSet
from windtunnel.laws.hparam import NEAR_OPTIMAL_BAND

FAMILY_COLORS = {"dense": "#1f77b4", "moe": "#d62728"}
STATE_COLORS = {
    "finished": "#2ca02c",
    "running": "#1f77b4",
    "failed": "#d62728",
    "diverged": "#ff7f0e",
    "killed": "#7f7f7f",
    "scheduled": "#bcbd22",
}
# uirevision: a live refresh that redraws a chart keeps the user's zoom and legend choices
LAYOUT = dict(
    template="plotly_white",
    height=380,
    margin=dict(l=60, r=20, t=50, b=50),
    legend=dict(font=dict(size=10)),
    uirevision="keep",
)


def _color(family: str) -> str:
    return FAMILY_COLORS.get(family, "#9467bd")


def _empty(title: str, why: str) -> go.Figure:
    fig = go.Figure(layout=dict(title=title, **LAYOUT))
    fig.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


HOVER_RUN = (
    "%{text}<br>N=%{customdata[0]:.3g} D=%{customdata[1]:.3g} C=%{customdata[2]:.3g}"
    "<br>lr=%{customdata[3]:.3g} batch=%{customdata[4]:.3g} loss=%{customdata[5]:.4f}<extra></extra>"
)
HOVER_COLUMNS = ["params", "tokens", "compute", "lr", "batch_tokens", "loss"]


def _hover(df: pd.DataFrame) -> dict:
    """Hover for run markers: the run's name, sweep and family as ``text`` and its numbers as a float32
    ``customdata`` matrix (sent to the browser as one binary array) formatted by one shared
    ``hovertemplate``, instead of one preformatted string per point."""
    names = df["run_name"].where(df["run_name"].astype(bool), df["run_id"].str[:8])
    text = (names + " · " + df["sweep"].astype(str) + " · " + df["family"].astype(str)).tolist()
    custom = df[HOVER_COLUMNS].to_numpy(dtype=np.float32).reshape(len(df), len(HOVER_COLUMNS))
    return dict(text=text, customdata=custom, hovertemplate=HOVER_RUN)


def _band(fig: go.Figure, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, name: str, color: str, **kw) -> None:
    """A filled 95% band: one closed polygon trace (x forth, then back)."""
    fig.add_trace(
        go.Scatter(
            x=np.concatenate([x, x[::-1]]),
            y=np.concatenate([hi, lo[::-1]]),
            fill="toself",
            fillcolor=color,
            opacity=0.25,
            line=dict(width=0),
            hoverinfo="skip",
            name=name,
            **kw,
        )
    )


def progress_figure(progress: pd.DataFrame) -> go.Figure:
    """Trials per sweep, stacked by state: one bar trace per state present."""
    if progress.empty:
        return _empty("Sweep progress", "no runs yet")
    fig = go.Figure(layout=dict(title="Sweep progress (trials by state)", barmode="stack", **LAYOUT))
    for state, grp in progress.groupby("state"):
        fig.add_trace(
            go.Bar(
                x=grp["sweep"], y=grp["count"], name=state, marker_color=STATE_COLORS.get(state, "#17becf")
            )
        )
    fig.update_yaxes(title="trials")
    return fig


def loss_curves_figure(
    curves: dict[str, pd.DataFrame], runs: pd.DataFrame, metric: str = "loss"
) -> go.Figure:
    """One line per run (step vs ``metric``, log-log), coloured by family."""
    if not curves:
        return _empty(f"{metric} curves", "no runs selected")
    fig = go.Figure(layout=dict(title=f"{metric} curves ({len(curves)} most recent runs)", **LAYOUT))
    info = runs.set_index("run_id")
    shown: set[str] = set()
    for run_id, curve in curves.items():
        r = info.loc[run_id]
        fam = r["family"]
        fig.add_trace(
            go.Scatter(
                x=curve["step"],
                y=curve["value"],
                mode="lines",
                name=fam,
                legendgroup=fam,
                showlegend=fam not in shown,
                line=dict(color=_color(fam), width=1),
                hovertemplate=f"{r['run_name'] or run_id[:8]} ({r['state']})<br>step %{{x}}"
                f"<br>{metric} %{{y:.4f}}<extra></extra>",
            )
        )
        shown.add(fam)
    fig.update_xaxes(type="log", title="step")
    fig.update_yaxes(type="log", title=metric)
    return fig


def _optimum_trace(p: IsoFlopProfile, label: str, col: str) -> go.Scatter:
    """The budget's optimum N* (star; open when at the edge of the sampled sizes) with its 95 % interval."""
    where = "edge of the sampled sizes, not in the fit" if p.edge else "bracketed"
    return go.Scatter(
        x=[p.n_opt],
        y=[p.loss_opt],
        mode="markers",
        legendgroup=label,
        showlegend=False,
        marker=dict(
            symbol="star-open" if p.edge else "star", size=14, color=col, line=dict(color="black", width=1)
        ),
        error_x=dict(type="data", symmetric=False, array=[p.n_hi - p.n_opt], arrayminus=[p.n_opt - p.n_lo]),
        name=f"{label} optimum",
        hovertemplate=f"Akima optimum ({p.source}; {where})<br>N*=%{{x:.3g}} "
        f"[{p.n_lo:.3g}, {p.n_hi:.3g}]<br>L*=%{{y:.4f}}<extra></extra>",
    )


def isoflop_figure(profiles: list[IsoFlopProfile], laws: LawSet) -> go.Figure:
    """Per family and budget: runs (markers), the Akima interpolant of the profile (line) and its optimum
    with the 95 % interval (star), as the law engine estimates them (``analysis.isoflop_profiles``); plus
    each allocation law's N_opt at those budgets (crosses) when the law file has it."""
    if not profiles:
        return _empty("IsoFLOP profiles", "no finished runs")
    fig = go.Figure(layout=dict(title="IsoFLOP profiles: loss vs parameters at fixed compute", **LAYOUT))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for i, p in enumerate(profiles):
        col = palette[i % len(palette)]
        label = f"{p.family + ' ' if p.family else ''}C={p.budget:.2g}"
        fig.add_trace(
            go.Scatter(
                x=p.runs["params"],
                y=p.runs["loss"],
                mode="markers",
                name=label,
                legendgroup=label,
                marker=dict(color=col, size=6),
                **_hover(p.runs),
            )
        )
        if p.curve_N.size:
            fig.add_trace(
                go.Scatter(
                    x=p.curve_N,
                    y=p.curve_L,
                    mode="lines",
                    legendgroup=label,
                    showlegend=False,
                    line=dict(color=col),
                    name=f"{label} Akima interpolant",
                )
            )
        if p.n_opt is not None and p.loss_opt is not None:
            fig.add_trace(_optimum_trace(p, label, col))
    for k, name in enumerate(n for n in ALLOCATION_LAWS if n in laws.laws):  # params_opt, or one per family
        mine = [p for p in profiles if p.law == name and p.loss_opt is not None]
        if not mine:
            continue
        n_law, _, _ = laws.predict(name, np.array([p.budget for p in mine]))
        fig.add_trace(
            go.Scatter(
                x=n_law,
                y=[p.loss_opt for p in mine],
                mode="markers",
                name=f"{name} law",
                marker=dict(symbol=["x", "cross", "triangle-up"][k % 3], size=11, color="black"),
                hovertemplate=f"{name}: N_opt=%{{x:.3g}}<extra></extra>",
            )
        )
    fig.update_xaxes(type="log", title="non-embedding active parameters N")
    # the runs set the loss range: an interpolant through near-equal sizes of unequal loss can swing far
    # outside it between them (a swing up leaves the optimum where it is)
    losses = np.concatenate([p.runs["loss"].to_numpy(float) for p in profiles])
    pad = 0.08 * (losses.max() - losses.min()) + 1e-3
    fig.update_yaxes(title="final loss", range=[losses.min() - pad, losses.max() + pad])
    return fig


def frontier_figure(runs: pd.DataFrame, laws: LawSet, target: float) -> go.Figure:
    """Finished runs (loss vs compute, per family), the fitted frontier L = E + A·C^−alpha from the smallest
    budget to the target compute with its 95% band, and the predicted loss at the target with its interval."""
    done = runs[(runs["state"] == "finished") & np.isfinite(runs["loss"]) & (runs["compute"] > 0)]
    if done.empty and "frontier" not in laws.laws:
        return _empty("Loss frontier", "no finished runs and no frontier law")
    fig = go.Figure(layout=dict(title="Loss frontier and extrapolation to the target", **LAYOUT))
    for fam, grp in done.groupby("family"):
        fig.add_trace(
            go.Scatter(
                x=grp["compute"],
                y=grp["loss"],
                mode="markers",
                name=f"runs ({fam})",
                marker=dict(color=_color(fam), size=5, opacity=0.6),
                **_hover(grp),
            )
        )
    if "frontier" in laws.laws:
        c_min = float(done["compute"].min()) if not done.empty else target / 1e6
        C = np.logspace(np.log10(c_min), np.log10(target), 120)
        v, lo, hi = laws.predict("frontier", C)
        _band(fig, C, lo, hi, "frontier 95% band", "#7f7f7f")
        fig.add_trace(go.Scatter(x=C, y=v, mode="lines", name="frontier fit", line=dict(color="black")))
        tv, tlo, thi = laws.predict("frontier", float(target))
        fig.add_trace(
            go.Scatter(
                x=[target],
                y=[tv],
                mode="markers",
                name=f"target {target:.2g} FLOPs",
                marker=dict(symbol="diamond", size=12, color="#ff7f0e"),
                error_y=dict(type="data", symmetric=False, array=[thi - tv], arrayminus=[tv - tlo]),
                hovertemplate=f"predicted loss {tv:.4f} [{tlo:.4f}, {thi:.4f}]<extra></extra>",
            )
        )
    fig.update_xaxes(type="log", title="compute C (FLOPs)")
    fig.update_yaxes(type="log", title="loss")
    return fig


def hparam_figure(runs: pd.DataFrame, laws: LawSet, which: str, target: float | None = None) -> go.Figure:
    """Runs at (compute, lr or batch_tokens): all finished runs, the near-optimal ones (within
    ``NEAR_OPTIMAL_BAND`` of the best loss at their budget) highlighted, and the law y = a·C^b with its 95%
    band."""
    col, law, label = {
        "lr": ("lr", "lr_opt", "peak learning rate"),
        "batch": ("batch_tokens", "batch_opt", "batch size (tokens)"),
    }[which]
    done = runs[(runs["state"] == "finished") & (runs[col] > 0) & (runs["compute"] > 0)]
    if done.empty and law not in laws.laws:
        return _empty(f"{label} law", "no finished runs and no law")
    fig = go.Figure(layout=dict(title=f"{label}: runs, near-optimal band and the {law} law", **LAYOUT))
    near = near_optimal(done) if not done.empty else pd.Series(dtype=bool)
    fig.add_trace(
        go.Scatter(
            x=done["compute"],
            y=done[col],
            mode="markers",
            name="runs",
            marker=dict(
                color=done["loss"],
                colorscale="Viridis_r",
                size=6,
                opacity=0.5,
                colorbar=dict(title="loss", len=0.6),
            ),
            **_hover(done),
        )
    )
    sel = done[near.reindex(done.index, fill_value=False)]
    fig.add_trace(
        go.Scatter(
            x=sel["compute"],
            y=sel[col],
            mode="markers",
            name=f"within {NEAR_OPTIMAL_BAND:.2%} of best",
            marker=dict(symbol="circle-open", size=11, color="#d62728", line=dict(width=2)),
            **_hover(sel),
        )
    )
    if law in laws.laws:
        c_lo = float(done["compute"].min()) if not done.empty else 1e17
        c_hi = max(float(done["compute"].max()) if not done.empty else 1e21, target or 0)
        C = np.logspace(np.log10(c_lo), np.log10(c_hi), 100)
        v, lo, hi = laws.predict(law, C)
        _band(fig, C, lo, hi, f"{law} 95% band", "#ff7f0e")
        c = laws.laws[law].coefficients
        fig.add_trace(
            go.Scatter(
                x=C, y=v, mode="lines", name=f"{law}: {c['a']:.4g}·C^{c['b']:.4f}", line=dict(color="#ff7f0e")
            )
        )
    fig.update_xaxes(type="log", title="compute C (FLOPs)")
    fig.update_yaxes(type="log", title=label)
    return fig


def leverage_figure(laws: LawSet, compute: float, axis: str = "A") -> go.Figure:
    """Ling's efficiency leverage EL against activation ratio A (one line per granularity G) or against G
    (one line per A), at ``compute``."""
    if "leverage" not in laws.laws:
        return _empty("Efficiency leverage", "no leverage law in the law file")
    grid = leverage_grid(laws, compute)
    fig = go.Figure(
        layout=dict(
            title=f"Efficiency leverage vs {'activation ratio A' if axis == 'A' else 'granularity G'}"
            f" at C={compute:.2g}",
            **LAYOUT,
        )
    )
    if axis == "A":
        for g, (v, _, _) in grid["by_A"].items():
            fig.add_trace(go.Scatter(x=grid["A"], y=v, mode="lines", name=f"G={g}"))
        fig.update_xaxes(type="log", title="activation ratio A = (E_a+E_s)/(E+E_s)")
    else:
        for a, (v, _, _) in grid["by_G"].items():
            fig.add_trace(go.Scatter(x=grid["G"], y=v, mode="lines", name=f"A={a:.1%}"))
        fig.update_xaxes(type="log", title="granularity G = 2·d_model/d_expert")
    fig.update_yaxes(type="log", title="EL = C_dense / C_moe at equal loss")
    return fig


def residuals_figure(resid: pd.DataFrame, laws: LawSet) -> go.Figure:
    """Observed − predicted loss of the parametric law against compute: runs used in the fit and held-out
    runs as two traces, zero line as a shape."""
    if resid.empty:
        return _empty("Backtest residuals", "no parametric law or no finished runs")
    fig = go.Figure(layout=dict(title="Parametric-law residuals (observed − predicted loss)", **LAYOUT))
    for in_fit, name in ((True, "in fit"), (False, "held out")):
        grp = resid[resid["in_fit"] == in_fit]
        fig.add_trace(
            go.Scatter(
                x=grp["compute"],
                y=grp["residual"],
                mode="markers",
                name=name,
                marker=dict(size=6, color="#1f77b4" if in_fit else "#ff7f0e"),
                text=(grp["run_id"].str[:8] + " " + grp["family"].astype(str)).tolist(),
                customdata=grp[["loss", "predicted"]].to_numpy(dtype=np.float64).reshape(len(grp), 2),
                hovertemplate="%{text}<br>loss %{customdata[0]:.4f} pred %{customdata[1]:.4f}"
                "<br>residual %{y:.4f}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line=dict(color="black", dash="dot"))
    bt = laws.laws["parametric"].backtest if "parametric" in laws.laws else {}
    scalars = {k: v for k, v in bt.items() if isinstance(v, int | float)}
    if scalars:
        fig.add_annotation(
            text="backtest: " + ", ".join(f"{k}={v:.3g}" for k, v in scalars.items()),
            showarrow=False,
            x=0,
            y=1.08,
            xref="paper",
            yref="paper",
            xanchor="left",
        )
    fig.update_xaxes(type="log", title="compute C (FLOPs)")
    fig.update_yaxes(title="residual (loss)")
    return fig
