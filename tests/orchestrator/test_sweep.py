"""End to end with the real components (Ray Tune, MLflow SQLite, Optuna, the trainer on the default corpus):
a micro sweep is SIGKILLed mid-way, run again, then a third time. Checks the store: every trial once,
finished trials never re-run, complete metric histories, a correct run table, the diverged run recorded with
its reason and excluded from fits, and nothing launched on the idempotent third run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from micro_spec import MICRO_DATA, micro_base
from mlflow import MlflowClient

from trainer.config import RunConfig
from trainer.flops import count_params, flops_per_token
from windtunnel.orchestrator.identity import trial_key
from windtunnel.orchestrator.tracking import effective_status, open_client, runs_from_mlflow, trial_runs

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SPEC = {
    "name": "micro",
    "data": dict(MICRO_DATA),
    "base": micro_base(40_000),
    "concurrency": 2,
    "retries": 1,
    "min_runs_to_fit": 3,
    "fit": {"laws": ["lr_opt"], "bootstrap": 0},
    "studies": [
        {"name": "lr", "grid": {"optim.lr": [1e-3, 3e-3, 1e-2]}},
        {"name": "blowup", "overrides": {"diverge_factor": 1.1}, "grid": {"optim.lr": [3.0]}},
        {
            "name": "search",
            "search": {
                "budgets": [1.5e10],
                "lr": {"low": 1e-3, "high": 3e-2},
                "num_samples": 2,
                "scheduler": "none",
            },
        },
    ],
}


def _cmd(spec: Path) -> list[str]:
    return [sys.executable, "-m", "windtunnel.cli", "run", str(spec), "--no-progress"]


def _statuses(client: MlflowClient) -> dict[str, str]:
    exp = client.get_experiment_by_name("micro")
    if exp is None:
        return {}
    return {h: effective_status(r) for h, r in trial_runs(client, exp.experiment_id).items()}


def test_kill_resume_and_idempotence(tmp_path: Path) -> None:
    spec_path = tmp_path / "micro.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}

    # ---- run 1: SIGKILL the driver (and everything it started) once 2 trials have finished ----
    proc = subprocess.Popen(
        _cmd(spec_path),
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    finished_before: dict[str, tuple[str, int, int]] = {}
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1.0)
            if not (tmp_path / "mlflow.db").exists():
                continue
            try:  # open_client: a raw MlflowClient racing the driver's schema creation can crash the driver
                st = _statuses(open_client(uri))
            except Exception:  # noqa: BLE001 - the store may be mid-creation
                continue
            if sum(s in ("finished", "diverged") for s in st.values()) >= 2:
                break
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # the driver already exited: the assertion below says so
            pass
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the sweep ended (rc {proc.returncode}) before it was killed"
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("micro").experiment_id
    for h, run in trial_runs(client, exp_id).items():
        if effective_status(run) in ("finished", "diverged"):
            finished_before[h] = (run.info.run_id, run.info.start_time, run.info.end_time)
    assert len(finished_before) >= 2
    n_total = 3 + 1 + 2
    assert len(_statuses(client)) < n_total or any(s == "running" for s in _statuses(client).values())

    # ---- run 2: resumes; finished trials are skipped ----
    out = subprocess.run(_cmd(spec_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(finished_before)} already done" in out.stdout or "already done" in out.stdout
    runs = trial_runs(client, exp_id)
    all_trial_runs = client.search_runs([exp_id], "tags.`windtunnel.role` = 'trial'")
    assert len(all_trial_runs) == n_total == len(runs)  # every trial exactly once
    for h, (run_id, start, end) in finished_before.items():
        run = runs[h]
        assert (run.info.run_id, run.info.start_time, run.info.end_time) == (run_id, start, end)  # not re-run
        assert run.data.tags["attempts"] == "1"

    # ---- the store: statuses, metric histories, run table ----
    df = runs_from_mlflow(uri, "micro").set_index("config_hash")
    assert len(df) == n_total
    by_study = df.groupby("study")["status"].apply(sorted).to_dict()
    assert by_study == {"blowup": ["diverged"], "lr": ["finished"] * 3, "search": ["finished"] * 2}
    div = df[df.status == "diverged"].iloc[0]
    assert div.reason.startswith("loss") and div.loss != div.loss  # recorded with its reason, no loss
    assert "excluded from fits" in out.stdout and "status=diverged" in out.stdout
    for h, run in runs.items():
        if effective_status(run) != "finished":
            continue
        cfg = RunConfig.model_validate_json(run.data.tags["run_config"])
        assert trial_key(cfg, run.data.tags["manifest_hash"]) == h  # runs are found by content
        assert run.data.tags["config_hash"] == cfg.config_hash()
        steps = cfg.steps
        expected = sorted(set(range(5, steps + 1, 5)) | {steps})
        loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert sorted(loss_steps) == expected  # complete, no duplicates after the resume
        val_steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_loss")}
        assert steps in val_steps
        row = df.loc[run.data.tags["config_hash"]]
        counts = count_params(cfg.model)
        m = flops_per_token(cfg.model)
        assert row.params == counts.active_nonembed and row.n_total == counts.total
        assert row.m == pytest.approx(m) and row.tokens == steps * cfg.batch_tokens
        assert row.compute == pytest.approx(m * row.tokens) and row.lr == pytest.approx(cfg.optim.lr)
        assert row.batch_tokens == cfg.batch_tokens and 0 < row.loss < 7 and row.family == "dense"

    # ---- run 3: nothing left to do, nothing launched ----
    out3 = subprocess.run(_cmd(spec_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200)
    assert out3.returncode == 0, out3.stderr[-3000:]
    assert f"({n_total} already done, 0 launched)" in out3.stdout
    assert len(client.search_runs([exp_id], "tags.`windtunnel.role` = 'trial'")) == n_total
    status = subprocess.run(
        [sys.executable, "-m", "windtunnel.cli", "status", "--tracking-uri", uri, "--sweep", "micro"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0 and "finished 5" in status.stdout and "diverged 1" in status.stdout
    (parent,) = client.search_runs([exp_id], "tags.`windtunnel.role` = 'parent'")
    assert parent.info.status == "FINISHED" and parent.info.end_time  # the sweep's run is closed at its end
    assert parent.data.tags["status"] == "finished"
