"""MLflow tracking: one parent run per sweep, one nested child run per trial, buffered batch logging.

Layout in the store (experiment = sweep name):
- parent run: tags ``windtunnel.role=parent``, ``sweep``; artifacts laws.json and figures at the end;
- child run per trial (identity = config hash): tags ``mlflow.parentRunId``, ``windtunnel.role=trial``,
  ``sweep, config_hash, status`` (running/finished/diverged/pruned/failed), ``family, study, kind,
  manifest_hash``; params = the full RunConfig flattened (``optim.lr`` ...); per-step metrics (``loss``,
  ``val_loss``, ``lr``, ...) logged in batches with ``MlflowClient.log_batch`` (<= 1,000 metrics a call);
  the DESIGN.md run-table row as ``rt.*`` metrics (``rt.params, rt.n_total, ..., rt.loss``).

Trials write to the store directly from their Ray workers; SQLite "database is locked" errors are retried
with exponential back-off (``with_retry``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

T = TypeVar("T")

ROLE = "windtunnel.role"
RT_PREFIX = "rt."
RT_NUMERIC = ["params", "n_total", "n_active", "m", "tokens", "compute", "lr", "batch_tokens", "loss"]
RT_OPTIONAL = ["act_ratio", "granularity"]
DONE_STATUSES = ("finished", "diverged", "pruned")
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100


def _is_locked(err: BaseException) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 10, base_s: float = 0.05, **kw: Any) -> T:
    """Call ``fn``; on SQLite "database is locked" retry with exponential back-off + jitter (~25 s total)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kw)
        except Exception as err:  # noqa: BLE001 - MlflowException or sqlalchemy OperationalError
            if not _is_locked(err) or attempt == attempts - 1:
                raise
            time.sleep(base_s * 2**attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def ensure_experiment(client: MlflowClient, name: str) -> str:
    exp = with_retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return with_retry(client.create_experiment, name)
    except MlflowException:  # created concurrently
        exp = with_retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def search_all(client: MlflowClient, exp_id: str, filter_string: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = with_retry(client.search_runs, [exp_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def ensure_parent_run(client: MlflowClient, exp_id: str, sweep: str, spec_params: dict[str, Any]) -> str:
    """The sweep's parent run; re-running the same sweep reuses it."""
    found = search_all(client, exp_id, f"tags.`{ROLE}` = 'parent' and tags.sweep = '{sweep}'")
    if found:
        run_id = found[0].info.run_id
        with_retry(client.set_tag, run_id, "status", "running")
        return run_id
    run = with_retry(
        client.create_run,
        exp_id,
        run_name=f"{sweep}",
        tags={ROLE: "parent", "sweep": sweep, "status": "running"},
    )
    params = [Param(k, str(v)[:6000]) for k, v in spec_params.items()]
    for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
        with_retry(client.log_batch, run.info.run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
    return run.info.run_id


def effective_status(run: Any) -> str:
    """The run's status; a trial stopped by Tune counts as ``pruned`` only if the scheduler pruned it.

    A trial stopped for another reason (Ctrl-C, an aborted Tuner) stays ``stopped`` and is resumed on re-run.
    """
    tags = run.data.tags
    status = tags.get("status", "running")
    if status in ("stopped", "running") and tags.get("pruned") == "1":
        return "pruned"
    return status


def trial_runs(client: MlflowClient, exp_id: str) -> dict[str, Any]:
    """config hash -> child run (the most advanced one if a hash somehow appears twice)."""
    rank = {"finished": 4, "diverged": 3, "pruned": 2, "failed": 1, "stopped": 0, "running": 0}
    out: dict[str, Any] = {}
    for run in search_all(client, exp_id, f"tags.`{ROLE}` = 'trial'"):
        h = run.data.tags.get("config_hash")
        if h is None:
            continue
        old = out.get(h)
        if old is None or rank.get(effective_status(run), 0) > rank.get(effective_status(old), 0):
            out[h] = run
    return out


class TrialLogger:
    """Buffered metric logging for one trial's child run (created, or found again on resume).

    ``log(step, metrics)`` appends to a buffer; the buffer goes out in one ``log_batch`` when it holds
    ``max_buffer`` values or ``flush_s`` seconds have passed. Steps at or below the last step already in
    the store (a resumed trial replays them from its checkpoint) are skipped, so no metric is duplicated.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        tags: dict[str, str],
        params: dict[str, Any],
        flush_s: float = 10.0,
        max_buffer: int = MAX_METRICS_PER_BATCH,
    ) -> None:
        self.client = MlflowClient(tracking_uri)
        self.exp_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = tags
        self.params = params
        self.flush_s = flush_s
        self.max_buffer = min(max_buffer, MAX_METRICS_PER_BATCH)
        self.buffer: list[Metric] = []
        self.last_flush = time.monotonic()
        self.resume_step = -1
        self.run_id = ""
        self.existing_status: str | None = None
        self.resumed = False  # the child run existed already (an interrupted or retried trial)
        self.existing_metrics: dict[str, float] = {}
        self.setup_seconds = 0.0  # finding/creating the child run and logging its params
        self.log_seconds = 0.0  # time spent in per-step metric logging (for the logging-cost benchmark)
        self.n_calls = 0

    def start(self) -> str:
        t0 = time.perf_counter()
        h = self.tags["config_hash"]
        existing = search_all(
            self.client, self.exp_id, f"tags.`{ROLE}` = 'trial' and tags.config_hash = '{h}'"
        )
        if existing:
            run = existing[0]
            self.run_id = run.info.run_id
            self.resumed = True
            self.existing_status = effective_status(run)
            self.existing_metrics = dict(run.data.metrics)
            if self.existing_status in DONE_STATUSES:  # e.g. a search re-sampled a done point: nothing to do
                return self.run_id
            hist = with_retry(self.client.get_metric_history, self.run_id, "loss")
            self.resume_step = max((m.step for m in hist), default=-1)
            with_retry(self.client.set_tag, self.run_id, "status", "running")
            attempts = int(run.data.tags.get("attempts", "1")) + 1
            with_retry(self.client.set_tag, self.run_id, "attempts", str(attempts))
        else:
            tags = {
                "mlflow.parentRunId": self.parent_run_id,
                ROLE: "trial",
                "status": "running",
                "attempts": "1",
            }
            tags.update(self.tags)
            run = with_retry(
                self.client.create_run, self.exp_id, tags=tags, run_name=self.tags.get("run_name")
            )
            self.run_id = run.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in self.params.items()]
            for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
                with_retry(self.client.log_batch, self.run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
        self.setup_seconds += time.perf_counter() - t0
        return self.run_id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if step <= self.resume_step:
            return
        ts = int(time.time() * 1000)
        new = [
            Metric(k, float(v), ts, int(step))
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        if len(self.buffer) + len(new) > self.max_buffer:  # one log_batch holds at most 1,000 metrics
            self.flush()
        self.buffer.extend(new)
        if time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        t0 = time.perf_counter()
        while self.buffer:
            chunk, self.buffer = self.buffer[: self.max_buffer], self.buffer[self.max_buffer :]
            with_retry(self.client.log_batch, self.run_id, metrics=chunk)
            self.n_calls += 1
        self.last_flush = time.monotonic()
        self.log_seconds += time.perf_counter() - t0

    def backfill(self, history: list[tuple[int, dict[str, float]]]) -> int:
        """Log (key, step) values of ``history`` missing from the store (lost in a crash). Returns count."""
        self.flush()
        keys = sorted({k for _, m in history for k in m})
        ts = int(time.time() * 1000)
        for key in keys:
            have = {m.step for m in with_retry(self.client.get_metric_history, self.run_id, key)}
            for s, m in history:
                v = m.get(key)
                if s in have or v is None or isinstance(v, bool) or not isinstance(v, int | float):
                    continue
                if math.isfinite(float(v)):
                    self.buffer.append(Metric(key, float(v), ts, int(s)))
        n = len(self.buffer)
        self.flush()
        return n

    def finish(
        self, status: str, row: dict[str, float] | None = None, tags: dict[str, str] | None = None
    ) -> None:
        """Flush, write the run-table row (``rt.*``) and the final status; terminate the MLflow run."""
        self.flush()
        ts = int(time.time() * 1000)
        metrics = [
            Metric(RT_PREFIX + k, float(v), ts, 0)
            for k, v in (row or {}).items()
            if v is not None and math.isfinite(float(v))
        ]
        all_tags = [RunTag("status", status)] + [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
        with_retry(self.client.log_batch, self.run_id, metrics=metrics, tags=all_tags)
        mlflow_status = {"finished": "FINISHED", "diverged": "FINISHED", "stopped": "KILLED"}.get(
            status, "FAILED"
        )
        with_retry(self.client.set_terminated, self.run_id, mlflow_status)


def runs_from_mlflow(tracking_uri: str, experiment: str) -> Any:
    """Rebuild the DESIGN.md run table (one row per trial run) from an MLflow experiment.

    Columns: the run table (``windtunnel.runtable.RUN_TABLE_COLUMNS``) from the ``rt.*`` metrics and the
    ``sweep``/``family``/``status`` tags, plus ``act_ratio, granularity`` (MoE), ``study``, ``config_hash``,
    ``reason`` (why a run is not usable, e.g. the divergence message), ``mlflow_run_id``.
    """
    import pandas as pd

    from windtunnel.runtable import validate_run_table

    client = MlflowClient(tracking_uri)
    exp = with_retry(client.get_experiment_by_name, experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} in {tracking_uri}")
    rows = []
    for h, run in sorted(trial_runs(client, exp.experiment_id).items()):
        m = run.data.metrics
        t = run.data.tags
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "sweep": t.get("sweep", experiment),
            "family": t.get("family", ""),
            "status": effective_status(run),
        }
        for k in RT_NUMERIC + RT_OPTIONAL:
            row[k] = m.get(RT_PREFIX + k, float("nan"))
        reason = t.get("pruned_reason", "") if row["status"] == "pruned" else t.get("reason", "")
        if row["status"] == "finished":
            reason = ""
        row.update(study=t.get("study", ""), config_hash=h, reason=reason)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["run_id", "sweep", "family", "status", *RT_NUMERIC])
    return validate_run_table(df)
