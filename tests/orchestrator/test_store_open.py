"""Two processes opening one brand-new SQLite store at once: both must succeed (MLflow's schema migrations
are not safe to run twice concurrently; ``open_client`` serialises the first use with a file lock)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest


def _open(uri: str, barrier: mp.synchronize.Barrier, use_lock: bool, q: mp.Queue) -> None:
    try:
        from mlflow import MlflowClient

        from windtunnel.orchestrator.tracking import ensure_experiment, open_client

        barrier.wait()
        client = open_client(uri) if use_lock else MlflowClient(uri)
        ensure_experiment(client, "race")
        q.put("ok")
    except Exception as err:  # noqa: BLE001 - the outcome is what the test checks
        q.put(f"{type(err).__name__}: {err}"[:300])


def _race(tmp_path: Path, use_lock: bool, n: int = 3) -> list[str]:
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(uri, barrier, use_lock, q)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    return [q.get(timeout=5) for _ in procs]


@pytest.mark.slow
def test_concurrent_first_open_of_a_sqlite_store(tmp_path: Path) -> None:
    outcomes = _race(tmp_path, use_lock=True)
    assert outcomes == ["ok"] * 3, outcomes
    from mlflow import MlflowClient

    assert MlflowClient(f"sqlite:///{tmp_path / 'new.db'}").get_experiment_by_name("race") is not None
