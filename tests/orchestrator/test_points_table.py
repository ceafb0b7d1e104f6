"""Rows from a run's points (windtunnel/runtable.py): expansion, compute counted once, which laws see them,
the planner's FLOPs, and a real trial with points through MLflow into the run table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from trainer.config import RunConfig
from trainer.hardware import mfu_flops_per_token
from windtunnel.laws import fit_laws
from windtunnel.orchestrator.expand import trial_flops
from windtunnel.orchestrator.plan import n_evals
from windtunnel.runtable import expand_points, point_rows, stored_point_metrics, sweep_compute


def _row(run_id: str = "r1", m: float = 100.0, tokens: float = 1000.0) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "sweep": "s",
        "family": "dense",
        "params": 10.0,
        "m": m,
        "tokens": tokens,
        "compute": m * tokens,
        "lr": 1e-3,
        "batch_tokens": 10.0,
        "loss": 3.0,
        "status": "finished",
    }


def _points(extra_per_point: float) -> list[dict[str, float]]:
    """A trainer's points (trainer.points.POINT_KEYS) at f = 0.25, 0.5, 1 of a 1000-token run."""
    out = []
    for f, loss in ((0.25, 3.6), (0.5, 3.3), (1.0, 3.0)):
        at, extra = 1000 * f, (extra_per_point * f if f < 1 else 0.0)
        out.append(
            {
                "point_fraction": f,
                "point_step": at / 10,
                "point_at_tokens": at,
                "point_tokens": at + extra,
                "point_val_loss": loss,
                "point_flops": 100 * (at + extra),
                "point_extra_flops": 100 * extra,
            }
        )
    return out


def test_expand_points_one_row_per_point_and_compute_counted_once() -> None:
    rows = expand_points(_row(), stored_point_metrics(_points(extra_per_point=200.0)))
    df = pd.DataFrame(rows)
    assert list(df["run_id"]) == ["r1", "r1@0.25", "r1@0.5"]
    assert set(df["parent_run_id"]) == {"r1"} and list(df["point_fraction"]) == [1.0, 0.25, 0.5]
    assert list(df["loss"]) == [3.0, 3.6, 3.3]
    assert list(df["point"]) == [1000.0, 250.0, 500.0]  # D_k
    assert list(df["tokens"]) == [1000.0, 300.0, 600.0]  # D_k + the WSD branch
    assert list(df["compute"]) == [100 * 1000.0, 100 * 300.0, 100 * 600.0]  # each row its own m·tokens
    assert list(point_rows(df)) == [False, True, True]
    # the sweep spent the run once plus its two branches (50 + 100 tokens), not the sum of the rows' compute
    assert sweep_compute(df) == pytest.approx(100 * (1000 + 50 + 100))
    assert sweep_compute(df) < df["compute"].sum()


def test_wsm_points_add_no_compute_and_plain_runs_are_unchanged() -> None:
    wsm = pd.DataFrame(expand_points(_row(), stored_point_metrics(_points(extra_per_point=0.0))))
    assert sweep_compute(wsm) == 100 * 1000.0
    plain = pd.DataFrame(expand_points(_row("r2"), {}))
    assert len(plain) == 1 and plain["parent_run_id"].iloc[0] == "" and not point_rows(plain).any()
    assert sweep_compute(plain) == 100 * 1000.0
    assert sweep_compute(pd.DataFrame([_row("r3")])) == 100 * 1000.0  # a table without point columns


def _table_with_points() -> pd.DataFrame:
    """An IsoFLOP-like table from the parametric law, each run with points at 0.25 and 0.5."""
    E, A, B, a, b = 1.8, 400.0, 2000.0, 0.34, 0.36
    rows = []
    for C in (1e15, 3e15, 1e16, 3e16):
        for N in np.geomspace(2e5, 2e7, 5):
            D = C / (6 * N)
            base = {
                "run_id": f"C{C:g}N{N:.0f}",
                "sweep": "t",
                "family": "dense",
                "params": N,
                "m": 6 * N,
                "tokens": D,
                "compute": C,
                "lr": 1e-3,
                "batch_tokens": 1e4,
                "status": "finished",
                "loss": E + A / N**a + B / D**b,
            }
            pts = [
                {
                    "point_fraction": f,
                    "point_step": 1.0,
                    "point_at_tokens": f * D,
                    "point_tokens": f * D,
                    "point_val_loss": E + A / N**a + B / (f * D) ** b,
                    "point_flops": 6 * N * f * D,
                    "point_extra_flops": 0.0,
                }
                for f in (0.25, 0.5)
            ]
            rows += expand_points(base, stored_point_metrics(pts))
    return pd.DataFrame(rows)


def test_only_the_loss_law_takes_point_rows() -> None:
    df = _table_with_points()
    assert point_rows(df).sum() == 40
    laws = fit_laws(df, laws=["parametric", "params_opt"], bootstrap=0)
    assert laws.laws["parametric"].n_runs == 60  # every (N, D, loss) row
    assert laws.laws["params_opt"].n_runs == 20  # one row per run at its own budget
    assert laws.excluded["params_opt"]["point rows (one row per run)"] == 40
    alone = fit_laws(df[~point_rows(df)], laws=["params_opt"], bootstrap=0)
    assert laws.laws["params_opt"].coefficients == alone.laws["params_opt"].coefficients


def _cfg(points: dict | None, kind: str = "wsd") -> RunConfig:
    data: dict[str, Any] = {
        "model": {
            "vocab_size": 512,
            "d_model": 32,
            "n_layers": 1,
            "n_heads": 2,
            "n_kv_heads": 1,
            "d_ffn": 64,
            "seq_len": 32,
            "init_std": 0.02,
        },
        "optim": {"lr": 3e-3, "batch_size": 4, "tokens": 80 * 4 * 32},
        "schedule": {"kind": kind, "warmup_fraction": 0.0, "decay_fraction": 0.2},
        "eval_interval": 25,
        "eval_batches": 2,
        "log_interval": 10,
        "device": "cpu",
    }
    if points is not None:
        data["points"] = points
    return RunConfig.from_dict(data)


def test_planner_counts_the_branches_and_point_evaluations() -> None:
    pts = {"at_fractions": [0.25, 0.5, 1.0], "mode": "wsd", "branch_fraction": 0.2}
    cfg, plain = _cfg(pts), _cfg(None)
    F = mfu_flops_per_token(cfg.model)
    # branches of round(0.2*20) = 4 and round(0.2*40) = 8 updates of 128 tokens
    assert trial_flops(cfg) - trial_flops(plain) == F * (4 + 8) * 128
    assert n_evals(cfg) == n_evals(plain) + 2


@pytest.mark.slow
def test_trial_with_points_through_mlflow(tmp_path: Path) -> None:
    """``execute_trial`` on a real SQLite store: the run's points come back as rows of the run table, with
    the trainer's FLOPs, and the planner's branch FLOPs match the trainer's branch tokens."""
    from mlflow import MlflowClient

    from windtunnel.orchestrator.tracking import ensure_experiment, ensure_parent_run, runs_from_mlflow
    from windtunnel.orchestrator.trial import execute_trial

    torch.set_num_threads(1)
    pts = {"at_fractions": [0.25, 0.5, 1.0], "mode": "wsd", "branch_fraction": 0.2}
    cfg = _cfg(pts).with_overrides({"data.max_corpus_bytes": 400_000, "data.cache_dir": str(tmp_path / "c")})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, "pts")
    parent = ensure_parent_run(client, exp_id, "pts", {})
    ctx = {
        "tracking_uri": uri,
        "experiment_id": exp_id,
        "parent_run_id": parent,
        "sweep": "pts",
        "sweep_dir": str(tmp_path / "sweep"),
        "log_flush_s": 0.0,
    }
    result = execute_trial(cfg, {"study": "p", "kind": "grid"}, ctx)
    df = runs_from_mlflow(uri, "pts")
    assert len(df) == 3 and point_rows(df).sum() == 2
    own = df[~point_rows(df)].iloc[0]
    assert own["loss"] == pytest.approx(result.val_loss) and own["parent_run_id"] == own["run_id"]
    for p in result.points[:-1]:
        row = df[df["point_fraction"] == p["point_fraction"]].iloc[0]
        assert row["compute"] == pytest.approx(p["point_flops"])  # m·tokens = the trainer's point FLOPs
        assert row["loss"] == pytest.approx(p["point_val_loss"]) and row["tokens"] == p["point_tokens"]
    branch_tokens = sum(p["point_tokens"] - p["point_at_tokens"] for p in result.points)
    assert trial_flops(cfg) == mfu_flops_per_token(cfg.model) * (result.tokens + branch_tokens)
    spent = sweep_compute(df)
    assert spent == pytest.approx(own["m"] * (result.tokens + branch_tokens))
    assert math.isfinite(spent)
