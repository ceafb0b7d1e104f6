"""NaN injected into a run's state, then resumed: the divergence is detected, recorded with a reason, the
trial returns normally (so Tune does not retry it) and the law engine leaves the run out.

The NaNs are saved *with a valid checksum* (what a run that blew up between two checkpoints leaves behind),
so the checkpoint layer loads them and the training loop must catch them. The end-to-end version, inside a
Ray sweep with the end-of-sweep fit, is ``test_worker_faults.py::test_nan_checkpoint_diverges_not_retried``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from faultlib import checkpoints, micro_config, poison_optimizer, poison_weight

from trainer.loop import TrainResult, train

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _drop_last(workdir: Path) -> Path:
    """Remove the newest checkpoint (and its sidecar) so the run resumes mid-way, from step 30."""
    last = checkpoints(workdir)[-1]
    last.unlink()
    last.with_name(last.name + ".sha256").unlink()
    return checkpoints(workdir)[-1]


def test_nan_weight_checkpoint_diverges_at_once(finished_run: Path) -> None:
    step30 = _drop_last(finished_run)
    poison_weight(step30)
    result = train(micro_config(), workdir=finished_run, resume=True)
    assert result.resumed_from == 30 and result.checkpoint_warnings == []  # its checksum is valid
    assert result.status == "diverged"
    assert result.error == "non-finite loss at step 31"
    assert result.steps == 30  # stopped on the first step: no update from NaN weights
    assert math.isnan(result.history[-1][1]["loss"]) and result.history[-1][0] == 31


def test_nan_optimizer_state_diverges_on_next_step(
    finished_run: Path, reference_run: tuple[TrainResult, Path]
) -> None:
    reference, _ = reference_run
    step30 = _drop_last(finished_run)
    poison_optimizer(step30)
    result = train(micro_config(), workdir=finished_run, resume=True)
    assert result.status == "diverged" and result.error == "non-finite loss at step 32"
    assert result.steps == 31  # step 31's loss (from intact weights) is fine; its update is NaN
    # step 31's loss is not logged (log_interval 5), but the curve up to 30 is the reference's
    curve = {s: m["loss"] for s, m in result.history if "loss" in m and s <= 30}
    assert curve == {s: m["loss"] for s, m in reference.history if "loss" in m and s <= 30}


def test_nan_in_final_checkpoint_is_not_a_finished_run(finished_run: Path) -> None:
    """Resuming a run whose last checkpoint holds NaN weights: no step is left to train, the final
    evaluation is NaN, and the run must not be reported ``finished`` with a NaN loss."""
    poison_weight(checkpoints(finished_run)[-1])
    result = train(micro_config(), workdir=finished_run, resume=True)
    assert result.resumed_from == 40 and result.steps == 40
    assert result.status == "diverged"
    assert result.error is not None and result.error.startswith("non-finite validation loss")


def test_diverged_trial_recorded_and_not_raised(finished_run: Path, tmp_path: Path) -> None:
    """``execute_trial`` (what the Ray trainable runs) against a real MLflow SQLite store: the NaN run is
    recorded ``diverged`` with its reason and returns normally (a raise would make Tune retry it)."""
    import shutil

    from mlflow import MlflowClient

    from windtunnel.laws import fit_laws
    from windtunnel.orchestrator.identity import trial_key
    from windtunnel.orchestrator.tracking import ensure_experiment, ensure_parent_run, runs_from_mlflow
    from windtunnel.orchestrator.trial import execute_trial

    cfg = micro_config()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, "nanfault")
    parent = ensure_parent_run(client, exp_id, "nanfault", {})
    sweep_dir = tmp_path / "sweep"
    workdir = sweep_dir / trial_key(cfg, "")  # a trial's folder: its content key (no data manifest given)
    shutil.copytree(finished_run, workdir)
    poison_weight(_drop_last(workdir))
    ctx = {
        "tracking_uri": uri,
        "experiment_id": exp_id,
        "parent_run_id": parent,
        "sweep": "nanfault",
        "sweep_dir": str(sweep_dir),
        "log_flush_s": 0.0,
    }
    reports: list[dict] = []
    result = execute_trial(cfg, {"study": "nan", "kind": "grid"}, ctx, tune_report=reports.append)
    assert result.status == "diverged"
    assert reports[-1]["diverged"] == 1.0  # what the searcher sees
    runs = client.search_runs([exp_id], "tags.`windtunnel.role` = 'trial'")
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["status"] == "diverged" and tags["reason"] == "non-finite loss at step 31"
    assert tags["resumed_from"] == "30" and tags["attempts"] == "1"
    assert "rt.loss" not in runs[0].data.metrics  # no loss recorded for the run table
    df = runs_from_mlflow(uri, "nanfault")
    row = df.iloc[0]
    assert row.status == "diverged" and np.isnan(row.loss) and row.reason == "non-finite loss at step 31"
    # the law engine leaves it out: 3 finished runs at 2 budgets fit lr_opt, the diverged one is excluded
    good = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "compute": [1e15, 1e15, 1e16],
            "lr": [1e-3, 3e-3, 2e-3],
            "loss": [3.0, 3.1, 2.8],
            "status": "finished",
        }
    )
    both = pd.concat([good, df[["run_id", "compute", "lr", "loss", "status"]]], ignore_index=True)
    lawset = fit_laws(both, laws=["lr_opt"], bootstrap=0)
    assert lawset.excluded["lr_opt"] == {"status=diverged": 1}
    assert row.run_id not in lawset.laws["lr_opt"].run_ids
