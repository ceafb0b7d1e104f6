"""Bulk, read-only reads of an MLflow SQL tracking store (SQLite, PostgreSQL, MySQL) for the dashboard.

MLflow's client reads a run at a time (``search_runs`` builds one ``Run`` object per row with its tags, params
and latest metrics; ``get_metric_history`` is one call per run). For a 1,000-run sweep the dashboard needs
all of it at once, so this module issues four set-wise SELECTs on MLflow's own tables (``runs``, ``tags``,
``params``, ``latest_metrics``; ``metrics`` for loss curves) over SQLAlchemy and pivots them with pandas
into the very layout ``mlflow.search_runs`` returns (``run_id``, ``status``, ``start_time``, ``end_time``,
``metrics.*``, ``params.*``, ``tags.*``). Same semantics as the client: only ``active`` runs and experiments,
``metrics.*`` is the latest value (MLflow's ``latest_metrics`` table), NaN metrics come back as NaN.

Read-only: SQLite files are opened with ``mode=ro`` (a write raises); PostgreSQL sessions start with
``default_transaction_read_only=on``; nothing but SELECT is ever sent. Non-SQL tracking URIs (``http://``,
``file:``) return ``None`` from :func:`engine_for` and the caller uses MLflow's client instead.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_ENGINES: dict[str, Any] = {}
_LOCK = threading.Lock()
T = TypeVar("T")


def is_sql_uri(tracking_uri: str) -> bool:
    """True for the SQLAlchemy URIs MLflow accepts as a tracking store (``sqlite:///…``, ``postgresql://…``)."""
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in SQL_SCHEMES and "://" in tracking_uri


def missing_sqlite_file(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI when it does not exist (opening it with MLflow would create a store),
    else None."""
    if not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        return None
    path = Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0])
    return None if path.exists() else path


def _readonly_url(tracking_uri: str) -> tuple[str, dict[str, Any]]:
    """SQLAlchemy URL and connect args that open the store read-only."""
    if tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri:
        path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
        return f"sqlite:///file:{path}?mode=ro&uri=true", {"timeout": 10}
    if tracking_uri.startswith("postgresql"):  # read-only at the server session level too, not only per
        return tracking_uri, {"options": "-c default_transaction_read_only=on"}  # SQLAlchemy connection
    return tracking_uri, {}


def engine_for(tracking_uri: str) -> Any | None:
    """One shared read-only SQLAlchemy engine per SQL tracking URI; None for stores that are not SQL."""
    if not is_sql_uri(tracking_uri):
        return None
    with _LOCK:
        engine = _ENGINES.get(tracking_uri)
        if engine is None:
            import sqlalchemy

            url, connect_args = _readonly_url(tracking_uri)
            # PostgreSQL: the session default (connect option, see _readonly_url), not SQLAlchemy's
            # postgresql_readonly execution option, which it resets to read-write on every pool return
            engine = sqlalchemy.create_engine(url, connect_args=connect_args)
            _ENGINES[tracking_uri] = engine
        return engine


_USABLE: dict[str, bool] = {}
_PROBES = (
    "SELECT experiment_id, name, creation_time, lifecycle_stage FROM experiments WHERE 1 = 0",
    "SELECT run_uuid, status, start_time, end_time, lifecycle_stage, experiment_id FROM runs WHERE 1 = 0",
    "SELECT run_uuid, key, value FROM tags WHERE 1 = 0",
    "SELECT run_uuid, key, value FROM params WHERE 1 = 0",
    "SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE 1 = 0",
    "SELECT run_uuid, key, value, is_nan, step, timestamp FROM metrics WHERE 1 = 0",
)


def usable(tracking_uri: str) -> bool:
    """True when ``tracking_uri`` is a SQL store whose tables have the columns read here (checked once per
    URI with empty SELECTs); False sends ``reader="auto"`` to MLflow's client (e.g. a future schema)."""
    if not is_sql_uri(tracking_uri):
        return False
    if tracking_uri not in _USABLE:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            for sql in _PROBES:
                _read(tracking_uri, sql)
            _USABLE[tracking_uri] = True
        except (SQLAlchemyError, sqlite3.Error):
            _USABLE[tracking_uri] = False
    return _USABLE[tracking_uri]


def _with_retry(fn: Callable[[], T], tries: int = 5) -> T:
    """Run ``fn``, retrying SQLite's transient "database is locked" while a writer commits."""
    from sqlalchemy.exc import OperationalError

    for attempt in range(tries):
        try:
            return fn()
        except (OperationalError, sqlite3.OperationalError) as err:
            if "locked" not in str(err).lower() or attempt == tries - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def _read(tracking_uri: str, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
    import sqlalchemy

    engine = engine_for(tracking_uri)
    if engine is None:
        raise ValueError(f"not a SQL tracking store: {tracking_uri}")

    def run() -> pd.DataFrame:
        if engine.dialect.name == "sqlite":  # sqlite3 takes ``:name`` parameters itself: skip Row objects
            raw = engine.raw_connection()
            try:
                cur = raw.cursor()
                cur.execute(sql, params or {})
                keys = [d[0] for d in cur.description]
                rows = cur.fetchall()
            finally:
                raw.close()
        else:
            with engine.connect() as conn:
                result = conn.execute(sqlalchemy.text(sql), params or {})
                keys = list(result.keys())
                rows = [tuple(r) for r in result.fetchall()]
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(keys)  # column-wise: fast in pandas
        return pd.DataFrame({k: list(c) for k, c in zip(keys, columns, strict=True)}, columns=keys)

    return _with_retry(run)


def experiments(tracking_uri: str) -> pd.DataFrame:
    """Active experiments: columns experiment_id (str), name, creation_time."""
    df = _read(
        tracking_uri,
        "SELECT experiment_id, name, creation_time FROM experiments WHERE lifecycle_stage = 'active'",
    )
    df["experiment_id"] = df["experiment_id"].astype(str)
    return df


def experiment_id(tracking_uri: str, name: str) -> str | None:
    df = _read(
        tracking_uri,
        "SELECT experiment_id FROM experiments WHERE name = :n AND lifecycle_stage = 'active'",
        {"n": name},
    )
    return None if df.empty else str(df["experiment_id"].iloc[0])


def run_set_version(tracking_uri: str, exp_id: str) -> tuple[int, int, int, int]:
    """(active runs, newest start_time, newest end_time, runs RUNNING) of one experiment: one aggregate query.

    Any run created, deleted, finished or failed changes it; metrics logged by a live run do not (the caller
    adds a time bucket while runs are alive)."""
    df = _read(
        tracking_uri,
        "SELECT COUNT(*) AS n, MAX(start_time) AS s, MAX(end_time) AS e, "
        "SUM(CASE WHEN status = 'RUNNING' THEN 1 ELSE 0 END) AS alive "
        "FROM runs WHERE experiment_id = :e AND lifecycle_stage = 'active'",
        {"e": int(exp_id) if str(exp_id).isdigit() else exp_id},
    )
    row = df.iloc[0]
    return tuple(int(v) if pd.notna(v) else 0 for v in (row["n"], row["s"], row["e"], row["alive"]))  # type: ignore[return-value]


_RUNS_OF = "SELECT run_uuid FROM runs WHERE experiment_id = :e AND lifecycle_stage = 'active'"


def search_runs_frame(tracking_uri: str, exp_id: str) -> pd.DataFrame:
    """Every active run of one experiment in ``mlflow.search_runs`` layout, from four set-wise SELECTs."""
    e = {"e": int(exp_id) if str(exp_id).isdigit() else exp_id}
    runs = _read(
        tracking_uri,
        "SELECT run_uuid AS run_id, status, start_time, end_time FROM runs "
        "WHERE experiment_id = :e AND lifecycle_stage = 'active' ORDER BY start_time DESC",
        e,
    )
    if runs.empty:
        return pd.DataFrame()
    wide = [runs.set_index("run_id")]
    for table, prefix, cols in (
        ("tags", "tags.", "key, value"),
        ("params", "params.", "key, value"),
        ("latest_metrics", "metrics.", "key, value, is_nan"),
    ):
        long = _read(tracking_uri, f"SELECT run_uuid, {cols} FROM {table} WHERE run_uuid IN ({_RUNS_OF})", e)
        if long.empty:
            continue
        if "is_nan" in long.columns:
            long["value"] = long["value"].astype(float).where(~long["is_nan"].astype(bool), np.nan)
        piv = long.pivot(index="run_uuid", columns="key", values="value")
        piv.columns = [prefix + str(c) for c in piv.columns]
        wide.append(piv)
    df = pd.concat(wide, axis=1, join="outer").reindex(runs["run_id"])
    df.index.name = "run_id"
    df = df.reset_index()
    for col in ("start_time", "end_time"):
        df[col] = pd.to_datetime(pd.to_numeric(df[col], errors="coerce"), unit="ms", utc=True)
    return df


def metric_histories(tracking_uri: str, run_ids: Iterable[str], key: str) -> dict[str, pd.DataFrame]:
    """Full history of metric ``key`` (columns step, value; sorted by step, then timestamp) for each run,
    in one SELECT. Runs without the metric get an empty frame."""
    ids = list(dict.fromkeys(run_ids))
    out = {rid: pd.DataFrame({"step": np.array([], np.int64), "value": np.array([], float)}) for rid in ids}
    if not ids:
        return out
    names = {f"r{i}": rid for i, rid in enumerate(ids)}
    df = _read(
        tracking_uri,
        "SELECT run_uuid, step, value, is_nan, timestamp FROM metrics WHERE key = :k AND run_uuid IN ("
        + ", ".join(f":{n}" for n in names)
        + ")",
        {"k": key, **names},
    )
    if df.empty:
        return out
    df["value"] = df["value"].astype(float).where(~df["is_nan"].astype(bool), np.nan)
    df = df.sort_values(["run_uuid", "step", "timestamp"], kind="stable")
    for rid, grp in df.groupby("run_uuid", sort=False):
        out[str(rid)] = pd.DataFrame(
            {"step": grp["step"].to_numpy(np.int64), "value": grp["value"].to_numpy(float)}
        )
    return out
