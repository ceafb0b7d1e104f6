"""``windtunnel run --address`` against a real two-node Ray cluster (head + worker, separate processes).

1. A micro sweep (``--address auto``, resolved through ``RAY_ADDRESS``) runs on both nodes: every trial
   finishes exactly once in MLflow and the ``ray_node_id`` tags (``trial.record_node``) name both nodes.
2. (``--address host:port``) The worker node is SIGKILLed (its whole process tree: raylet, agents, Ray
   workers) while a trial runs on it: the sweep still completes, the killed trial is retried on the head and
   resumes from its checkpoint, every trial is finished exactly once with a complete, duplicate-free metric
   history, and nothing finished is lost. The test also measures how long the GCS takes to mark the node
   dead and how long until the trial runs again.

Both nodes run on this machine (the cluster fixture is in ``ray_cluster.py``); the tracking store is SQLite
and the workdir a local folder, which every node sees (on real machines: a tracking server and shared
storage, docs/CLUSTER.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from micro_spec import MICRO_DATA, micro_base

from .ray_cluster import LocalRayCluster, RayNode, ray_env

MLFLOW_TIMEOUT_S = 240


def _spec(tmp_path: Path, name: str, lrs: list[float], tokens: int) -> Path:
    spec = {
        "name": name,
        "workdir": str(tmp_path / "runs"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "data": dict(MICRO_DATA),
        "base": micro_base(tokens),
        "resources": {"cpus": 1},
        "concurrency": 2,
        "retries": 2,
        "min_runs_to_fit": 100,  # no law fit: this test is about where trials run
        "studies": [{"name": "lr", "grid": {"optim.lr": lrs}}],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _launch(
    spec: Path, tmp_path: Path, address: str, ray_address_env: str | None = None, progress: bool = False
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "windtunnel.cli", "run", str(spec), "--address", address]
    cmd += [] if progress else ["--no-progress"]
    env = ray_env()
    if ray_address_env:  # what `--address auto` resolves to (else Ray looks for a local cluster)
        env["RAY_ADDRESS"] = ray_address_env
    log = open(tmp_path / "driver.log", "wb")  # noqa: SIM115 - the child holds it; closed with the test
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _finish(proc: subprocess.Popen, tmp_path: Path, timeout: float) -> str:
    """Wait for the driver; on timeout kill its process group. Returns its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, 9)  # anything the driver left behind in its group
        except ProcessLookupError:
            pass
    return (tmp_path / "driver.log").read_text(errors="replace")


def _trial_runs(uri: str, sweep: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`windtunnel.role` = 'trial'", max_results=1000)


def _check_store(uri: str, sweep: str, n_trials: int) -> list[Any]:
    """Every trial once, finished, with its run-table row and a complete, duplicate-free loss history."""
    from mlflow import MlflowClient

    from trainer.config import RunConfig

    client = MlflowClient(uri)
    runs = _trial_runs(uri, sweep)
    hashes = [r.data.tags["config_hash"] for r in runs]
    assert len(runs) == n_trials and len(set(hashes)) == n_trials, hashes
    for run in runs:
        assert run.data.tags["status"] == "finished", run.data.tags
        assert run.info.status == "FINISHED"
        assert 0 < run.data.metrics["rt.loss"] < 7
        cfg = RunConfig.model_validate_json(run.data.tags["run_config"])
        steps = cfg.steps
        expected = sorted(set(range(5, steps + 1, 5)) | {steps})
        loss_steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        assert loss_steps == expected, (run.data.tags["config_hash"], loss_steps)
        val_steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert val_steps == sorted(set(range(10, steps + 1, 10)) | {steps})
    return runs


def _nodes_of(run: Any) -> list[str]:
    """Node ids of every attempt, oldest first (``ray_nodes`` = ``node_id@hostname,...``)."""
    return [e.split("@", 1)[0] for e in run.data.tags.get("ray_nodes", "").split(",") if e]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str, str]:
    """A real MLflow SQLite store (client, experiment id, URI); no Ray."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(uri)
    return client, client.create_experiment("nodes"), uri


def test_record_node_appends_every_attempt(store: tuple[Any, str, str]) -> None:
    """Outside Ray: no node id, the host name; a second attempt appends to ``ray_nodes``, keeps the first."""
    import socket

    from windtunnel.orchestrator.trial import record_node

    client, exp_id, _ = store
    run_id = client.create_run(exp_id).info.run_id
    client.set_tag(run_id, "ray_nodes", "abc123@other-host")  # an earlier attempt on another machine
    tags = record_node(client, run_id)
    host = socket.gethostname()
    assert tags == {"ray_node_id": "", "hostname": host, "ray_nodes": f"abc123@other-host,local@{host}"}
    record_node(client, run_id)
    stored = client.get_run(run_id).data.tags
    assert stored["ray_nodes"] == f"abc123@other-host,local@{host},local@{host}"
    assert stored["hostname"] == host and stored["ray_node_id"] == ""


def test_close_lost_run_only_closes_runs_left_running(store: tuple[Any, str, str]) -> None:
    """Tune gave up on a trial whose worker/node died: its still-running run becomes failed (resumable);
    runs the trial closed itself keep their status."""
    from windtunnel.orchestrator.trial import close_lost_run

    client, exp_id, uri = store
    runs = {}
    for status in ("running", "finished", "diverged", "failed"):
        runs[status] = client.create_run(exp_id, tags={"status": status}).info.run_id
    assert close_lost_run(uri, runs["running"], retries=1)
    lost = client.get_run(runs["running"])
    assert lost.data.tags["status"] == "failed" and lost.info.status == "FAILED"
    assert "retries (1) were used up" in lost.data.tags["reason"]
    for status in ("finished", "diverged", "failed"):
        assert not close_lost_run(uri, runs[status])
        assert client.get_run(runs[status]).data.tags["status"] == status
        assert "reason" not in client.get_run(runs[status]).data.tags
    assert not close_lost_run(uri, runs["running"])  # idempotent


@pytest.mark.slow
def test_sweep_runs_on_both_nodes(ray_cluster: LocalRayCluster, worker_node: RayNode, tmp_path: Path) -> None:
    alive = ray_cluster.alive_ids()
    head = ray_cluster.nodes[0]
    assert alive >= {head.node_id, worker_node.node_id} and len(alive) == 2, ray_cluster.node_table()
    assert sorted(ray_cluster.ray_status_nodes(want=2)) == sorted(alive)  # the public CLI agrees

    t0 = time.monotonic()
    spec = _spec(tmp_path, "two_nodes", lrs=[1e-3, 3e-3, 1e-2], tokens=20_000)
    proc = _launch(spec, tmp_path, "auto", ray_address_env=ray_cluster.address)
    out = _finish(proc, tmp_path, MLFLOW_TIMEOUT_S)
    assert proc.returncode == 0, out[-4000:]
    print(f"\nsweep on 2 nodes: {time.monotonic() - t0:.1f}s")

    runs = _check_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "two_nodes", 3)
    used = {run.data.tags["ray_node_id"] for run in runs}
    assert used == {head.node_id, worker_node.node_id}  # concurrency 2 on two 1-CPU nodes: both used
    for run in runs:
        assert _nodes_of(run) == [run.data.tags["ray_node_id"]] and run.data.tags["attempts"] == "1"
        assert run.data.tags["hostname"]


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("WT_RAY_CLIENT_TESTS"),
    reason="opt-in (WT_RAY_CLIENT_TESTS=1): flaky here, Ray Client's per-client server failed to start"
    " ('Starting Ray client server failed') in 2 of 3 fresh-clone suite runs; passes alone most times",
)
def test_sweep_through_ray_client(ray_cluster: LocalRayCluster, tmp_path: Path) -> None:
    """``--address ray://host:port`` (Ray Client: the driver is not a cluster node; Tune runs in a remote
    task). Every trial finishes once, and the live progress table, fed from the store there (Tune's
    callbacks run on the cluster), ends with the finished count."""
    spec = _spec(tmp_path, "via_client", lrs=[1e-3, 3e-3], tokens=20_000)
    proc = _launch(spec, tmp_path, f"ray://127.0.0.1:{ray_cluster.client_port}", progress=True)
    out = _finish(proc, tmp_path, MLFLOW_TIMEOUT_S)
    assert proc.returncode == 0, out[-4000:]
    runs = _check_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "via_client", 2)
    assert {run.data.tags["ray_node_id"] for run in runs} <= {n.node_id for n in ray_cluster.nodes}
    row = r"│\s+0 │\s+0 │\s+2 │\s+0 │\s+0 │\s+0 │"  # pending running finished diverged pruned failed
    assert re.search(row, out), out[-3000:]
    assert "(2 already done" not in out and "2 launched" in out


@pytest.mark.slow
@pytest.mark.faults
def test_node_death_mid_sweep(ray_cluster: LocalRayCluster, worker_node: RayNode, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    head = ray_cluster.nodes[0]
    assert {head.node_id, worker_node.node_id} <= ray_cluster.alive_ids()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t0 = time.monotonic()
    spec = _spec(tmp_path, "node_death", lrs=[1e-3, 2e-3, 4e-3, 8e-3], tokens=60_000)
    client = MlflowClient(uri)
    client.search_experiments()  # create the SQLite schema now: polling must not race the driver's migration
    proc = _launch(spec, tmp_path, ray_cluster.address)
    victim_id, finished_before = "", {}
    dead_at = retried_at = None
    try:
        # kill once a trial has finished and a trial on the worker has logged an evaluation (= a checkpoint)
        deadline = time.monotonic() + MLFLOW_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and not victim_id:
            time.sleep(0.5)
            try:
                runs = _trial_runs(uri, "node_death")
            except Exception:  # noqa: BLE001 - the store may be mid-creation
                continue
            # finished = tagged and terminated (the trial tags its status just before it ends the run)
            done = {
                r.info.run_id: r
                for r in runs
                if r.data.tags.get("status") == "finished" and r.info.end_time is not None
            }
            for run in runs if done else []:
                on_worker = run.data.tags.get("ray_node_id") == worker_node.node_id
                if on_worker and run.data.tags.get("status") == "running":
                    if client.get_metric_history(run.info.run_id, "val_loss"):
                        victim_id = run.info.run_id
                        finished_before = {k: (r.info.start_time, r.info.end_time) for k, r in done.items()}
        assert victim_id, "no trial on the worker node reached an evaluation after a first trial finished"
        killed_at = worker_node.kill()
        # how long until the GCS marks the node dead, and until the killed trial runs again elsewhere
        while time.monotonic() < deadline and (dead_at is None or retried_at is None):
            if dead_at is None and worker_node.node_id not in ray_cluster.alive_ids():
                dead_at = round(time.time() - killed_at, 1)
            if retried_at is None and len(_nodes_of(client.get_run(victim_id))) >= 2:
                retried_at = round(time.time() - killed_at, 1)
            if retried_at is None and proc.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        out = _finish(proc, tmp_path, MLFLOW_TIMEOUT_S)
    wall = time.monotonic() - t0
    print(
        f"\nnode killed: GCS marked it dead after {dead_at}s, retried after {retried_at}s; sweep {wall:.0f}s"
    )
    assert proc.returncode == 0, out[-4000:]
    assert dead_at is not None and retried_at is not None

    runs = _check_store(uri, "node_death", 4)
    by_id = {r.info.run_id: r for r in runs}
    victim = by_id[victim_id]
    nodes = _nodes_of(victim)
    assert nodes[0] == worker_node.node_id and nodes[-1] == head.node_id, nodes  # retried on the survivor
    assert victim.data.tags["ray_node_id"] == head.node_id
    assert int(victim.data.tags["attempts"]) == len(nodes) >= 2
    assert victim.data.tags.get("resumed_from", "none") != "none"  # resumed from its checkpoint
    assert finished_before
    for run_id, (start, end) in finished_before.items():  # finished before the kill: untouched
        assert (by_id[run_id].info.start_time, by_id[run_id].info.end_time) == (start, end)
        assert by_id[run_id].data.tags["attempts"] == "1"
    for run in runs:  # no attempt but a first one ran on the dead node
        assert all(n == head.node_id for n in _nodes_of(run)[1:]), _nodes_of(run)


@pytest.mark.slow
def test_default_is_a_local_ray_even_with_a_cluster_around(
    ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    """Without ``--address`` the sweep starts its own local Ray: it does not attach to a cluster that
    RAY_ADDRESS (or an earlier ``ray start`` on the machine) points to, whose workers may run other code.
    (Last in the module: run before the Ray Client test on the same head, the client server then failed to
    start its per-client server.)"""
    spec = _spec(tmp_path, "local_default", lrs=[1e-3], tokens=10_000)
    cmd = [sys.executable, "-m", "windtunnel.cli", "run", str(spec), "--no-progress"]
    env = {**ray_env(), "RAY_ADDRESS": ray_cluster.address}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=MLFLOW_TIMEOUT_S)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    (run,) = _check_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "local_default", 1)
    assert run.data.tags["ray_node_id"] not in {n.node_id for n in ray_cluster.nodes}
