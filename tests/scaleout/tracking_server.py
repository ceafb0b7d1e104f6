"""Test helpers: a throwaway PostgreSQL cluster + an ``mlflow server`` on it (via scripts/tracking_server.sh),
micro sweep specs, metric counting, and a tiny tmpfs for the artifact-disk fault.

Everything started here is stopped in the fixtures' finalizers (``TrackingServer.stop``: the mlflow server's
whole process group and ``pg_ctl stop``) and its folder removed; sweeps run in their own sessions and are
killed as a process group if a test fails mid-way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from micro_spec import MICRO_DATA, micro_base

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "tracking_server.sh"
# MLflow's migrated schema, dumped by the first server of this test process and loaded by the next ones
# (saves its ~20 s of migrations); a file of this process only, removed at exit
SCHEMA_CACHE = os.path.join(tempfile.gettempdir(), f"wt-mlflow-schema-{os.getpid()}.sql")
atexit.register(lambda: Path(SCHEMA_CACHE).unlink(missing_ok=True))


def pg_missing_reason() -> str | None:
    """Why the PostgreSQL-backed server cannot run here, or None."""
    have_pg = shutil.which("pg_ctl") and shutil.which("initdb")
    if not have_pg and not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        return (
            "PostgreSQL (initdb/pg_ctl) not installed: apt-get install postgresql (scripts/setup.sh --test)"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as the postgres user"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 not installed (pip install psycopg2-binary)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TrackingServer:
    """One PostgreSQL cluster + mlflow server, state in ``root`` (see scripts/tracking_server.sh)."""

    root: Path
    port: int
    artifacts: Path
    log_lines: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _script(self, *args: str, timeout: float = 180) -> str:
        env = {**os.environ, "PYTHON": sys.executable}
        out = subprocess.run(
            ["bash", str(SCRIPT), *args, "--dir", str(self.root)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        self.log_lines.append(out.stderr)
        if out.returncode != 0:
            raise RuntimeError(
                f"tracking_server.sh {args[0]} failed ({out.returncode}): {out.stderr[-3000:]}"
            )
        return out.stdout.strip()

    def start(self) -> str:
        """Start (or restart after a kill: same port, same database) and wait for /health."""
        args = ["--port", str(self.port), "--artifacts", str(self.artifacts), "--schema-cache", SCHEMA_CACHE]
        uri = self._script("start", *args)
        assert uri.splitlines()[-1] == self.uri, uri
        return self.uri

    def server_pid(self) -> int | None:
        try:
            return int((self.root / "mlflow.pid").read_text())
        except (OSError, ValueError):
            return None

    def kill_server(self) -> None:
        """SIGKILL the mlflow server's process group (PostgreSQL keeps running) and wait until it is gone."""
        pid = self.server_pid()
        assert pid is not None, "no mlflow server to kill"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"mlflow server group {pid} survived SIGKILL")

    def stop(self) -> None:
        """SIGKILL the server group (a throwaway: no graceful shutdown needed), then ``stop`` PostgreSQL."""
        with contextlib.suppress(AssertionError, RuntimeError):
            if self.server_pid() is not None:
                self.kill_server()
        try:
            self._script("stop", timeout=120)
        finally:
            pid = self.server_pid()
            if pid is not None:  # the script failed half-way: make sure nothing is left
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


def new_root() -> Path:
    """A folder the postgres user can reach (pytest's tmp folders are private to root): removed by stop."""
    root = Path(tempfile.mkdtemp(prefix="wt-tracking-", dir="/tmp"))
    root.chmod(0o755)
    return root


@contextlib.contextmanager
def tracking_server(artifacts: Path | None = None) -> Iterator[TrackingServer]:
    """Start a PostgreSQL-backed mlflow server (skip when PostgreSQL is absent); stop and remove it after."""
    reason = pg_missing_reason()
    if reason:
        pytest.skip(reason)
    root = new_root()
    server = TrackingServer(root, free_port(), artifacts or root / "artifacts")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def tiny_tmpfs(size: str = "4m") -> Iterator[Path | None]:
    """A tmpfs of ``size`` mounted on a fresh folder, unmounted and removed after; None when not root (or
    the mount fails): the artifact-disk fault test then skips."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    mnt = Path(tempfile.mkdtemp(prefix="wt-tinyfs-", dir="/tmp"))
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)]
    if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
        mnt.rmdir()
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# micro sweeps (tiny model, the real default corpus, few steps)


def micro_spec(name: str, lrs: list[float], tokens: int = 20_480, fit: bool = True) -> dict[str, Any]:
    """A grid sweep of ``len(lrs)`` dense trials; ``tokens / 512`` steps (batch 8 x seq 64), a log every 5
    steps, an evaluation every 10; ``fit``: lr_opt is fitted (3 finished runs) and laws.json logged."""
    return {
        "name": name,
        "data": dict(MICRO_DATA),
        "base": micro_base(tokens),
        "concurrency": 1,
        "retries": 1,
        "min_runs_to_fit": len(lrs) if fit else 1000,
        "fit": {"laws": ["lr_opt"], "bootstrap": 0},
        "studies": [{"name": "lr", "grid": {"optim.lr": lrs}}],
    }


def expected_steps(total_steps: int, log_interval: int = 5) -> list[int]:
    return sorted(set(range(log_interval, total_steps + 1, log_interval)) | {total_steps})


def start_sweep(spec: dict[str, Any], workdir: Path, uri: str, **env_extra: str) -> subprocess.Popen:
    """``python -m windtunnel.cli run`` in its own session (killable as a group); output: workdir/out.txt."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_ADDRESS": "local",  # never join a cluster another test started with `ray start`
        "OMP_NUM_THREADS": "1",
        **env_extra,
    }
    out = open(workdir / "out.txt", "w")  # noqa: SIM115 - closed by finish_sweep
    cmd = [sys.executable, "-m", "windtunnel.cli", "run", str(path), "--tracking-uri", uri, "--no-progress"]
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    proc.out_file = out  # type: ignore[attr-defined]
    return proc


def finish_sweep(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for a sweep; kill its process group on timeout. Returns (exit code, its output)."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = -1
    finally:
        kill_group(proc)
        proc.out_file.close()  # type: ignore[attr-defined]
    return rc, Path(proc.out_file.name).read_text()  # type: ignore[attr-defined]


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def metric_counts(client: Any, run_id: str, keys: list[str]) -> dict[str, list[int]]:
    """key -> sorted steps of its full history (duplicates kept, so a duplicate shows)."""
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def check_sweep_store(
    client: Any, sweep: str, n_trials: int, total_steps: int, eval_interval: int = 10
) -> dict[str, Any]:
    """Assert the store holds the sweep completely: ``n_trials`` finished child runs, each exactly once, and
    per run every logged key's history has one point per expected step (no gap, no duplicate); ``val_loss``
    at every ``eval_interval`` steps and the last.
    Returns counts for the report."""
    from windtunnel.orchestrator.tracking import effective_status

    exp = client.get_experiment_by_name(sweep)
    assert exp is not None, f"no experiment {sweep}"
    runs = client.search_runs([exp.experiment_id], "tags.`windtunnel.role` = 'trial'", max_results=1000)
    assert len(runs) == n_trials, f"{sweep}: {len(runs)} trial runs, expected {n_trials}"
    assert len({r.data.tags["config_hash"] for r in runs}) == n_trials
    parents = client.search_runs([exp.experiment_id], "tags.`windtunnel.role` = 'parent'")
    assert len(parents) == 1
    log_steps = expected_steps(total_steps)
    val_steps = sorted(set(range(eval_interval, total_steps + 1, eval_interval)) | {total_steps})
    n_points = 0
    for r in runs:
        assert effective_status(r) == "finished", (r.info.run_id, r.data.tags.get("status"), r.data.tags)
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        hist = metric_counts(client, r.info.run_id, ["loss", "lr", "tokens", "grad_norm", "val_loss"])
        for k in ("loss", "lr", "tokens", "grad_norm"):
            assert hist[k] == log_steps, f"{sweep} {r.info.run_id} {k}: {hist[k]} != {log_steps}"
        assert hist["val_loss"] == val_steps, f"{sweep} {r.info.run_id} val_loss: {hist['val_loss']}"
        for k in ("rt.loss", "rt.tokens", "rt.compute"):
            assert k in r.data.metrics
        assert r.data.metrics["rt.tokens"] == total_steps * 512
        n_points += sum(len(v) for v in hist.values())
    return {"runs": len(runs), "points_checked": n_points, "parent_run_id": parents[0].info.run_id}


# ---------------------------------------------------------------------------------------------------------
# a TrialLogger writer process for the SQLite concurrent-writers test


def writer_main(uri: str, exp_id: str, parent_id: str, tag: str, n_steps: int, ready: str) -> None:
    """One trial's logging as a separate process: ``n_steps`` x 4 metrics in batches of 40, then finish.
    Prints ``{"run_id", "retries"}`` (transient errors this process retried, by kind) as JSON."""
    import json

    from windtunnel.orchestrator.tracking import RETRY_STATS, TrialLogger

    tags = {"sweep": "stress", "config_hash": tag, "family": "dense", "study": "stress"}
    log = TrialLogger(uri, exp_id, parent_id, tags, {"optim.lr": 0.01}, flush_s=1e9, max_buffer=40)
    run_id = log.start()
    Path(ready).write_text(run_id)
    for step in range(1, n_steps + 1):
        log.log(step, {"loss": 10.0 / step, "lr": 0.01, "tokens": 512.0 * step, "grad_norm": 1.0})
        time.sleep(0.01)
    log.finish("finished", {"loss": 10.0 / n_steps, "tokens": 512.0 * n_steps})
    print(json.dumps({"run_id": run_id, "retries": RETRY_STATS}))


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "writer":
    writer_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7])
