"""Server-side aggregation for the dashboard and the report: MLflow runs + laws.json -> plain tables.

Everything a chart needs is computed here, on the server, and cached per (tracking URI, experiment, store
version); the browser only receives the few thousand points it draws. The store is only read.

Two readers give the same tables: ``"sql"`` (SQLite/PostgreSQL/MySQL stores: a handful of set-wise SELECTs on
MLflow's tables, ``dashboards.sqlstore``) and ``"mlflow"`` (``MlflowClient.search_runs`` paging and one
``get_metric_history`` per run; any store, e.g. an ``http://`` tracking server). ``"auto"`` picks ``"sql"``
whenever the URI is a SQL store with the tables and columns it reads (``sqlstore.usable``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dashboards import sqlstore
from windtunnel.orchestrator.adaptive import ROUND_ROLE
from windtunnel.predict import PREDICTION_ROLE
from windtunnel.runtable import validate_run_table

STATES = ("running", "finished", "failed", "diverged", "killed", "scheduled")
READERS = ("auto", "sql", "mlflow")
CURVE_POINTS = 400  # most points drawn per loss curve (log-spaced in step, first and last kept)


class Cache:
    """A small thread-safe LRU cache keyed by hashable tuples."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
        value = fn()
        with self._lock:
            self.misses += 1
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value

    def peek(self, key: Hashable) -> Any:
        """The cached value or None, without computing (and without counting a hit or a miss)."""
        with self._lock:
            return self._data.get(key)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


SWEEP_CACHE = Cache(8)
CURVE_CACHE = Cache(4096)


@dataclass
class SweepData:
    """All child runs of one experiment: the run table plus progress bookkeeping."""

    experiment: str
    runs: (
        pd.DataFrame
    )  # run-table columns + mlflow_status, state, start_time, end_time, run_name, sweep_run_id
    version: tuple
    load_s: float
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)  # prediction runs, search_runs layout

    @property
    def sweeps(self) -> list[str]:
        return sorted(s for s in self.runs["sweep"].unique() if s)

    @property
    def families(self) -> list[str]:
        return sorted(s for s in self.runs["family"].unique() if s)

    def progress(self) -> pd.DataFrame:
        """Trials per (sweep, state): columns sweep, state, count."""
        if self.runs.empty:
            return pd.DataFrame(columns=["sweep", "state", "count"])
        return self.runs.groupby(["sweep", "state"]).size().rename("count").reset_index()

    def select(self, sweeps: list[str] | None = None, families: list[str] | None = None) -> pd.DataFrame:
        df = self.runs
        if sweeps:
            df = df[df["sweep"].isin(sweeps)]
        if families:
            df = df[df["family"].isin(families)]
        return df


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _use_sql(tracking_uri: str, reader: str) -> bool:
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, not {reader!r}")
    if reader == "sql" and not sqlstore.is_sql_uri(tracking_uri):
        raise ValueError(f"reader 'sql' needs a SQL tracking store, not {tracking_uri}")
    return reader == "sql" or (reader == "auto" and sqlstore.usable(tracking_uri))


def _experiment_id(tracking_uri: str, experiment: str, reader: str = "auto") -> str:
    if _use_sql(tracking_uri, reader):
        exp_id = sqlstore.experiment_id(tracking_uri, experiment)
    else:
        exp = _client(tracking_uri).get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else None
    if exp_id is None:
        raise LookupError(f"no experiment named {experiment!r} in {tracking_uri}")
    return exp_id


def list_experiments(tracking_uri: str, reader: str = "auto") -> list[str]:
    """Names of the experiments in the store, newest first (the Default experiment last)."""
    if _use_sql(tracking_uri, reader):
        df = sqlstore.experiments(tracking_uri)
        names = list(df.sort_values("creation_time", ascending=False, na_position="last")["name"])
    else:
        from mlflow.entities import ViewType

        exps = _client(tracking_uri).search_experiments(view_type=ViewType.ACTIVE_ONLY)
        names = [e.name for e in sorted(exps, key=lambda e: -(e.creation_time or 0))]
    return sorted(names, key=lambda n: n == "Default")


def store_version(tracking_uri: str, experiment: str, refresh_s: float = 5.0, reader: str = "auto") -> tuple:
    """Cheap cache key for an experiment's run set (the store's last update).

    SQL reader: one aggregate query, ``(exp_id, runs, newest start, newest end, alive, bucket)``. MLflow
    reader: three one-row ``search_runs``, ``(exp_id, newest start, newest end, alive, bucket)``. While runs
    are alive their metrics change without touching the run rows, so the key also carries
    ``floor(now / refresh_s)``; a finished store has a fixed key.
    """
    exp_id = _experiment_id(tracking_uri, experiment, reader)
    if _use_sql(tracking_uri, reader):
        n, start, end, alive = sqlstore.run_set_version(tracking_uri, exp_id)
        bucket = int(time.time() // refresh_s) if alive else 0
        return (exp_id, n, start, end, bool(alive), bucket)
    client = _client(tracking_uri)
    newest = client.search_runs([exp_id], order_by=["attributes.start_time DESC"], max_results=1)
    ended = client.search_runs([exp_id], order_by=["attributes.end_time DESC"], max_results=1)
    alive = client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1)
    start = newest[0].info.start_time if newest else 0
    end = ended[0].info.end_time if ended else 0
    bucket = int(time.time() // refresh_s) if alive else 0
    return (exp_id, start, end or 0, bool(alive), bucket)


def _column(df: pd.DataFrame, *names: str) -> pd.Series:
    """First non-null of the given search_runs columns (e.g. ``metrics.rt.lr``, ``params.optim.lr``)."""
    out = pd.Series(np.nan, index=df.index, dtype=object)
    for col in names:
        if col in df.columns:
            out = out.where(out.notna(), df[col])
    return out


# where each run-table column lives in the store (windtunnel.orchestrator.tracking): the ``rt.*`` metrics of a
# finished trial first, then what a live trial already has (its RunConfig params, its tags, its latest metric)
SOURCES: dict[str, tuple[str, ...]] = {
    "params": ("metrics.rt.params", "params.params"),
    "n_total": ("metrics.rt.n_total", "params.n_total"),
    "n_active": ("metrics.rt.n_active", "params.n_active"),
    "m": ("metrics.rt.m", "params.m"),
    "tokens": ("metrics.rt.tokens", "params.optim.tokens", "params.tokens"),
    "compute": ("metrics.rt.compute", "params.compute"),
    "lr": ("metrics.rt.lr", "params.optim.lr", "params.lr"),
    "batch_tokens": ("metrics.rt.batch_tokens", "params.batch_tokens"),
    "act_ratio": ("metrics.rt.act_ratio", "params.act_ratio"),
    "granularity": ("metrics.rt.granularity", "params.granularity"),
    "loss": ("metrics.rt.loss", "metrics.final_loss", "metrics.loss"),
    "sweep": ("tags.sweep", "params.sweep"),
    "family": ("tags.family", "params.family"),
}
STATUS_RANK = {"finished": 4, "diverged": 3, "pruned": 2, "killed": 2, "failed": 1, "running": 0}


def runs_frame(search_df: pd.DataFrame) -> pd.DataFrame:
    """Turn ``mlflow.search_runs``-shaped rows into run-table rows (trial runs only: no sweep parents, no
    recorded predictions, no adaptive round runs) plus bookkeeping columns: ``state`` (the trial's status
    tag, else MLflow's status), ``mlflow_status``, ``start_time``, ``end_time``, ``run_name``,
    ``sweep_run_id`` (the MLflow sweep run it was launched under; not a point row's ``parent_run_id``),
    ``study`` (the sweep study that launched it), ``seed``. A config hash logged twice keeps its most
    advanced run (as ``windtunnel.orchestrator.tracking.trial_runs`` does)."""
    extra = ["state", "mlflow_status", "start_time", "end_time", "run_name", "sweep_run_id", "study", "seed"]
    if search_df.empty:
        return validate_run_table(pd.DataFrame({"run_id": pd.Series([], dtype=str)})).assign(
            **{c: pd.Series([], dtype=object) for c in extra}
        )
    df = search_df
    parent = _column(df, "tags.mlflow.parentRunId")
    role = _column(df, "tags.windtunnel.role")
    not_trial = df["run_id"].isin(set(parent.dropna())) | role.isin(
        ["parent", "sweep", PREDICTION_ROLE, ROUND_ROLE]
    )
    df, parent = df[~not_trial], parent[~not_trial]
    table = pd.DataFrame({"run_id": df["run_id"].to_numpy()})
    for col, sources in SOURCES.items():
        table[col] = _column(df, *sources).to_numpy()
    mlflow_status = df["status"].astype(str).str.lower().to_numpy()
    tag_status = _column(df, "tags.status").to_numpy()
    table["status"] = [
        t if isinstance(t, str) and t else m for t, m in zip(tag_status, mlflow_status, strict=True)
    ]
    table["sweep"] = table["sweep"].fillna("(none)")
    table = validate_run_table(table)
    table["state"] = table["status"].str.lower()
    table["mlflow_status"] = mlflow_status
    table["start_time"] = df["start_time"].to_numpy()
    table["end_time"] = df["end_time"].to_numpy()
    table["run_name"] = _column(df, "tags.mlflow.runName").fillna("").astype(str).to_numpy()
    table["sweep_run_id"] = parent.fillna("").astype(str).to_numpy()
    table["study"] = _column(df, "tags.study").fillna("").astype(str).to_numpy()
    table["seed"] = pd.to_numeric(_column(df, "params.seed"), errors="coerce").to_numpy()
    hashes = _column(df, "tags.config_hash").to_numpy()
    if pd.notna(hashes).all() and len(set(hashes)) < len(hashes):
        table["_rank"] = table["state"].map(STATUS_RANK).fillna(-1)
        table["_hash"] = hashes
        table = (
            table.sort_values("_rank", ascending=False)
            .drop_duplicates("_hash")
            .drop(columns=["_rank", "_hash"])
        )
        table = table.reset_index(drop=True)
    return table


def prediction_rows(search_df: pd.DataFrame) -> pd.DataFrame:
    """The recorded predictions (``windtunnel.predict.record_prediction``) among ``search_runs`` rows."""
    if search_df.empty:
        return pd.DataFrame()
    return search_df[_column(search_df, "tags.windtunnel.role") == PREDICTION_ROLE].reset_index(drop=True)


def load_sweeps(
    tracking_uri: str, experiment: str, refresh_s: float = 5.0, reader: str = "auto"
) -> SweepData:
    """Child runs of ``experiment`` as a run table, cached per (uri, experiment, reader, store_version)."""
    version = store_version(tracking_uri, experiment, refresh_s, reader)
    sql = _use_sql(tracking_uri, reader)

    def compute() -> SweepData:
        t0 = time.perf_counter()
        if sql:
            search_df = sqlstore.search_runs_frame(tracking_uri, version[0])
        else:
            client = _client(tracking_uri)
            runs: list = []
            token = None
            while True:  # the client is bound to our URI (mlflow.search_runs would use the global one)
                page = client.search_runs([version[0]], max_results=5000, page_token=token)
                runs.extend(page)
                token = page.token
                if not token:
                    break
            search_df = runs_to_df(runs)
        runs_table = runs_frame(search_df)
        return SweepData(
            experiment, runs_table, version, time.perf_counter() - t0, prediction_rows(search_df)
        )

    return SWEEP_CACHE.get_or_compute((tracking_uri, experiment, sql, version), compute)


def runs_to_df(runs: list) -> pd.DataFrame:
    """MLflow ``Run`` objects -> the layout of ``mlflow.search_runs`` (metrics.*, params.*, tags.*)."""
    records = []
    for run in runs:
        rec: dict[str, Any] = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True),
        }
        rec.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rec.update({f"params.{k}": v for k, v in run.data.params.items()})
        rec.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        records.append(rec)
    return pd.DataFrame.from_records(records)


def downsample_curve(curve: pd.DataFrame, max_points: int = CURVE_POINTS) -> pd.DataFrame:
    """At most ``max_points`` rows of a (step, value) curve, chosen log-spaced in row index (the chart's x
    axis is log step, so early steps keep their detail); the first and the last row are always kept."""
    n = len(curve)
    if n <= max_points:
        return curve

    def rows(num: int) -> np.ndarray:
        return np.unique(np.round(np.geomspace(1, n, num)).astype(np.int64) - 1)

    lo, hi = max_points, n  # rounding merges early samples: find the most samples giving <= max_points rows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(rows(mid)) <= max_points else (lo, mid - 1)
    return curve.iloc[rows(lo)].reset_index(drop=True)


def loss_curves(
    tracking_uri: str,
    runs: pd.DataFrame,
    metric: str = "loss",
    limit: int = 60,
    workers: int = 8,
    max_points: int = CURVE_POINTS,
    reader: str = "auto",
) -> dict[str, pd.DataFrame]:
    """Per-step ``metric`` history (columns step, value) of up to ``limit`` runs, newest first, each
    downsampled to ``max_points`` (:func:`downsample_curve`).

    Only the curves asked for are read: in one SELECT on a SQL store, else one ``get_metric_history`` per run.
    Finished runs are cached forever (their history cannot change); live runs per 5 s.
    """
    chosen = runs.sort_values("start_time", ascending=False).head(limit)
    items = list(zip(chosen["run_id"], chosen["mlflow_status"] == "running", strict=True))

    def key(run_id: str, live: bool) -> tuple:
        return (tracking_uri, run_id, metric, max_points, int(time.time() // 5) if live else 0)

    out: dict[str, pd.DataFrame] = {}
    if _use_sql(tracking_uri, reader):
        missing = [rid for rid, live in items if CURVE_CACHE.peek(key(rid, live)) is None]
        fetched = sqlstore.metric_histories(tracking_uri, missing, metric)
        for rid, live in items:

            def compute(rid: str = rid) -> pd.DataFrame:
                curve = fetched.get(rid)
                if curve is None:  # evicted since the peek: read this one alone
                    curve = sqlstore.metric_histories(tracking_uri, [rid], metric)[rid]
                return downsample_curve(curve, max_points)

            out[rid] = CURVE_CACHE.get_or_compute(key(rid, live), compute)
        return out
    client = _client(tracking_uri)

    def fetch(run_id: str, live: bool) -> tuple[str, pd.DataFrame]:
        def compute() -> pd.DataFrame:
            hist = client.get_metric_history(run_id, metric)
            steps = np.array([m.step for m in hist], dtype=np.int64)
            values = np.array([m.value for m in hist], dtype=float)
            order = np.argsort(steps, kind="stable")
            return downsample_curve(pd.DataFrame({"step": steps[order], "value": values[order]}), max_points)

        return run_id, CURVE_CACHE.get_or_compute(key(run_id, live), compute)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        return dict(pool.map(lambda a: fetch(*a), items))
