"""Faults in a running sweep: a Ray worker SIGKILLed mid-training, three times, in three checkpoint states.

One micro sweep (real Ray Tune, MLflow SQLite, the trainer on the default corpus; 4 grid trials one at a
time, ``retries: 2``) runs as ``python -m windtunnel.cli run … --no-progress``. While it runs, the test
watches the store; for each of the first three trials it sees running, once the trial has written two
checkpoints, it freezes the trial's Ray worker (SIGSTOP; the pid comes from the run's ``pid`` tag), damages
its checkpoint folder, and SIGKILLs the worker:

1. ``kill``: nothing damaged. Tune retries; the trainer resumes from its newest checkpoint.
2. ``corrupt``: the newest checkpoint is truncated first. The retry skips it by its sha256 and resumes from
   the one before.
3. ``nan``: a weight of the newest checkpoint is set to NaN and its checksum rewritten. The retry resumes,
   the first step's loss is NaN: the run is recorded ``diverged`` with its reason and is not retried again
   (``retries: 2`` would allow it), and the end-of-sweep ``lr_opt`` fit leaves it out.

The fourth trial runs untouched. One sweep serves all the tests of this module (module-scoped fixture).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultlib import MICRO_DATA, checkpoints, loss_curve, poison_weight, truncate
from micro_spec import micro_base
from mlflow import MlflowClient

from trainer.checkpoint import CheckpointError, load_checkpoint, step_of, verify_checkpoint
from trainer.config import RunConfig

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SWEEP = "chaos"
STEPS = (200, 260)  # two token budgets (> 0.05 dex apart for lr_opt), ~3 s of training each
BATCH_TOKENS = 8 * 64
SPEC: dict[str, Any] = {
    "name": SWEEP,
    "data": dict(MICRO_DATA),
    "base": micro_base(STEPS[0] * BATCH_TOKENS),
    "concurrency": 1,
    "retries": 2,
    "min_runs_to_fit": 3,
    "fit": {"laws": ["lr_opt"], "bootstrap": 0},
    "studies": [
        {
            "name": "grid",
            "grid": {"optim.lr": [2e-3, 4e-3], "optim.tokens": [s * BATCH_TOKENS for s in STEPS]},
        }
    ],
}
FAULTS = ("kill", "corrupt", "nan")


@dataclass
class Injection:
    fault: str
    pid: int
    run_id: str
    valid_steps: list[int]  # complete checkpoints at the moment the worker was frozen
    expect_resume: int
    damaged: str = ""


@dataclass
class ChaosSweep:
    root: Path
    uri: str
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    injected: dict[str, Injection] = field(default_factory=dict)  # config hash -> what was done

    @property
    def sweep_dir(self) -> Path:
        return self.root / "wt_runs" / SWEEP


def _valid_steps(workdir: Path) -> list[int]:
    out = []
    for p in checkpoints(workdir):
        try:
            verify_checkpoint(p)
        except CheckpointError:
            continue
        out.append(step_of(p))
    return out


def _is_ray_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


def _inject(fault: str, pid: int, run: Any, workdir: Path, total_steps: int) -> Injection | None:
    """Freeze the worker, damage its checkpoints as ``fault`` says, SIGKILL it. None: not ready yet."""
    if sum(p.name.endswith(".pt.sha256") for p in (workdir / "checkpoints").glob("*.sha256")) < 2:
        return None  # cheap check first: no need to stop the worker yet
    os.kill(pid, signal.SIGSTOP)
    try:
        valid = _valid_steps(workdir)
        if len(valid) < 2:
            os.kill(pid, signal.SIGCONT)
            return None
        assert valid[-1] < total_steps, "the trial finished before it could be killed: make STEPS longer"
        inj = Injection(fault, pid, run.info.run_id, valid, expect_resume=valid[-1])
        newest = workdir / "checkpoints" / f"step_{valid[-1]:08d}.pt"
        if fault == "corrupt":
            truncate(newest)
            inj.expect_resume, inj.damaged = valid[-2], newest.name
        elif fault == "nan":
            inj.damaged = f"{newest.name}:{poison_weight(newest)}"
    except BaseException:
        os.kill(pid, signal.SIGCONT)  # never leave a frozen worker behind
        raise
    os.kill(pid, signal.SIGKILL)
    return inj


def _store_ready(db: Path) -> bool:
    """The driver has created and migrated the SQLite store (its parent run exists). Checked read-only:
    an MlflowClient opened while the driver is still migrating runs the migrations a second time, and the
    driver's own migration then fails."""
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return False


def _trial_runs(client: MlflowClient) -> list[Any]:
    exp = client.get_experiment_by_name(SWEEP)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`windtunnel.role` = 'trial'", max_results=1000)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> ChaosSweep:
    root = tmp_path_factory.mktemp("chaos")
    spec_path = root / "chaos.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    log_out, log_err = open(root / "stdout.txt", "w"), open(root / "stderr.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "windtunnel.cli", "run", str(spec_path), "--no-progress"],
        cwd=root,
        env=env,
        start_new_session=True,
        stdout=log_out,
        stderr=log_err,
    )
    out = ChaosSweep(root, uri, 0, "", "", 0.0)
    faults = list(FAULTS)
    worker_pids: set[int] = set()
    ready = False
    try:
        deadline = time.time() + 400
        while faults and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
            ready = ready or _store_ready(root / "mlflow.db")
            if not ready:
                continue
            try:
                runs = _trial_runs(MlflowClient(uri))
            except Exception:  # noqa: BLE001 - the store may be mid-creation
                continue
            for run in runs:
                tags = run.data.tags
                h = tags.get("config_hash", "")
                if h in out.injected or tags.get("status") != "running" or "pid" not in tags:
                    continue
                worker_pids.add(int(tags["pid"]))
                cfg = RunConfig.model_validate_json(tags["run_config"])
                workdir = out.sweep_dir / tags["trial_key"]  # a trial's folder is its content key
                inj = _inject(faults[0], int(tags["pid"]), run, workdir, cfg.steps)
                if inj is not None:
                    out.injected[h] = inj
                    faults.pop(0)
                break
        proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver with its GCS and raylet
            proc.wait()
            for pid in worker_pids:  # Ray workers have process groups of their own
                if _is_ray_worker(pid):
                    os.kill(pid, signal.SIGKILL)
        log_out.close()
        log_err.close()
    stdout, stderr = (root / "stdout.txt").read_text(), (root / "stderr.txt").read_text()
    out.returncode, out.stdout, out.stderr = proc.returncode, stdout, stderr
    out.wall_s = time.perf_counter() - t0
    assert not faults, f"faults not injected: {faults} (sweep exit {proc.returncode}): {stderr[-3000:]}"
    assert proc.returncode == 0, stderr[-3000:]
    return out


def _runs_by_hash(chaos: ChaosSweep) -> dict[str, Any]:
    runs = _trial_runs(MlflowClient(chaos.uri))
    by_hash = {r.data.tags["config_hash"]: r for r in runs}
    assert len(by_hash) == len(runs), "a trial appears twice in the store"
    return by_hash


def _by_fault(chaos: ChaosSweep, fault: str) -> tuple[str, Injection, Any]:
    (h,) = [h for h, inj in chaos.injected.items() if inj.fault == fault]
    return h, chaos.injected[h], _runs_by_hash(chaos)[h]


def _history_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _assert_complete_history(chaos: ChaosSweep, run: Any, last_step: int, diverged_at: int = 0) -> None:
    """Every logged step once: loss every 5 steps, val_loss every 10 (and at the end), up to last_step;
    a diverged run also logs the lr (not the NaN loss) of the step that diverged."""
    client = MlflowClient(chaos.uri)
    steps = RunConfig.model_validate_json(run.data.tags["run_config"]).steps
    loss_expect = sorted(set(range(5, last_step + 1, 5)) | ({steps} if last_step == steps else set()))
    assert _history_steps(client, run.info.run_id, "loss") == loss_expect  # none lost, none twice
    lr_expect = sorted(set(loss_expect) | ({diverged_at} if diverged_at else set()))
    assert _history_steps(client, run.info.run_id, "lr") == lr_expect
    val_expect = sorted(set(range(10, last_step + 1, 10)) | ({steps} if last_step == steps else set()))
    assert _history_steps(client, run.info.run_id, "val_loss") == val_expect


def _assert_store_matches_trainer(chaos: ChaosSweep, h: str, run: Any) -> None:
    """The loss values in MLflow are the trainer's own record (the final checkpoint's history, which spans
    both attempts): nothing from the killed attempt was replaced by the retry or lost. That a resumed curve
    equals an uninterrupted one bit for bit is test_checkpoint_faults.py's job."""
    state = load_checkpoint(checkpoints(chaos.sweep_dir / run.data.tags["trial_key"])[-1])
    trainer_curve = loss_curve([(s, m) for s, m in state["extra"]["history"]])
    stored = {m.step: m.value for m in MlflowClient(chaos.uri).get_metric_history(run.info.run_id, "loss")}
    assert stored == trainer_curve


def test_every_trial_once_and_untouched_run_intact(chaos: ChaosSweep) -> None:
    runs = _runs_by_hash(chaos)
    assert len(runs) == 4  # 2 lr x 2 budgets, none lost, none duplicated by the retries
    statuses = sorted(r.data.tags["status"] for r in runs.values())
    assert statuses == ["diverged", "finished", "finished", "finished"]
    (h,) = [h for h in runs if h not in chaos.injected]
    run = runs[h]
    assert run.data.tags["status"] == "finished" and run.data.tags["attempts"] == "1"
    assert run.data.tags["resumed_from"] == "none"
    _assert_complete_history(chaos, run, RunConfig.model_validate_json(run.data.tags["run_config"]).steps)
    _assert_store_matches_trainer(chaos, h, run)


def test_worker_kill_resumes_from_latest_checkpoint(chaos: ChaosSweep) -> None:
    h, inj, run = _by_fault(chaos, "kill")
    tags = run.data.tags
    assert tags["status"] == "finished" and tags["attempts"] == "2"  # Tune retried it once
    assert tags["pid"] != str(inj.pid)  # the retry ran in a new worker process
    assert tags["resumed_from"] == str(inj.expect_resume)  # from the newest checkpoint, not step 0
    _assert_complete_history(chaos, run, RunConfig.model_validate_json(tags["run_config"]).steps)
    _assert_store_matches_trainer(chaos, h, run)


def test_corrupt_checkpoint_in_sweep_resumes_from_previous(chaos: ChaosSweep) -> None:
    h, inj, run = _by_fault(chaos, "corrupt")
    tags = run.data.tags
    assert tags["status"] == "finished" and tags["attempts"] == "2"
    assert tags["resumed_from"] == str(inj.expect_resume) == str(inj.valid_steps[-2])
    assert inj.damaged in tags["checkpoint_warnings"] and "checksum mismatch" in tags["checkpoint_warnings"]
    _assert_complete_history(chaos, run, RunConfig.model_validate_json(tags["run_config"]).steps)
    _assert_store_matches_trainer(chaos, h, run)


def test_nan_checkpoint_diverges_not_retried_and_excluded_from_fit(chaos: ChaosSweep) -> None:
    import json

    h, inj, run = _by_fault(chaos, "nan")
    tags = run.data.tags
    k = inj.expect_resume
    assert tags["status"] == "diverged" and tags["reason"] == f"non-finite loss at step {k + 1}"
    assert tags["attempts"] == "2"  # killed once, then diverged: no third attempt although retries=2
    assert tags["resumed_from"] == str(k)
    assert "rt.loss" not in run.data.metrics
    _assert_complete_history(chaos, run, k, diverged_at=k + 1)  # the NaN loss itself is not logged
    # the end of the sweep: the run table marks it, the lr_opt fit leaves it out
    assert f"status=diverged: non-finite loss at step {k + 1}" in chaos.stdout
    laws = json.loads((chaos.sweep_dir / "laws.json").read_text())
    assert laws["excluded"]["lr_opt"] == {"status=diverged": 1}
    lr_opt = laws["laws"]["lr_opt"]
    assert run.info.run_id not in lr_opt["run_ids"] and lr_opt["n_runs"] == 3  # the 3 finished runs
    finished = {r.info.run_id for r in _runs_by_hash(chaos).values() if r.data.tags["status"] == "finished"}
    assert set(lr_opt["run_ids"]) <= finished


def test_no_stray_processes(chaos: ChaosSweep) -> None:
    """The killed workers, and the workers of the retries, are gone: the sweep's Ray session ended with it."""
    pids = {inj.pid for inj in chaos.injected.values()}
    pids |= {int(r.data.tags["pid"]) for r in _runs_by_hash(chaos).values()}
    assert len(pids) >= 4  # the 3 killed workers and at least one retry worker
    deadline = time.time() + 30  # a worker notices its raylet is gone within a few seconds
    while time.time() < deadline and any(_is_ray_worker(p) for p in pids):
        time.sleep(0.5)
    assert not [p for p in pids if _is_ray_worker(p)]
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert str(chaos.root) not in ps
