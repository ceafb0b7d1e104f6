"""The retry path with the real components (Ray Tune, MLflow SQLite, Optuna, the trainer, default corpus).

One trial crashes for real on every attempt: its workdir holds a (valid, checksummed) checkpoint of another
config, which ``trainer.loop.train`` refuses to resume from (``ValueError``). It must be run 1 + ``retries``
times (``attempts`` tag), then recorded ``failed`` with the error as its reason and left out of the fits with
that reason in the summary. A diverged run is never retried (attempts 1). The same sweep carries a search
group with an LR grid: the grid LRs run exactly, then TPE draws the rest, all in one Tuner.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from micro_spec import MICRO_DATA, micro_base
from mlflow import MlflowClient

from trainer.data import prepare_data
from trainer.loop import train
from windtunnel.orchestrator.identity import trial_key
from windtunnel.orchestrator.spec import expand, parse_spec
from windtunnel.orchestrator.tracking import effective_status, runs_from_mlflow, trial_runs

pytestmark = pytest.mark.slow

RETRIES = 2
SPEC = {
    "name": "retry",
    "data": dict(MICRO_DATA),
    "base": micro_base(10_240, eval_batches=1),
    "concurrency": 2,
    "retries": RETRIES,
    "min_runs_to_fit": 100,  # no fit: the summary still lists the runs excluded from fits
    "studies": [
        {"name": "crash", "grid": {"optim.lr": [1e-2]}},
        {"name": "blowup", "overrides": {"diverge_factor": 1.1}, "grid": {"optim.lr": [3.0]}},
        {
            "name": "search",
            "search": {
                "budgets": [1.0e10],
                "lr": {"low": 1e-3, "high": 4e-3},
                "lr_grid": 2,
                "num_samples": 3,
                "scheduler": "none",
            },
        },
    ],
}


def test_crash_is_retried_then_failed_and_divergence_is_not_retried(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    spec_path = tmp_path / "retry.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    plan = expand(parse_spec(SPEC))
    crash = next(t for t in plan.trials if t.study == "crash")
    # a real checkpoint of another config (2 steps of training) in the crashing trial's workdir
    # (<workdir>/<sweep>/<trial key>), as if two runs had been given the same folder
    other = crash.run_cfg.with_overrides({"optim.lr": 2e-2, "optim.tokens": 1024})
    key = trial_key(crash.run_cfg, prepare_data(crash.run_cfg).manifest_hash)
    assert train(other, workdir=tmp_path / "wt_runs" / "retry" / key).status == "finished"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "windtunnel.cli", "run", str(spec_path), "--no-progress"]
    # its own process group, killed whatever happens: the driver's Ray processes must not outlive the test
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, stderr[-3000:]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("retry").experiment_id
    runs = trial_runs(client, exp_id)
    assert len(client.search_runs([exp_id], "tags.`windtunnel.role` = 'trial'")) == len(runs) == 5
    by_study: dict[str, list] = {}
    for run in runs.values():
        by_study.setdefault(run.data.tags["study"], []).append(run)

    (crashed,) = by_study["crash"]
    assert effective_status(crashed) == "failed"
    assert crashed.data.tags["attempts"] == str(1 + RETRIES)  # the first run and RETRIES re-runs
    assert f"checkpoint belongs to config {other.config_hash()}" in crashed.data.tags["reason"]
    assert crashed.info.status == "FAILED"

    (blown,) = by_study["blowup"]
    assert effective_status(blown) == "diverged" and blown.data.tags["attempts"] == "1"  # never retried
    for run in by_study["search"]:
        assert effective_status(run) == "finished" and run.data.tags["attempts"] == "1"

    # the search group ran its 2 grid LRs exactly, and one TPE draw inside the range
    lrs = sorted(float(r.data.params["optim.lr"]) for r in by_study["search"])
    assert len(lrs) == 3 and {1e-3, 4e-3} <= set(lrs) and 1e-3 <= min(lrs) and max(lrs) <= 4e-3

    # left out of fits with its reason: in the run table and in the printed summary
    df = runs_from_mlflow(uri, "retry").set_index("config_hash")
    row = df.loc[crash.config_hash]
    assert row.status == "failed" and row.reason.startswith("ValueError: ") and row.loss != row.loss
    line = next(x for x in stdout.splitlines() if crashed.info.run_id[:8] in x)
    assert "excluded from fits" in line and "status=failed: ValueError" in line
    assert "status=diverged" in stdout
