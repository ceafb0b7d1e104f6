"""MLflow tracking on a real SQLite store: child runs, batches, resume without duplicates, retries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from windtunnel.orchestrator.progress import SweepProgress
from windtunnel.orchestrator.tracking import (
    TrialLogger,
    ensure_experiment,
    ensure_parent_run,
    runs_from_mlflow,
    with_retry,
)


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised MLflow SQLite file (schema migrations take seconds), copied by each test."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def store(tmp_path: Path, empty_db: Path) -> tuple[str, str, str]:
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = ensure_experiment(client, "sw")
    parent = ensure_parent_run(client, exp, "sw", {"n_trials": 3})
    assert ensure_parent_run(client, exp, "sw", {"n_trials": 3}) == parent  # re-run reuses the parent
    return uri, exp, parent


def _logger(store: tuple[str, str, str], h: str = "abc", flush_s: float = 1e9) -> TrialLogger:
    uri, exp, parent = store
    tags = {"sweep": "sw", "config_hash": h, "family": "dense", "study": "s"}
    return TrialLogger(uri, exp, parent, tags, {"optim.lr": 0.01}, flush_s=flush_s)


def test_buffered_logging_batches_and_resume_skips_logged_steps(store: tuple[str, str, str]) -> None:
    log = _logger(store)
    run_id = log.start()
    for step in range(1, 401):  # 400 steps x 3 finite metrics = 1,200 values -> 2 batches (<= 1,000 per call)
        log.log(step, {"loss": 1.0 / step, "lr": 0.01, "tokens": step * 10.0, "nan": float("nan")})
    log.flush()
    assert log.n_calls == 2
    client = MlflowClient(store[0])
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, 401))
    assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == store[2]
    assert client.get_metric_history(run_id, "nan") == []
    # a resumed trial finds the same run and skips steps already in the store
    again = _logger(store)
    assert again.start() == run_id and again.resume_step == 400
    for step in range(390, 411):
        again.log(step, {"loss": 0.5})
    again.flush()
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert steps == list(range(1, 411)) and len(set(steps)) == len(steps)


def test_backfill_restores_steps_lost_with_an_unflushed_buffer(store: tuple[str, str, str]) -> None:
    log = _logger(store)
    run_id = log.start()
    for step in (5, 10):
        log.log(step, {"loss": 2.0})
    log.flush()
    log.log(15, {"loss": 1.5})  # buffered, never flushed: the process "dies"
    resumed = _logger(store)
    resumed.start()
    history = [
        (5, {"loss": 2.0}),
        (10, {"loss": 2.0, "val_loss": 2.1}),
        (15, {"loss": 1.5}),
        (20, {"loss": 1.0}),
    ]
    assert resumed.backfill(history) == 3  # loss@15, loss@20, val_loss@10
    client = MlflowClient(store[0])
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [5, 10, 15, 20]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [10]


def test_with_retry_retries_database_locked_only() -> None:
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert with_retry(flaky, base_s=0.001) == "ok" and calls["n"] == 3

    def broken() -> None:
        raise RuntimeError("no such table")

    with pytest.raises(RuntimeError, match="no such table"):
        with_retry(broken, base_s=0.001)


def test_run_table_from_mlflow(store: tuple[str, str, str]) -> None:
    row = {
        "params": 1e4,
        "n_total": 2e4,
        "n_active": 2e4,
        "m": 6e4,
        "tokens": 1e5,
        "compute": 6e9,
        "lr": 0.01,
        "batch_tokens": 512.0,
        "loss": 3.2,
    }
    ok = _logger(store, "h1")
    ok.start()
    ok.finish("finished", row)
    bad = _logger(store, "h2")
    bad.start()
    bad.finish("diverged", {**row, "loss": float("nan")}, tags={"reason": "loss 99 > 3 x best"})
    df = runs_from_mlflow(store[0], "sw")
    assert len(df) == 2
    fin = df[df.config_hash == "h1"].iloc[0]
    assert fin.status == "finished" and fin.loss == 3.2 and fin.compute == 6e9 and fin.family == "dense"
    div = df[df.config_hash == "h2"].iloc[0]
    assert div.status == "diverged" and div.reason == "loss 99 > 3 x best" and div.loss != div.loss  # NaN


def test_progress_counts_and_eta() -> None:
    p = SweepProgress("sw", total=6, already_done={"finished": 2}, started_at=0.0)
    p.set_state("a", "running")
    p.set_fraction("a", 0.5)
    p.set_state("b", "diverged")
    c = p.counts()
    assert (c["finished"], c["running"], c["diverged"], c["pending"]) == (2, 1, 1, 2)
    # 1.5 trials of work done in 30 s; 4 to do -> 2.5 left -> 50 s
    assert p.eta_s(now=30.0) == pytest.approx(50.0)
    assert "finished 2" in p.line()


def test_status_cli_reads_the_store(store: tuple[str, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    from windtunnel.cli import main as cli_main

    log = _logger(store, "h1")
    log.start()
    log.finish("finished", {"loss": 3.0})
    running = _logger(store, "h2")
    running.start()
    assert cli_main(["status", "--tracking-uri", store[0], "--sweep", "sw"]) == 0
    out = capsys.readouterr().out
    assert "sw: 3 trials" in out and "pending 1" in out and "running 1" in out and "finished 1" in out
    assert cli_main(["status", "--tracking-uri", store[0] + ".missing"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
