"""MLflow tracking: one parent run per sweep, one nested child run per trial, buffered batch logging.

Layout in the store (experiment = sweep name):
- parent run: tags ``windtunnel.role=parent``, ``sweep``; artifacts laws.json and figures at the end;
- child run per trial (identity = ``trial_key``, see ``identity.py``): tags ``mlflow.parentRunId``,
  ``windtunnel.role=trial``, ``sweep, trial_key, config_hash, status`` (running/finished/diverged/pruned/
  failed), ``family, study, kind, manifest_hash, trainer_results_version`` (search trials: ``search_group,
  group_key``); params = the full RunConfig flattened (``optim.lr`` ...); per-step metrics (``loss``,
  ``val_loss``, ``lr``, ...) logged in batches with ``MlflowClient.log_batch`` (<= 1,000 metrics a call);
  the run-table row (docs/DESIGN.md "Contracts") as ``rt.*`` metrics (``rt.params, rt.n_total, ...,
  rt.loss``).

Trials write to the store directly from their Ray workers (a ``sqlite:///`` file or a tracking server,
docs/TRACKING.md). Transient store errors are retried by ``with_retry`` (bounded exponential back-off with
jitter, up to a deadline): SQLite "database is locked" and the SQLAlchemy errors around it, and a tracking
server that is unreachable (refused/reset connections, timeouts, HTTP 502/503/504). ``TrialLogger`` keeps
unsent metrics in a bounded buffer while the store is away and sends them when it returns; past the
deadline (``WT_TRACKING_DEADLINE_S``, default 300 s) or the buffer bound it raises ``TrackingUnavailable``
so that the trial fails and Tune retries it. Re-sending a batch is idempotent: MLflow's SQL store skips a
metric whose (key, step, timestamp, value) it already holds, and the buffer keeps each metric's timestamp.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from windtunnel.errors import ArtifactStoreError, TrackingUnavailable, one_line  # noqa: F401 - re-exported
from windtunnel.orchestrator.tracking_retry import (  # noqa: F401 - re-exported
    DEFAULT_DEADLINE_S,
    HTTP_DEFAULTS,
    RETRY_STATS,
    backoff_s,
    configure_http_retries,
    deadline_s,
    log_artifact,
    transient_kind,
    with_retry,
)

T = TypeVar("T")

ROLE = "windtunnel.role"
RT_PREFIX = "rt."
RT_NUMERIC = ["params", "n_total", "n_active", "m", "tokens", "compute", "lr", "batch_tokens", "loss"]
RT_OPTIONAL = ["act_ratio", "granularity"]
DONE_STATUSES = ("finished", "diverged", "pruned")
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PENDING_METRICS = 200_000  # TrialLogger's buffer bound while the store is away (~20 MB)


def open_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` whose store exists and is fully migrated.

    MLflow creates a new SQLite store's schema on first use, with Alembic migrations that are not safe to run
    from two processes at once (the second crashes with e.g. "duplicate column name"): a sweep's driver and a
    ``windtunnel status`` or a second sweep opening the same new file. For ``sqlite:///`` URIs the first use
    happens under an exclusive ``fcntl`` lock on ``<db>.lock``, so a second process waits for the first to
    finish creating the schema and then finds it complete. Servers migrate their own store.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri)
    import fcntl
    from pathlib import Path

    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:  # the store (and a new file's schema) is created when the client first touches it
            client = MlflowClient(tracking_uri)
            with_retry(client.search_experiments, max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


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
        if found[0].info.status != "RUNNING":  # ended by an earlier complete run of the sweep
            with_retry(client.update_run, run_id, status="RUNNING")
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
    """trial key -> child run (the most advanced one if a key somehow appears twice). A run written without a
    ``trial_key`` tag is keyed ``config_hash:<hash>``: it matches no trial key, so it is never reused."""
    rank = {"finished": 4, "diverged": 3, "pruned": 2, "failed": 1, "stopped": 0, "running": 0}
    out: dict[str, Any] = {}
    for run in search_all(client, exp_id, f"tags.`{ROLE}` = 'trial'"):
        h = run.data.tags.get("trial_key")
        if h is None:
            if "config_hash" not in run.data.tags:
                continue
            h = "config_hash:" + run.data.tags["config_hash"]
        old = out.get(h)
        if old is None or rank.get(effective_status(run), 0) > rank.get(effective_status(old), 0):
            out[h] = run
    return out


class TrialLogger:
    """Buffered metric logging for one trial's child run (created, or found again on resume).

    ``log(step, metrics)`` appends to a buffer; the buffer goes out in ``log_batch`` calls when it holds
    ``max_buffer`` values or ``flush_s`` seconds have passed. Steps at or below the last step already in
    the store (a resumed trial replays them from its checkpoint) are skipped, so no metric is duplicated.

    While the store is unreachable (or locked) ``log`` keeps training going: a failed send leaves the metrics
    in the buffer and the next try waits ``backoff_s`` (up to 30 s). ``flush`` (used at evaluations and at the
    end) waits for the store. Both raise ``TrackingUnavailable`` once the outage has lasted ``deadline``
    seconds (default ``deadline_s()``) or more than ``max_pending`` metrics are waiting; the buffer is kept,
    nothing is dropped without an error.
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
        max_pending: int = MAX_PENDING_METRICS,
        deadline: float | None = None,
    ) -> None:
        configure_http_retries()
        self.client = MlflowClient(tracking_uri)
        self.exp_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = tags
        self.params = params
        self.flush_s = flush_s
        self.max_buffer = min(max_buffer, MAX_METRICS_PER_BATCH)
        self.max_pending = max_pending
        self.deadline = deadline_s() if deadline is None else deadline
        self.buffer: list[Metric] = []
        self.last_flush = time.monotonic()
        self.outage_since: float | None = None  # first failed send of the current outage
        self.outage_tries = 0
        self.next_try = 0.0
        self.unavailable = False  # TrackingUnavailable was raised
        self.n_outages = 0  # outages survived (sends that failed, then succeeded later)
        self.resume_step = -1
        self.run_id = ""
        self.existing_status: str | None = None
        self.resumed = False  # the child run existed already (an interrupted or retried trial)
        self.existing_metrics: dict[str, float] = {}
        self.setup_seconds = 0.0  # finding/creating the child run and logging its params
        self.log_seconds = 0.0  # time spent in per-step metric logging (for the logging-cost benchmark)
        self.n_calls = 0

    def _retry(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``with_retry`` bounded by this logger's deadline; ``TrackingUnavailable`` when it runs out."""
        try:
            return with_retry(fn, *args, retry_deadline_s=self.deadline, **kw)
        except Exception as err:
            if transient_kind(err) is None:
                raise
            self.unavailable = True
            raise TrackingUnavailable(
                f"tracking store {self.client.tracking_uri} unavailable for {self.deadline:.0f}s: "
                + one_line(err)[:300]
            ) from err

    def _find_run(self) -> Any | None:
        """This trial's child run by trial key (one try: the callers retry within the deadline)."""
        tag = "trial_key" if "trial_key" in self.tags else "config_hash"
        h = self.tags[tag]
        found = self.client.search_runs(
            [self.exp_id], f"tags.`{ROLE}` = 'trial' and tags.{tag} = '{h}'", max_results=10
        )
        return found[0] if found else None

    def start(self) -> str:
        t0 = time.perf_counter()
        run = self._retry(self._find_run)
        if run is not None:
            self.run_id = run.info.run_id
            self.resumed = True
            self.existing_status = effective_status(run)
            self.existing_metrics = dict(run.data.metrics)
            if self.existing_status in DONE_STATUSES:  # e.g. a search re-sampled a done point: nothing to do
                return self.run_id
            hist = self._retry(self.client.get_metric_history, self.run_id, "loss")
            self.resume_step = max((m.step for m in hist), default=-1)
            attempts = int(run.data.tags.get("attempts", "1")) + 1
            tags = [RunTag("status", "running"), RunTag("attempts", str(attempts))]
            self._retry(self.client.log_batch, self.run_id, tags=tags)
        else:
            self.run_id = self._create_run()
            params = [Param(k, str(v)[:6000]) for k, v in self.params.items()]
            for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
                self._retry(self.client.log_batch, self.run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
        self.setup_seconds += time.perf_counter() - t0
        return self.run_id

    def _create_run(self) -> str:
        """Create the child run. ``create_run`` is not idempotent: a call whose answer was lost (server gone
        mid-request) may have created the run, so every retry first looks for it by trial key."""
        tags = {"mlflow.parentRunId": self.parent_run_id, ROLE: "trial", "status": "running", "attempts": "1"}
        tags.update(self.tags)

        def create_once() -> str:
            found = self._find_run()
            if found is not None:
                return found.info.run_id
            return self.client.create_run(
                self.exp_id, tags=tags, run_name=self.tags.get("run_name")
            ).info.run_id

        try:  # the first try skips the search (start() has just searched)
            return self.client.create_run(
                self.exp_id, tags=tags, run_name=self.tags.get("run_name")
            ).info.run_id
        except Exception as err:
            if transient_kind(err) is None:
                raise
        return self._retry(create_once)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if step <= self.resume_step:
            return
        ts = int(time.time() * 1000)
        new = [
            Metric(k, float(v), ts, int(step))
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        # one log_batch holds at most 1,000 metrics: send before the buffer would overflow a batch
        if len(self.buffer) + len(new) > self.max_buffer and time.monotonic() >= self.next_try:
            self._send(block=False)
        self.buffer.extend(new)
        if time.monotonic() - self.last_flush >= self.flush_s and time.monotonic() >= self.next_try:
            self._send(block=False)
        self._check_bounds()

    def _check_bounds(self) -> None:
        if self.outage_since is None:
            return
        away = time.monotonic() - self.outage_since
        if away > self.deadline or len(self.buffer) > self.max_pending:
            self.unavailable = True
            raise TrackingUnavailable(
                f"tracking store {self.client.tracking_uri} unreachable for {away:.0f}s "
                f"(deadline {self.deadline:.0f}s), {len(self.buffer)} metrics buffered "
                f"(bound {self.max_pending}): giving up so that the trial is retried"
            )

    def _send(self, block: bool) -> None:
        """Send the buffer in chunks of ``max_buffer``; a chunk leaves the buffer only once stored."""
        t0 = time.perf_counter()
        try:
            while self.buffer:
                chunk = self.buffer[: self.max_buffer]
                if block:
                    t_try = time.monotonic()
                    left = self.deadline - (t_try - (self.outage_since or t_try))
                    try:
                        with_retry(
                            self.client.log_batch, self.run_id, metrics=chunk, retry_deadline_s=max(0.0, left)
                        )
                    except Exception as err:
                        if transient_kind(err) is None:
                            raise
                        self.outage_since = self.outage_since or t_try
                        self.unavailable = True
                        raise TrackingUnavailable(
                            f"tracking store {self.client.tracking_uri} unavailable for "
                            f"{time.monotonic() - self.outage_since:.0f}s (deadline {self.deadline:.0f}s), "
                            f"{len(self.buffer)} metrics buffered: " + one_line(err)[:300]
                        ) from err
                else:
                    try:
                        self.client.log_batch(self.run_id, metrics=chunk)
                    except Exception as err:
                        if transient_kind(err) is None:
                            raise
                        if self.outage_since is None:
                            self.outage_since = time.monotonic()
                        kind = transient_kind(err) or ""
                        RETRY_STATS[kind] = RETRY_STATS.get(kind, 0) + 1
                        self.outage_tries += 1
                        self.next_try = time.monotonic() + backoff_s(self.outage_tries, 0.5, 30.0)
                        return
                del self.buffer[: len(chunk)]
                self.n_calls += 1
            if self.outage_since is not None:
                self.n_outages += 1
            self.outage_since, self.outage_tries, self.next_try = None, 0, 0.0
            self.last_flush = time.monotonic()
        finally:
            self.log_seconds += time.perf_counter() - t0

    def flush(self) -> None:
        """Send everything buffered, waiting for the store up to the deadline (``TrackingUnavailable``)."""
        self._send(block=True)

    def backfill(self, history: list[tuple[int, dict[str, float]]]) -> int:
        """Log (key, step) values of ``history`` missing from the store (lost in a crash). Returns count."""
        self.flush()
        keys = sorted({k for _, m in history for k in m})
        ts = int(time.time() * 1000)
        for key in keys:
            have = {m.step for m in self._retry(self.client.get_metric_history, self.run_id, key)}
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
        self,
        status: str,
        row: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        extra: dict[str, float] | None = None,
    ) -> None:
        """Flush, write the run-table row (``rt.*``), ``extra`` metrics (step 0) and the final status;
        terminate the MLflow run.

        ``failed`` after ``TrackingUnavailable`` is best effort (one try, a warning if the store is still
        away): the run then stays ``running`` in the store and the next attempt or re-run resumes it.
        """
        if status == "failed" and self.unavailable:
            self.deadline, self.outage_since = min(self.deadline, 5.0), None
            try:
                self._finish(status, row, tags, extra)
            except Exception as err:  # noqa: BLE001
                warnings.warn(
                    f"trial run {self.run_id}: could not record status 'failed': {err}", stacklevel=2
                )
            return
        self._finish(status, row, tags, extra)

    def _finish(
        self,
        status: str,
        row: dict[str, float] | None,
        tags: dict[str, str] | None,
        extra: dict[str, float] | None,
    ) -> None:
        self.flush()
        ts = int(time.time() * 1000)
        metrics = [
            Metric(RT_PREFIX + k, float(v), ts, 0)
            for k, v in (row or {}).items()
            if v is not None and math.isfinite(float(v))
        ]
        metrics += [Metric(k, float(v), ts, 0) for k, v in (extra or {}).items() if math.isfinite(float(v))]
        all_tags = [RunTag("status", status)] + [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
        self._retry(self.client.log_batch, self.run_id, metrics=metrics, tags=all_tags)
        mlflow_status = {"finished": "FINISHED", "diverged": "FINISHED", "stopped": "KILLED"}.get(
            status, "FAILED"
        )
        self._retry(self.client.set_terminated, self.run_id, mlflow_status)


def runs_from_mlflow(tracking_uri: str, experiment: str) -> Any:
    """Rebuild the run table (docs/DESIGN.md "Contracts"; one row per trial run) from an MLflow experiment.

    Columns: the run table (``windtunnel.runtable.RUN_TABLE_COLUMNS``) from the ``rt.*`` metrics and the
    ``sweep``/``family``/``status`` tags, plus ``act_ratio, granularity`` (MoE), ``study``, ``config_hash``,
    ``reason`` (why a run is not usable, e.g. the divergence message), ``mlflow_run_id``; a run that took
    points (``trainer.points``) adds one row per point (``windtunnel.runtable.expand_points``, columns
    ``POINT_COLUMNS``).
    """
    import pandas as pd

    from windtunnel.runtable import expand_points, validate_run_table

    client = open_client(tracking_uri)
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
        row.update(
            study=t.get("study", ""),
            config_hash=t.get("config_hash", h),
            trial_key=t.get("trial_key", ""),
            reason=reason,
        )
        pts = {k[len(RT_PREFIX) :]: v for k, v in m.items() if k.startswith(RT_PREFIX + "pt")}
        rows.extend(expand_points(row, pts))
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["run_id", "sweep", "family", "status", *RT_NUMERIC])
    return validate_run_table(df)
