"""``windtunnel fit --experiment``: fit laws from a real MLflow SQLite store seeded as the orchestrator
writes it (parent run per sweep, one child run per trial with ``rt.*`` run-table metrics)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from windtunnel.cli import main as cli_main
from windtunnel.laws import fit_laws
from windtunnel.laws.synthetic import synthetic_runs
from windtunnel.orchestrator import tracking

EXPERIMENT = "laws-fit-test"
RT_COLUMNS = ["params", "n_total", "n_active", "m", "tokens", "compute", "lr", "batch_tokens", "loss"]


def _seed_store(uri: str, runs) -> list[str]:
    """Parent + one trial run per row (tags and rt.* metrics as windtunnel.orchestrator.tracking writes
    them); returns the child run ids in row order."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT)
    parent = client.create_run(
        exp_id, tags={tracking.ROLE: "parent", "sweep": EXPERIMENT, "status": "running"}
    )
    ids = []
    for i, row in enumerate(runs.itertuples(index=False)):
        tags = {
            "mlflow.parentRunId": parent.info.run_id,
            tracking.ROLE: "trial",
            "sweep": EXPERIMENT,
            "config_hash": f"h{i:04d}",  # sorted hash order = row order
            "family": row.family,
            "study": row.sweep,
            "status": "running",
        }
        run = client.create_run(exp_id, tags=tags)
        ts = 1_700_000_000_000
        metrics = [Metric("loss", float(row.loss) + 0.5, ts, 10), Metric("loss", float(row.loss), ts, 20)]
        metrics += [
            Metric(tracking.RT_PREFIX + c, float(getattr(row, c)), ts, 0)
            for c in RT_COLUMNS
            if np.isfinite(getattr(row, c))
        ]
        client.log_batch(run.info.run_id, metrics=metrics, tags=[RunTag("status", row.status)])
        client.set_terminated(run.info.run_id, "FINISHED" if row.status == "finished" else "FAILED")
        ids.append(run.info.run_id)
    client.set_tag(parent.info.run_id, "status", "finished")
    return ids


def test_cli_fit_from_mlflow_experiment(tmp_path, capsys) -> None:
    runs = synthetic_runs(48, budgets=(1e17, 4e17, 1.6e18, 6.4e18), sigma=0.001, seed=21)
    runs.loc[[3, 30], "status"] = "diverged"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = _seed_store(uri, runs)
    out = tmp_path / "laws.json"
    argv = ["fit", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--out", str(out)]
    rc = cli_main(
        argv + ["--laws", "lr_opt,batch_opt,params_opt,frontier", "--bootstrap", "20", "--seed", "3"]
    )
    assert rc == 0, capsys.readouterr()
    data = json.loads(out.read_text())
    assert set(data["laws"]) == {"lr_opt", "batch_opt", "params_opt", "frontier"}, data["errors"]
    assert data["excluded"]["lr_opt"] == {"status=diverged": 2}
    for entry in data["laws"].values():
        assert set(entry["run_ids"]) <= set(ids) - {ids[3], ids[30]}
        assert set(entry["ci95"]) == set(entry["coefficients"])
    assert data["laws"]["lr_opt"]["n_runs"] == len(runs) - 2

    # the store round trip loses nothing: the same fit on the original table (MLflow run ids) agrees
    direct = fit_laws(
        runs.assign(run_id=ids), laws=["lr_opt", "batch_opt", "params_opt", "frontier"], bootstrap=20, seed=3
    )
    for name, law in direct.laws.items():
        for k, v in law.coefficients.items():
            assert data["laws"][name]["coefficients"][k] == pytest.approx(v, rel=1e-9), (name, k)
        assert sorted(data["laws"][name]["run_ids"]) == sorted(law.run_ids)
    assert "lr_opt" in capsys.readouterr().out
