"""Server-side aggregation for the dashboard and the report: MLflow runs + laws.json -> plain tables.

Everything a chart needs is computed here, on the server, and cached per (tracking URI, experiment, store
version); the browser only receives the few thousand points it draws. The store is only read.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from windtunnel.runtable import validate_run_table

NEAR_OPTIMAL_TOL = 0.0025  # Ling (arXiv 2507.17702 sec. 3): runs within 0.25% of the best loss at a budget
STATES = ("running", "finished", "failed", "diverged", "killed", "scheduled")


class _Cache:
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

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


SWEEP_CACHE = _Cache(8)
CURVE_CACHE = _Cache(4096)


@dataclass
class SweepData:
    """All child runs of one experiment: the run table plus progress bookkeeping."""

    experiment: str
    runs: (
        pd.DataFrame
    )  # run-table columns + mlflow_status, state, start_time, end_time, run_name, parent_run_id
    version: tuple
    load_s: float

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


def _experiment_id(tracking_uri: str, experiment: str) -> str:
    exp = _client(tracking_uri).get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no experiment named {experiment!r} in {tracking_uri}")
    return exp.experiment_id


def list_experiments(tracking_uri: str) -> list[str]:
    """Names of the experiments in the store, newest first (the Default experiment last)."""
    from mlflow.entities import ViewType

    exps = _client(tracking_uri).search_experiments(view_type=ViewType.ACTIVE_ONLY)
    names = [e.name for e in sorted(exps, key=lambda e: -(e.creation_time or 0))]
    return sorted(names, key=lambda n: n == "Default")


def store_version(tracking_uri: str, experiment: str, refresh_s: float = 5.0) -> tuple:
    """Cheap cache key for an experiment's run set: (newest start, newest end, runs alive, time bucket).

    Three one-row queries. A finished store has a fixed key; while runs are alive their metrics change without
    touching the run rows, so the key also carries ``floor(now / refresh_s)``.
    """
    client = _client(tracking_uri)
    exp_id = _experiment_id(tracking_uri, experiment)
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
    """Turn ``mlflow.search_runs``-shaped rows into run-table rows (trial runs only) plus bookkeeping columns:
    ``state`` (the trial's status tag, else MLflow's status), ``mlflow_status``, ``start_time``, ``end_time``,
    ``run_name``, ``parent_run_id``. A config hash logged twice keeps its most advanced run (as
    ``windtunnel.orchestrator.tracking.trial_runs`` does)."""
    extra = ["state", "mlflow_status", "start_time", "end_time", "run_name", "parent_run_id"]
    if search_df.empty:
        return validate_run_table(pd.DataFrame({"run_id": pd.Series([], dtype=str)})).assign(
            **{c: pd.Series([], dtype=object) for c in extra}
        )
    df = search_df
    parent = _column(df, "tags.mlflow.parentRunId")
    role = _column(df, "tags.windtunnel.role")
    is_parent = df["run_id"].isin(set(parent.dropna())) | role.isin(["parent", "sweep"])
    df, parent = df[~is_parent], parent[~is_parent]
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
    table["parent_run_id"] = parent.fillna("").astype(str).to_numpy()
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


def load_sweeps(tracking_uri: str, experiment: str, refresh_s: float = 5.0) -> SweepData:
    """Child runs of ``experiment`` as a run table, cached per (uri, experiment, store_version)."""
    version = store_version(tracking_uri, experiment, refresh_s)

    def compute() -> SweepData:
        t0 = time.perf_counter()
        client = _client(tracking_uri)
        runs: list = []
        token = None
        while True:  # the client is bound to our URI (mlflow.search_runs would use the global one)
            page = client.search_runs([version[0]], max_results=5000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        return SweepData(experiment, runs_frame(runs_to_df(runs)), version, time.perf_counter() - t0)

    return SWEEP_CACHE.get_or_compute((tracking_uri, experiment, version), compute)


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


def loss_curves(
    tracking_uri: str, runs: pd.DataFrame, metric: str = "loss", limit: int = 60, workers: int = 8
) -> dict[str, pd.DataFrame]:
    """Per-step ``metric`` history (columns step, value) of up to ``limit`` runs, newest first.

    Finished runs are cached forever (their history cannot change); live runs per store version.
    """
    chosen = runs.sort_values("start_time", ascending=False).head(limit)
    client = _client(tracking_uri)

    def fetch(run_id: str, live: bool) -> tuple[str, pd.DataFrame]:
        key = (tracking_uri, run_id, metric, int(time.time() // 5) if live else 0)

        def compute() -> pd.DataFrame:
            hist = client.get_metric_history(run_id, metric)
            steps = np.array([m.step for m in hist], dtype=np.int64)
            values = np.array([m.value for m in hist], dtype=float)
            order = np.argsort(steps, kind="stable")
            return pd.DataFrame({"step": steps[order], "value": values[order]})

        return run_id, CURVE_CACHE.get_or_compute(key, compute)

    items = list(zip(chosen["run_id"], chosen["mlflow_status"] == "running", strict=True))
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        return dict(pool.map(lambda a: fetch(*a), items))
