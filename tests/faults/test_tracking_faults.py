"""Tracking faults against an MLflow server on PostgreSQL (scripts/tracking_server.sh).

1. The mlflow server is SIGKILLed mid-sweep and restarted on the same port seconds later: trials keep
   training, their metrics wait in the trial's buffer and reach the store when it returns; the sweep ends
   normally and no finished run and no metric point is lost or duplicated (counted), no trial was retried.
2. The server stays away past the trial's deadline: the trial fails cleanly (bounded time) and its retry
   (what Tune does) resumes the same MLflow run from the checkpoint and completes it, gaps back-filled.
3. The artifact store's disk is full (a tmpfs filled to ENOSPC; root only): the end-of-sweep upload fails
   with one clear line naming the file, the destination and the cause, exit 2; runs and metrics are intact.
   Same for a local (file) artifact store behind SQLite, where the OS error itself is named.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the scale-out helpers package

from scaleout.tracking_server import (  # noqa: E402
    TrackingServer,
    check_sweep_store,
    expected_steps,
    finish_sweep,
    kill_group,
    micro_spec,
    pg_missing_reason,
    start_sweep,
    tiny_tmpfs,
    tracking_server,
)

from trainer.config import RunConfig  # noqa: E402
from windtunnel.orchestrator.tracking import (  # noqa: E402
    ArtifactStoreError,
    ensure_experiment,
    ensure_parent_run,
    log_artifact,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

# 2 trials x OUTAGE_STEPS steps (~25 ms a step). An evaluation flushes and waits for the store, so a trial
# trains through an outage only between evaluations: with one every OUTAGE_EVAL steps (>= 2.5 s of training
# after the flush that put its first metrics in the store) the kill lands while it trains, not while it
# waits in a flush (with an evaluation every 10 steps it could, and then nothing was logged during the outage)
OUTAGE_STEPS = 1000
OUTAGE_EVAL = 100
OUTAGE_SPEC = micro_spec("outage", [1e-3, 1e-2], tokens=OUTAGE_STEPS * 512, fit=False)
OUTAGE_SPEC["base"]["eval_interval"] = OUTAGE_EVAL


@pytest.fixture(scope="module")
def server() -> Iterator[TrackingServer]:
    """One PostgreSQL-backed server for the module; its artifacts on a 4 MiB tmpfs when root."""
    reason = pg_missing_reason()
    if reason:
        pytest.skip(reason)
    with tiny_tmpfs("4m") as mnt, tracking_server(artifacts=mnt) as srv:
        srv.tmpfs = mnt  # type: ignore[attr-defined]
        yield srv


def _latest_loss_steps(client: MlflowClient, sweep: str) -> dict[str, int]:
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return {}
    out = {}
    for r in client.search_runs([exp.experiment_id], "tags.`windtunnel.role` = 'trial'"):
        if r.data.tags.get("status") == "running":
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
            out[r.info.run_id] = max(steps, default=0)
    return out


def test_tracking_server_killed_mid_sweep_loses_nothing(server: TrackingServer, tmp_path: Path) -> None:
    proc = start_sweep(OUTAGE_SPEC, tmp_path / "outage", server.uri, WT_TRACKING_DEADLINE_S="120")
    client = MlflowClient(server.uri)
    try:
        deadline = time.time() + 300
        running: dict[str, int] = {}
        # kill as soon as the first trial's first metrics (its first evaluation or its first timed flush) are
        # in the store: it is training now, and what it logs during the outage must wait in its buffer
        while time.time() < deadline and proc.poll() is None:
            with contextlib.suppress(Exception):
                running = {k: v for k, v in _latest_loss_steps(client, "outage").items() if v > 0}
            if running:
                break
            time.sleep(0.1)
        assert running and proc.poll() is None, "no trial was running before the sweep ended"
        t_kill_ms = time.time() * 1000
        server.kill_server()
        time.sleep(4)
        server.start()  # same port, same database
        t_back_ms = time.time() * 1000
        rc, out = finish_sweep(proc, timeout=400)
    finally:
        kill_group(proc)
    assert rc == 0, out[-4000:]
    counts = check_sweep_store(  # none lost or doubled
        client, "outage", n_trials=2, total_steps=OUTAGE_STEPS, eval_interval=OUTAGE_EVAL
    )
    n_val = len(range(OUTAGE_EVAL, OUTAGE_STEPS + 1, OUTAGE_EVAL))
    assert counts["points_checked"] == 2 * (4 * len(expected_steps(OUTAGE_STEPS)) + n_val)
    for run_id in running:  # the trial that was logging at the kill
        assert client.get_run(run_id).data.tags["attempts"] == "1", "buffered, not survived by a retry"
    # metrics a trial produced while the server was down (timestamped then, sent later) are in the store
    during = [
        m.step
        for run_id in running
        for key in ("loss", "val_loss")
        for m in client.get_metric_history(run_id, key)
        if t_kill_ms <= m.timestamp <= t_back_ms
    ]
    assert during, "no metric was logged during the outage: the kill missed the trial"


def _micro_cfg(steps: int) -> RunConfig:
    base = micro_spec("x", [3e-3], tokens=steps * 512)["base"]
    return RunConfig.from_dict({**base, "data": {"max_corpus_bytes": 2_000_000}, "name": "deadline"})


def test_trial_fails_cleanly_past_the_deadline_and_its_retry_completes(
    server: TrackingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from windtunnel.orchestrator.trial import execute_trial

    monkeypatch.setenv("WT_TRACKING_DEADLINE_S", "4")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # each failed call returns at once
    client = MlflowClient(server.uri)
    exp = ensure_experiment(client, "deadline")
    parent = ensure_parent_run(client, exp, "deadline", {"n_trials": 1})
    cfg = _micro_cfg(40)
    ctx = {
        "tracking_uri": server.uri,
        "experiment_id": exp,
        "parent_run_id": parent,
        "sweep": "deadline",
        "sweep_dir": str(tmp_path),
        "cpus": 1,
        "log_flush_s": 0.0,
    }
    meta = {"study": "lr", "kind": "grid", "budget": None}
    killed: list[float] = []

    def kill_at_step_20(result: dict) -> None:
        if result.get("step", 0) >= 20 and not killed:
            server.kill_server()
            killed.append(time.monotonic())

    with pytest.warns(UserWarning, match="could not record status 'failed'"):
        with pytest.raises(RuntimeError, match="status 'failed'"):
            execute_trial(cfg, meta, ctx, tune_report=kill_at_step_20)
    assert killed and time.monotonic() - killed[0] < 60  # bounded: deadline 4 s + HTTP retries + 5 s
    server.start()
    run_id = client.search_runs([exp], "tags.`windtunnel.role` = 'trial'")[0].info.run_id
    stored = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert max(stored) == 20  # what reached the store before the kill
    # Tune's retry of the failed trial: same run, resumed from the step-30 checkpoint, gaps back-filled
    result = execute_trial(cfg, meta, ctx)
    assert result is not None and result.status == "finished" and result.resumed_from == 30
    runs = client.search_runs([exp], "tags.`windtunnel.role` = 'trial'")
    assert len(runs) == 1 and runs[0].info.run_id == run_id
    assert runs[0].data.tags["attempts"] == "2" and runs[0].data.tags["status"] == "finished"
    for key, want in (("loss", list(range(5, 41, 5))), ("val_loss", [10, 20, 30, 40])):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == want, key


def _fill(path: Path) -> Path:
    """Write zeros into ``path/filler`` (unbuffered) until the filesystem says ENOSPC."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"\0" * (1 << 16))
    except OSError as err:
        assert err.errno == 28, err
    finally:
        os.close(fd)
    return filler


def test_artifact_disk_full_is_one_clear_line_and_runs_are_intact(
    server: TrackingServer, tmp_path: Path
) -> None:
    mnt: Path | None = getattr(server, "tmpfs", None)
    if mnt is None:
        pytest.skip("needs root to mount a tiny tmpfs as the artifact store")
    filler = _fill(mnt)
    try:
        # (a) the end of a sweep against the server: runs.csv cannot be uploaded. The sweep is the outage
        # test's: its trials are done, so this run launches nothing and goes straight to the end-of-sweep
        # artifacts (run alone, it trains them first)
        spec = OUTAGE_SPEC
        proc = start_sweep(spec, tmp_path / "outage", server.uri)
        rc, out = finish_sweep(proc, timeout=400)
        assert rc == 2, out[-3000:]
        errors = [line for line in out.splitlines() if line.startswith("windtunnel run: error:")]
        assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
        line = errors[0]
        assert "cannot store artifact" in line and "runs.csv" in line and "mlflow-artifacts:/" in line
        assert "HTTP 500" in line and "full or not writable" in line
        assert "No space left on device" in (server.root / "mlflow.log").read_text()
        client = MlflowClient(server.uri)
        check_sweep_store(  # runs, metrics intact
            client, "outage", n_trials=2, total_steps=OUTAGE_STEPS, eval_interval=OUTAGE_EVAL
        )

        # (b) a local artifact store (SQLite tracking, artifacts on the full disk): the OS error is named
        local = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        exp = local.create_experiment("local", artifact_location=str(mnt / "local"))
        run = local.create_run(exp)
        big = tmp_path / "laws.json"
        big.write_text("[" + "0," * 50_000 + "0]")
        with pytest.raises(ArtifactStoreError) as info:
            log_artifact(local, run.info.run_id, big)
        msg = str(info.value)
        assert "\n" not in msg and "No space left on device" in msg and "laws.json" in msg and str(mnt) in msg
    finally:
        filler.unlink()
