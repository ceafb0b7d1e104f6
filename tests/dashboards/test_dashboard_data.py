"""Server-side aggregation over a real seeded MLflow store: run table, progress, cache, loss curves, and the
bulk SQL reader against MLflow's client API."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboards import sqlstore
from dashboards.data import SWEEP_CACHE, downsample_curve, load_sweeps, loss_curves, store_version


def test_run_table_from_store(store: dict) -> None:
    data = load_sweeps(store["uri"], store["experiment"])
    runs = data.runs
    assert len(runs) == store["spec"].n_runs  # parent sweep runs excluded
    # every trial names the MLflow sweep run it ran under (not a point row's parent_run_id)
    assert set(runs["sweep_run_id"]) <= set(store["parent_run_ids"]) and "parent_run_id" not in runs
    assert set(runs["run_id"]) == set(store["run_ids"])
    assert data.sweeps == ["hparam", "isoflop"]
    assert data.families == ["dense", "moe"]
    counts = runs["state"].value_counts().to_dict()
    spec = store["spec"]
    assert counts == {
        "finished": spec.n_runs - spec.n_running - spec.n_failed,
        "running": spec.n_running,
        "failed": spec.n_failed,
    }
    done = runs[runs["state"] == "finished"]
    assert np.isfinite(done[["params", "tokens", "compute", "lr", "batch_tokens", "loss"]].to_numpy()).all()
    # compute was logged as 6 N D by the seeder
    assert np.allclose(done["compute"], 6 * done["params"] * done["tokens"], rtol=1e-3)
    # live runs have no rt.* row yet: lr comes from the RunConfig params, loss from the latest logged value
    live = runs[runs["state"] == "running"]
    assert np.isfinite(live["lr"]).all() and np.isfinite(live["loss"]).all()
    prog = data.progress()
    assert int(prog["count"].sum()) == store["spec"].n_runs


def test_run_table_agrees_with_orchestrator_reader(store: dict) -> None:
    from windtunnel.orchestrator.tracking import runs_from_mlflow

    theirs = runs_from_mlflow(store["uri"], store["experiment"]).set_index("run_id")
    ours = load_sweeps(store["uri"], store["experiment"]).runs.set_index("run_id")
    done = ours[ours["state"] == "finished"].index
    for col in ("params", "tokens", "compute", "lr", "batch_tokens", "loss"):
        assert np.allclose(ours.loc[done, col], theirs.loc[done, col]), col
    assert (ours.loc[done, "sweep"] == theirs.loc[done, "sweep"]).all()


def test_cache_reuses_and_invalidates(store: dict, tmp_path) -> None:
    from dashboards.seed import SeedSpec, seed_store

    uri = f"sqlite:///{tmp_path / 'c.db'}"
    seed_store(uri, SeedSpec(experiment="c", n_runs=4, n_steps=4, n_running=0, n_failed=0))
    a = load_sweeps(uri, "c")
    hits = SWEEP_CACHE.hits
    b = load_sweeps(uri, "c")
    assert b is a and SWEEP_CACHE.hits == hits + 1
    v0 = store_version(uri, "c")
    seed_store(uri, SeedSpec(experiment="c", n_runs=2, n_steps=4, n_running=0, n_failed=0, seed=1))
    assert store_version(uri, "c") != v0
    c = load_sweeps(uri, "c")
    assert c is not a and len(c.runs) == 6


def test_loss_curves(store: dict) -> None:
    runs = load_sweeps(store["uri"], store["experiment"]).runs
    curves = loss_curves(store["uri"], runs, limit=100)
    assert set(curves) == set(runs["run_id"])
    state = runs.set_index("run_id")["state"]
    for rid, c in curves.items():
        assert len(c) == (store["spec"].n_steps if state[rid] != "running" else store["spec"].n_steps // 2)
        assert (np.diff(c["step"]) > 0).all() and (np.diff(c["value"]) < 0).all()
    assert len(loss_curves(store["uri"], runs, limit=5)) == 5


def test_unknown_experiment(store: dict) -> None:
    with pytest.raises(LookupError):
        load_sweeps(store["uri"], "no-such-experiment")


def test_sql_reader_matches_mlflow_client(store: dict) -> None:
    """The bulk SQL read gives exactly the run table and loss curves that MLflow's client API gives."""
    sql = load_sweeps(store["uri"], store["experiment"], reader="sql").runs
    client = load_sweeps(store["uri"], store["experiment"], reader="mlflow").runs
    a, b = sql.set_index("run_id").sort_index(), client.set_index("run_id").sort_index()
    assert list(a.columns) == list(b.columns) and list(a.index) == list(b.index)
    for col in a.columns:
        same = (a[col] == b[col]) | (a[col].isna() & b[col].isna())
        assert same.all(), col
    c_sql = loss_curves(store["uri"], sql, limit=100, reader="sql")
    c_client = loss_curves(store["uri"], client, limit=100, reader="mlflow", max_points=401)
    assert set(c_sql) == set(c_client)
    for rid in c_sql:
        assert c_sql[rid].equals(c_client[rid]), rid
    assert (
        store_version(store["uri"], store["experiment"], reader="sql")[1] == store["spec"].n_runs + 2
    )  # + 2 sweep parents


def test_sql_reader_is_read_only(store: dict) -> None:
    import sqlalchemy

    engine = sqlstore.engine_for(store["uri"])
    with pytest.raises(sqlalchemy.exc.OperationalError, match="readonly"):
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("DELETE FROM tags"))
    assert sqlstore.engine_for("http://127.0.0.1:5000") is None
    with pytest.raises(ValueError):
        load_sweeps("http://127.0.0.1:5000", "x", reader="sql")


def test_downsample_curve() -> None:
    n = 10_000
    curve = pd.DataFrame({"step": np.arange(1, n + 1), "value": 3.0 / np.sqrt(np.arange(1, n + 1))})
    small = downsample_curve(curve, 400)
    assert len(small) == 400
    assert small["step"].iloc[0] == 1 and small["step"].iloc[-1] == n
    assert (np.diff(small["step"]) > 0).all()
    # log-spaced: the first decade of steps keeps every point; the last decade has < half the points
    # (evenly spaced rows would put 90% of them there)
    assert (small["step"] <= 10).sum() == 10 and (small["step"] > n // 10).sum() < 200
    assert (
        downsample_curve(curve.head(50), 400) is not None and len(downsample_curve(curve.head(50), 400)) == 50
    )


def test_auto_reader_falls_back_to_the_client_when_the_schema_differs(tmp_path) -> None:
    import sqlite3

    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:  # a SQL database that is not an MLflow store of the expected schema
        conn.execute("CREATE TABLE runs (run_uuid TEXT)")
    uri = f"sqlite:///{db}"
    assert sqlstore.is_sql_uri(uri) and not sqlstore.usable(uri)
