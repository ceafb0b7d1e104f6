"""The dashboard's bulk SQL reader (``dashboards/sqlstore.py``) on a real PostgreSQL-backed MLflow store.

A throwaway PostgreSQL cluster + ``mlflow server`` (``tracking_server`` of tracking_server.py) is seeded
through the server's ``http://`` URI with MLflow's client (``dashboards.seed.seed_store``: one sweep parent,
6 child runs: finished, failed and running ones with their tags, params, ``rt.*`` metrics and 12-step loss
curves), plus a NaN latest metric, a NaN point in a loss curve, an infinite metric, a history logged out of
step order and a deleted run. Then the same experiment is read twice: ``reader="sql"`` on the PostgreSQL
SQLAlchemy URI (what the server itself stores into) and ``reader="mlflow"`` (MlflowClient over http), and the
two must agree exactly: raw ``search_runs`` frames, the run table, the loss curves. Last, a write sent
through sqlstore's engine must be refused by PostgreSQL (its sessions are read-only).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from dashboards import sqlstore
from dashboards.data import list_experiments, load_sweeps, loss_curves, runs_to_df, store_version
from dashboards.seed import SeedSpec, seed_store

from .tracking_server import pg_missing_reason, tracking_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(pg_missing_reason() is not None, reason=pg_missing_reason() or ""),
]

EXPERIMENT = "pg-dash"
N_RUNS, N_STEPS, N_RUNNING, N_FAILED = 6, 12, 1, 1
# what MLflow's SQL store keeps for +inf (SqlAlchemyStore.sanitize_metric_value)
MAX_FLOAT = 1.7976931348623157e308


def same(a: pd.Series, b: pd.Series) -> pd.Series:
    """Element-wise equality where NaN/None/NaT on both sides counts as equal."""
    return (a == b) | (a.isna() & b.isna())


def assert_frames_agree(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    a, b = a.set_index("run_id").sort_index(), b.set_index("run_id").sort_index()
    assert list(a.index) == list(b.index), what
    assert sorted(a.columns) == sorted(b.columns), (what, set(a.columns) ^ set(b.columns))
    for col in a.columns:
        ok = same(a[col], b[col])
        assert ok.all(), (what, col, a.loc[~ok, col].tolist(), b.loc[~ok, col].tolist())


@pytest.fixture(scope="module")
def pg_store() -> Iterator[dict]:
    with tracking_server() as srv:
        # scripts/tracking_server.sh writes the server's --backend-store-uri to DIR/backend.uri
        backend = (srv.root / "backend.uri").read_text().strip()
        assert backend.startswith("postgresql"), backend
        spec = SeedSpec(
            experiment=EXPERIMENT,
            sweeps=("isoflop",),
            n_runs=N_RUNS,
            n_steps=N_STEPS,
            n_running=N_RUNNING,
            n_failed=N_FAILED,
        )
        info = seed_store(srv.uri, spec)
        client = MlflowClient(tracking_uri=srv.uri)
        ids = info["run_ids"]  # ids[0] failed, ids[-1] running, the others finished
        # a history logged out of step order whose latest (highest) step is NaN: latest_metrics' is_nan path
        for step, value in ((3, math.nan), (1, 1.0), (2, 2.0)):
            client.log_metric(ids[1], "grad_norm", value, timestamp=1_000 + step, step=step)
        client.log_metric(ids[2], "grad_norm", math.inf, step=1)  # stored as the largest float
        # the running run's newest loss point is NaN: its run-table loss (metrics.loss) must read NaN
        client.log_metric(ids[-1], "loss", math.nan, step=N_STEPS // 2 + 1)
        gone = client.create_run(info["experiment_id"], run_name="deleted", tags={"sweep": "isoflop"})
        client.log_metric(gone.info.run_id, "loss", 1.0, step=1)
        client.delete_run(gone.info.run_id)  # lifecycle_stage deleted: neither reader may show it
        yield {"http": srv.uri, "pg": backend, "deleted": gone.info.run_id, **info}


def test_sqlstore_usable_on_postgres(pg_store: dict) -> None:
    pg = pg_store["pg"]
    assert sqlstore.is_sql_uri(pg) and sqlstore.usable(pg)
    assert sqlstore.engine_for(pg).dialect.name == "postgresql"
    assert sqlstore.experiment_id(pg, EXPERIMENT) == str(pg_store["experiment_id"])
    assert list_experiments(pg, reader="sql") == list_experiments(pg_store["http"], reader="mlflow")
    assert list_experiments(pg, reader="auto") == list_experiments(pg, reader="sql")


def test_search_runs_frame_matches_client(pg_store: dict) -> None:
    """sqlstore's four set-wise SELECTs give the very frame MlflowClient.search_runs (over http) gives."""
    exp_id = str(pg_store["experiment_id"])
    sql = sqlstore.search_runs_frame(pg_store["pg"], exp_id)
    client = runs_to_df(MlflowClient(tracking_uri=pg_store["http"]).search_runs([exp_id], max_results=1000))
    assert len(sql) == N_RUNS + 1  # + the sweep parent; the deleted run is left out
    assert pg_store["deleted"] not in set(sql["run_id"])
    assert_frames_agree(sql, client, "search_runs frame")
    by_id = sql.set_index("run_id")
    ids = pg_store["run_ids"]
    assert math.isnan(by_id.loc[ids[1], "metrics.grad_norm"])  # latest = step 3 = NaN
    assert by_id.loc[ids[2], "metrics.grad_norm"] == MAX_FLOAT
    assert math.isnan(by_id.loc[ids[-1], "metrics.loss"])
    assert by_id.loc[ids[0], "status"] == "FAILED" and by_id.loc[ids[-1], "status"] == "RUNNING"
    assert pd.isna(by_id.loc[ids[-1], "end_time"]) and by_id["start_time"].notna().all()
    assert (by_id.loc[ids, "tags.windtunnel.role"] == "trial").all()
    assert by_id.loc[ids[3], "params.model.family"] in ("dense", "moe")


def test_run_table_and_curves_sql_equal_mlflow(pg_store: dict) -> None:
    pg, http = pg_store["pg"], pg_store["http"]
    sql = load_sweeps(pg, EXPERIMENT, reader="sql").runs
    client = load_sweeps(http, EXPERIMENT, reader="mlflow").runs
    assert set(sql["run_id"]) == set(pg_store["run_ids"])  # parent excluded
    a, b = sql.set_index("run_id").sort_index(), client.set_index("run_id").sort_index()
    assert list(a.columns) == list(b.columns)
    assert_frames_agree(sql, client, "run table")
    assert a["state"].value_counts().to_dict() == {
        "finished": N_RUNS - N_RUNNING - N_FAILED,
        "failed": N_FAILED,
        "running": N_RUNNING,
    }
    assert math.isnan(a.loc[pg_store["run_ids"][-1], "loss"])  # the running run's NaN latest loss
    done = a[a["state"] == "finished"]
    assert np.isfinite(done[["params", "tokens", "compute", "lr", "batch_tokens", "loss"]].to_numpy()).all()
    assert load_sweeps(pg, EXPERIMENT, reader="auto").runs.equals(sql)

    for metric in ("loss", "grad_norm"):
        c_sql = loss_curves(pg, sql, metric=metric, limit=100, reader="sql")
        c_client = loss_curves(http, client, metric=metric, limit=100, reader="mlflow")
        assert set(c_sql) == set(c_client) == set(pg_store["run_ids"])
        for rid in c_sql:
            assert c_sql[rid].equals(c_client[rid]), (metric, rid, c_sql[rid], c_client[rid])
    ids = pg_store["run_ids"]
    curves = loss_curves(pg, sql, limit=100, reader="sql")
    assert len(curves[ids[1]]) == N_STEPS and (np.diff(curves[ids[1]]["value"]) < 0).all()
    live = curves[ids[-1]]  # N_STEPS // 2 seeded points, then the NaN one
    assert list(live["step"]) == list(range(1, N_STEPS // 2 + 2)) and math.isnan(live["value"].iloc[-1])
    grad = loss_curves(pg, sql, metric="grad_norm", limit=100, reader="sql")[ids[1]]
    assert list(grad["step"]) == [1, 2, 3] and grad["value"].iloc[:2].tolist() == [1.0, 2.0]

    version = store_version(pg, EXPERIMENT, reader="sql")
    assert version[0] == str(pg_store["experiment_id"]) and version[1] == N_RUNS + 1
    assert version[4] is True  # a run is RUNNING


def test_sql_reader_is_read_only_on_postgres(pg_store: dict) -> None:
    import sqlalchemy

    engine = sqlstore.engine_for(pg_store["pg"])
    for sql in ("DELETE FROM tags", "UPDATE runs SET status = 'KILLED'", "CREATE TABLE wt_probe (x int)"):
        # twice: a pooled connection handed out again must still be read-only
        for _ in range(2):
            with pytest.raises(sqlalchemy.exc.DBAPIError, match="read-only transaction"):
                with engine.begin() as conn:
                    conn.execute(sqlalchemy.text(sql))
    raw = engine.raw_connection()  # below SQLAlchemy too: the server session itself is read-only
    try:
        cur = raw.cursor()
        cur.execute("SHOW transaction_read_only")
        assert cur.fetchone()[0] == "on"
    finally:
        raw.close()
    runs = MlflowClient(tracking_uri=pg_store["http"]).search_runs([str(pg_store["experiment_id"])])
    assert len(runs) == N_RUNS + 1
    assert all(r.data.tags for r in runs) and "KILLED" not in {r.info.status for r in runs}
    assert sqlstore.usable(pg_store["pg"])  # and reads still work on the same engine
