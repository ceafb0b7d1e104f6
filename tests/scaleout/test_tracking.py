"""Many writers, one tracking store, nothing lost.

1. Two micro sweeps (2 trials x 40 steps each) run at the same time as two ``windtunnel run --tracking-uri
   http://...`` processes against an MLflow server on PostgreSQL (scripts/tracking_server.sh): afterwards
   both sweeps are complete (trial runs = trials, each once; every metric key has exactly one point per
   logged step) and their end-of-sweep artifacts (runs.csv, laws.json) read back through the server equal
   the local files.
2. Several processes write to one ``sqlite:///`` file at once while the test holds an exclusive lock
   longer than MLflow's 20 s SQLite busy timeout: their calls fail with "database is locked", are retried
   (counted), and every run and metric arrives exactly once.
3. ``transient_kind`` / ``with_retry`` / ``TrialLogger`` buffering against a port nothing listens on
   (no server needed: a real MlflowClient, a real refused connection).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from windtunnel.orchestrator.tracking import (
    TrackingUnavailable,
    TrialLogger,
    ensure_experiment,
    ensure_parent_run,
    transient_kind,
    with_retry,
)

from .tracking_server import (
    TrackingServer,
    check_sweep_store,
    finish_sweep,
    free_port,
    kill_group,
    micro_spec,
    start_sweep,
    tracking_server,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def server() -> Iterator[TrackingServer]:
    with tracking_server() as srv:
        yield srv


@pytest.mark.slow
def test_two_sweeps_at_once_on_a_postgres_backed_server(server: TrackingServer, tmp_path: Path) -> None:
    specs = [micro_spec("pg-a", [1e-3, 1e-2]), micro_spec("pg-b", [2e-3, 2e-2])]
    procs = [start_sweep(s, tmp_path / s["name"], server.uri) for s in specs]
    try:
        results = [finish_sweep(p, timeout=400) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    for (rc, out), spec in zip(results, specs, strict=True):
        assert rc == 0, f"{spec['name']}: exit {rc}\n{out[-4000:]}"
        assert "2 launched" in out, out[-2000:]
    client = MlflowClient(server.uri)
    for spec in specs:
        name = spec["name"]
        counts = check_sweep_store(client, name, n_trials=2, total_steps=40)
        parent = counts["parent_run_id"]
        names = {f.path for f in client.list_artifacts(parent)}
        assert "runs.csv" in names
        local_dir = tmp_path / name / "wt_runs" / name
        got = Path(client.download_artifacts(parent, "runs.csv", str(tmp_path / f"dl-{name}")))
        assert got.read_text() == (local_dir / "runs.csv").read_text()
        if (local_dir / "laws.json").exists():  # the sweep reached the fit: laws.json is in the store too
            assert "laws.json" in names
            laws = Path(client.download_artifacts(parent, "laws.json", str(tmp_path / f"dl2-{name}")))
            assert json.loads(laws.read_text()) == json.loads((local_dir / "laws.json").read_text())
    # the sweeps' rows did not mix: each experiment holds only its own runs
    a, b = (client.get_experiment_by_name(s["name"]).experiment_id for s in specs)
    runs_a = client.search_runs([a], "tags.`windtunnel.role` = 'trial'")
    assert {r.data.tags["sweep"] for r in runs_a} == {"pg-a"}
    runs_b = client.search_runs([b], "tags.`windtunnel.role` = 'trial'")
    lrs_b = sorted(float(r.data.params["optim.lr"]) for r in runs_b)
    assert lrs_b == [2e-3, 2e-2]


@pytest.mark.slow
def test_sqlite_concurrent_writers_wait_out_a_locked_database(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    exp = ensure_experiment(client, "stress")
    parent = ensure_parent_run(client, exp, "stress", {"n_trials": 3})
    n_writers, n_steps = 3, 120
    # the writer runs tracking_server.py as a script: give it the test path (tests/micro_spec.py) too
    test_path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "WT_TRACKING_DEADLINE_S": "120", "OMP_NUM_THREADS": "1", "PYTHONPATH": test_path}
    ready = [tmp_path / f"ready{i}" for i in range(n_writers)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "tracking_server.py"), "writer", uri, exp, parent, f"h{i}"]
            + [str(n_steps), str(ready[i])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        for i in range(n_writers)
    ]
    try:
        deadline = time.time() + 120
        while not all(r.exists() for r in ready) and time.time() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.2)
        assert all(r.exists() for r in ready), "writers did not start"
        # hold an exclusive lock past MLflow's SQLite busy timeout (20 s): the writers' calls now fail with
        # "database is locked" and must be retried, not dropped
        lock = sqlite3.connect(db, isolation_level=None, timeout=60)
        lock.execute("BEGIN EXCLUSIVE")
        time.sleep(22)
        lock.execute("COMMIT")
        lock.close()
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            kill_group(p)  # type: ignore[arg-type]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sum(r["retries"].get("locked", 0) for r in reports) >= n_writers  # every writer hit the lock
    runs = client.search_runs([exp], "tags.`windtunnel.role` = 'trial'")
    assert len(runs) == n_writers and {r.data.tags["status"] for r in runs} == {"finished"}
    for r in runs:
        for key in ("loss", "lr", "tokens", "grad_norm"):
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            assert sorted(steps) == list(range(1, n_steps + 1)), (key, len(steps))
        assert r.data.metrics["rt.loss"] == pytest.approx(10.0 / n_steps)


def test_transient_errors_are_classified() -> None:
    locked = RuntimeError("(sqlite3.OperationalError) database is locked [SQL: INSERT ...]")
    assert transient_kind(locked) == "locked"
    assert transient_kind(
        RuntimeError("PendingRollbackError: This Session's transaction has been rolled back")
    )
    refused = RuntimeError(
        "API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded (Caused by NewConnectionError("
        "'Failed to establish a new connection: [Errno 111] Connection refused'))"
    )
    assert transient_kind(refused) == "unreachable"
    wrapped = RuntimeError("log_batch failed")
    wrapped.__cause__ = ConnectionResetError("peer reset")
    assert transient_kind(wrapped) == "unreachable"
    for real in (
        "RESOURCE_DOES_NOT_EXIST: Run 'x' not found",
        "too many 500 error responses",
        "no such table",
    ):
        assert transient_kind(RuntimeError(real)) is None, real


def test_with_retry_is_bounded_by_its_deadline() -> None:
    calls: list[float] = []

    def always_locked() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("database is locked")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="locked"):
        with_retry(always_locked, base_s=0.01, max_sleep_s=0.2, retry_deadline_s=1.0)
    assert time.monotonic() - t0 < 1.5 and 4 <= len(calls) <= 40
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert max(gaps) < 0.35  # capped back-off (0.2 s x jitter <= 1.5)
    calls.clear()
    with pytest.raises(RuntimeError):
        with_retry(always_locked, attempts=3, base_s=0.001)
    assert len(calls) == 3


def test_trial_logger_buffers_while_the_server_is_away_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a port nothing listens on: ``log`` keeps training going (metrics stay buffered, retries are
    spaced by back-off), ``flush`` waits until the deadline and raises ``TrackingUnavailable`` keeping the
    buffer; the buffer bound raises too."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    log = TrialLogger(uri, "1", "p", {"config_hash": "h"}, {}, flush_s=0.0, deadline=2.0)
    log.run_id = "r"
    t0 = time.monotonic()
    for step in range(1, 21):
        log.log(step, {"loss": 1.0 / step, "lr": 0.1})
    assert time.monotonic() - t0 < 2.0  # did not block on the dead server
    assert len(log.buffer) == 40 and log.outage_since is not None
    with pytest.raises(TrackingUnavailable, match="unavailable"):
        log.flush()
    assert time.monotonic() - t0 < 6.0 and len(log.buffer) == 40 and log.unavailable
    small = TrialLogger(uri, "1", "p", {"config_hash": "h"}, {}, flush_s=0.0, max_pending=10, deadline=60)
    small.run_id = "r"
    with pytest.raises(TrackingUnavailable, match="bound 10"):
        for step in range(1, 100):
            small.log(step, {"loss": 1.0})
    assert len(small.buffer) == 11  # nothing dropped: the metrics are still there for a later flush
