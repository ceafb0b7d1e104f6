"""The adaptive-design rounds of an experiment (``windtunnel.orchestrator.adaptive``), read from the store,
and their panel: the 95 % interval width of the predicted loss at the target per round, the runs each round
added and the compute spent so far.

What the store holds per round r (written by ``adaptive.record_round`` and ``adaptive.finish_round``):
- the round run (tags ``windtunnel.role = adaptive_round``, ``adaptive_round = r``), params
  ``target_compute``, ``width_before`` (the design's linearised width before the proposals),
  ``expected_width_after`` (that width after them, ``laws.design``), ``proposed_flops``, ``n_proposals``;
  metric ``pi95_width_at_target`` once the round's runs are trained and refitted;
- the round's trials: study ``adaptive_r{r}``.

Cumulative compute after round r = Σ C of the sweep's own studies' runs (round 0; the validation target
excluded, as the rounds' fits exclude it) + Σ C of the runs rounds 1..r added, C = M·D in FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.figures import LAYOUT, _empty
from windtunnel.orchestrator.adaptive import ROUND_ROLE, WIDTH_METRIC
from windtunnel.orchestrator.spec_adaptive import ADAPTIVE_PREFIX
from windtunnel.orchestrator.spec_target import TARGET_STUDY
from windtunnel.orchestrator.tracking import ROLE, open_client, search_all

HEIGHT = 900
ROUND_COLUMNS = [
    "round",
    "round_run_id",
    "status",
    "target_compute",
    "width_before",
    "expected_width_after",
    "measured_width",
    "proposed_flops",
    "n_proposals",
]


@dataclass
class AdaptiveRounds:
    rounds: pd.DataFrame  # one row per recorded round, ROUND_COLUMNS, sorted by round
    runs: pd.DataFrame  # the rounds' trials (run table rows) with a ``round`` column
    initial_compute: float  # Σ C of the sweep's own studies' runs (round 0)

    def per_round(self) -> pd.DataFrame:
        """ROUND_COLUMNS plus ``n_runs``, ``added_flops`` (Σ C of the round's runs) and
        ``cumulative_flops`` (module docstring)."""
        added = self.runs.groupby("round")["compute"].sum(min_count=1)
        count = self.runs.groupby("round").size()
        out = self.rounds.copy()
        out["n_runs"] = out["round"].map(count).fillna(0).astype(int)
        out["added_flops"] = out["round"].map(added).fillna(0.0).astype(float)
        out["cumulative_flops"] = self.initial_compute + out["added_flops"].cumsum()
        return out

    def round_table(self) -> pd.DataFrame:
        """One line per round: widths (the design's before and expected after, recorded at proposal time;
        the measured one after the round), runs added (and proposed), compute."""
        p = self.per_round()

        def num(v: float, fmt: str) -> str:
            return format(v, fmt) if np.isfinite(v) else "pending"

        return pd.DataFrame(
            {
                "round": p["round"].astype(str),
                "design width before": [num(v, ".4f") for v in p["width_before"]],
                "design expected after": [num(v, ".4f") for v in p["expected_width_after"]],
                "measured after": [num(v, ".4f") for v in p["measured_width"]],
                "runs (proposed)": [f"{n} ({k})" for n, k in zip(p["n_runs"], p["n_proposals"], strict=True)],
                "FLOPs added": [f"{v:.3g}" for v in p["added_flops"]],
                "cumulative FLOPs": [f"{v:.3g}" for v in p["cumulative_flops"]],
            }
        )

    def run_table(self) -> pd.DataFrame:
        """One line per run a round added: N (params), D (tokens), C (FLOPs), state and final loss."""
        r = self.runs.sort_values(["round", "compute"])
        names = r["run_name"].where(r["run_name"].astype(bool), r["run_id"].str[:8])
        return pd.DataFrame(
            {
                "round": r["round"].astype(str),
                "run": names,
                "N": [f"{v:.3g}" for v in r["params"]],
                "D": [f"{v:.3g}" for v in r["tokens"]],
                "FLOPs": [f"{v:.3g}" for v in r["compute"]],
                "state": r["state"],
                "loss": [f"{v:.4f}" if np.isfinite(v) else "" for v in r["loss"]],
            }
        )


def _param(params: dict[str, str], key: str) -> float:
    try:
        return float(params[key])
    except (KeyError, ValueError):
        return math.nan


def round_rows(round_runs: list[Any]) -> pd.DataFrame:
    """ROUND_COLUMNS from the round runs ``adaptive.record_round`` wrote (MLflow ``Run`` objects)."""
    rows = []
    for run in round_runs:
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        rows.append(
            {
                "round": int(t["adaptive_round"]),
                "round_run_id": run.info.run_id,
                "status": t.get("status", run.info.status.lower()),
                "target_compute": _param(p, "target_compute"),
                "width_before": _param(p, "width_before"),
                "expected_width_after": _param(p, "expected_width_after"),
                "measured_width": float(m.get(WIDTH_METRIC, math.nan)),
                "proposed_flops": _param(p, "proposed_flops"),
                "n_proposals": int(_param(p, "n_proposals")) if "n_proposals" in p else 0,
            }
        )
    return pd.DataFrame(rows, columns=ROUND_COLUMNS).sort_values("round").reset_index(drop=True)


def load_rounds(data: Any, tracking_uri: str) -> AdaptiveRounds | None:
    """The adaptive rounds of one experiment (``dashboards.data.SweepData``), or None without any."""
    client = open_client(tracking_uri)
    exp_id = data.version[0]  # store_version's first item is the experiment id
    found = search_all(client, exp_id, f"tags.`{ROLE}` = '{ROUND_ROLE}'")
    if not found:
        return None
    runs = data.runs
    study = runs["study"].astype(str)
    is_round = study.str.startswith(ADAPTIVE_PREFIX)
    added = runs[is_round].copy()
    added["round"] = pd.to_numeric(study[is_round].str[len(ADAPTIVE_PREFIX) :], errors="coerce")
    added = added[added["round"].notna()].astype({"round": int})
    own = runs[~is_round & (study != TARGET_STUDY)]["compute"].to_numpy(float)
    return AdaptiveRounds(round_rows(found), added, float(np.nansum(own)))


def _width_traces(fig: go.Figure, p: pd.DataFrame) -> None:
    """Row 1, left: the measured width after each round (the refitted law's 95 % interval at the target),
    and per round the design's linearised width, from before its proposals (at r - 1) to the width it
    expected after them (at r), both recorded when the round was proposed."""
    done = p[np.isfinite(p["measured_width"])]
    fig.add_trace(
        go.Scatter(
            x=done["round"],
            y=done["measured_width"],
            mode="lines+markers",
            name="pi95 width at target (measured)",
            marker=dict(color="#1f77b4", size=9),
            hovertemplate="after round %{x}: width %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    x_design: list[float | None] = []
    y_design: list[float | None] = []
    for r, before, after in zip(p["round"], p["width_before"], p["expected_width_after"], strict=True):
        x_design += [r - 1, r, None]
        y_design += [before, after, None]
    fig.add_trace(
        go.Scatter(
            x=x_design[:-1],
            y=y_design[:-1],
            mode="lines+markers",
            name="design: before -> expected after (at proposal)",
            line=dict(color="#ff7f0e", dash="dash"),
            marker=dict(color="#ff7f0e", size=9, symbol="diamond-open"),
            hovertemplate="round %{x}: design width %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )


def _compute_traces(fig: go.Figure, p: pd.DataFrame, initial: float) -> None:
    """Row 1, right: FLOPs each round added (bars) and the cumulative compute; round 0 = the studies."""
    fig.add_trace(
        go.Bar(
            x=[0] + p["round"].tolist(),
            y=[initial] + p["added_flops"].tolist(),
            name="FLOPs added",
            marker_color="#7f7f7f",
            text=["studies"] + [f"{n} runs" for n in p["n_runs"]],
            hovertemplate="round %{x}: %{y:.3g} FLOPs (%{text})<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            x=[0] + p["round"].tolist(),
            y=[initial] + p["cumulative_flops"].tolist(),
            mode="lines+markers",
            name="cumulative FLOPs",
            marker=dict(color="#2ca02c"),
            hovertemplate="after round %{x}: %{y:.3g} FLOPs<extra></extra>",
        ),
        row=1,
        col=2,
    )


def _table(fig: go.Figure, table: pd.DataFrame, row: int) -> None:
    fig.add_trace(
        go.Table(
            header=dict(values=list(table.columns), align="left"),
            cells=dict(values=[table[c] for c in table.columns], align="left"),
        ),
        row=row,
        col=1,
    )


def adaptive_figure(rounds: AdaptiveRounds | None) -> go.Figure:
    """The panel of one experiment's adaptive rounds (module docstring); an empty panel saying why when the
    experiment has no recorded round."""
    if rounds is None:
        return _empty("Adaptive design", "no adaptive rounds: no round recorded in this experiment")
    p = rounds.per_round()
    fig = make_subplots(
        rows=3,
        cols=2,
        row_heights=[0.5, 0.17, 0.33],
        vertical_spacing=0.08,
        specs=[[{"type": "xy"}, {"type": "xy"}], [{"type": "table", "colspan": 2}, None]]
        + [[{"type": "table", "colspan": 2}, None]],
        subplot_titles=("95% interval width at the target", "compute", "", ""),
    )
    target = p["target_compute"].iloc[-1]
    fig.update_layout(
        **{**LAYOUT, "height": HEIGHT, "margin": dict(l=60, r=20, t=90, b=40)},
        title=f"Adaptive design: {len(p)} round(s) narrowing the interval at C = {target:.3g} FLOPs",
    )
    _width_traces(fig, p)
    _compute_traces(fig, p, rounds.initial_compute)
    _table(fig, rounds.round_table(), 2)
    _table(fig, rounds.run_table(), 3)
    fig.update_xaxes(title="round (0 = the sweep's studies)", dtick=1, row=1, col=1)
    fig.update_xaxes(title="round", dtick=1, row=1, col=2)
    fig.update_yaxes(title="pi95 width (nats)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title="FLOPs", rangemode="tozero", row=1, col=2)
    return fig
