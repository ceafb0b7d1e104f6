"""The validation phase end to end on the real stack (Ray Tune, MLflow SQLite, the trainer): a micro IsoFLOP
ladder, its laws, a target 3x beyond predicted and recorded BEFORE its trials start, the target trained with
two seeds, summary.json and the figure; a second run of the sweep launches nothing and keeps the prediction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from micro_spec import MICRO_DATA, micro_base

from windtunnel.orchestrator.tracking import ROLE, open_client, search_all, trial_runs

pytestmark = [pytest.mark.slow]

SPEC = {
    "name": "micro_validation",
    "data": dict(MICRO_DATA),
    "base": micro_base(40_000),
    "concurrency": 2,
    "min_runs_to_fit": 6,
    "fit": {"laws": ["parametric"], "bootstrap": 20},
    "studies": [
        {
            "name": "ladder",
            "ladder": {
                "budgets": [1.0e9, 2.0e9],
                "rule": {
                    "n_sizes": 3,
                    "d_model_min": 16,
                    "d_model_max": 64,
                    "head_dim": 8,
                    "aspect_ratio": 64,
                },
            },
        }
    ],
    # a fixed target model: micro IsoFLOP profiles are too short to give an m_opt law reliably (sizing from
    # m_opt is tested in test_validation_spec.py)
    "target": {
        "extrapolation": 3,
        "seeds": 2,
        "law": "parametric",
        "model": {"d_model": 24, "n_heads": 3, "n_kv_heads": 3, "d_ffn": 64},
    },
}
KEYS = {
    "predicted_loss",
    "pi95",
    "observed_loss",
    "extrapolation_factor",
    "ladder_compute",
    "target_compute",
    "seed_noise_std",
    "command",
    "date",
}


def _run(spec_path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "windtunnel.cli", "run", str(spec_path), "--no-progress"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


def test_predict_record_train_compare(tmp_path: Path) -> None:
    spec_path = tmp_path / "v.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    proc = _run(spec_path, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "validation: predicted vs observed" in proc.stdout, proc.stdout[-3000:]

    summary = json.loads(
        (tmp_path / "wt_runs" / "micro_validation" / "validation" / "summary.json").read_text()
    )
    assert KEYS <= set(summary)
    assert summary["extrapolation_factor"] == pytest.approx(3.0, rel=0.02)
    assert summary["target_compute"] == pytest.approx(3 * 2.0e9)
    assert summary["target_model"]["d_model"] == 24
    assert len(summary["observed_losses"]) == 2 and summary["seed_noise_std"] >= 0
    lo, hi = summary["pi95"]
    assert lo <= summary["predicted_loss"] <= hi
    assert summary["error"] == pytest.approx(summary["observed_loss"] - summary["predicted_loss"])

    client = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("micro_validation")
    runs = list(trial_runs(client, exp.experiment_id).values())
    target = [r for r in runs if r.data.tags["study"] == "target"]
    assert len(target) == 2 and {r.data.tags["status"] for r in target} == {"finished"}
    (pred_run,) = search_all(client, exp.experiment_id, f"tags.`{ROLE}` = 'prediction'")
    # recorded before the first target trial started, holding the prediction summary.json reports
    assert pred_run.info.end_time <= min(r.info.start_time for r in target)
    assert float(pred_run.data.params["predicted"]) == summary["predicted_loss"]
    parent = next(r for r in search_all(client, exp.experiment_id, f"tags.`{ROLE}` = 'parent'"))
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "validation")}
    assert names == {
        "validation/summary.json",
        "validation/prediction_vs_observed.png",
        "validation/target_curves.png",
    }
    assert summary["commit"]  # the code the study started with (read by the driver at start)

    # a second run: nothing trains again, the recorded prediction stands
    again = _run(spec_path, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(trial_runs(client, exp.experiment_id)) == len(runs)
    (pred_again,) = search_all(client, exp.experiment_id, f"tags.`{ROLE}` = 'prediction'")
    assert pred_again.info.run_id == pred_run.info.run_id
    assert pred_again.data.params == pred_run.data.params

    # the target changed (4x instead of 3x): its own prediction is recorded before it trains; the first stands
    changed = {**SPEC, "target": {**SPEC["target"], "extrapolation": 4, "seeds": 1}}
    spec_path.write_text(yaml.safe_dump(changed))
    third = _run(spec_path, tmp_path)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    preds = search_all(client, exp.experiment_id, f"tags.`{ROLE}` = 'prediction'")
    assert len(preds) == 2 and pred_run.info.run_id in {p.info.run_id for p in preds}
    new = next(p for p in preds if p.info.run_id != pred_run.info.run_id)
    assert new.data.tags["prediction_key"] != pred_run.data.tags["prediction_key"]
    summary4 = json.loads(
        (tmp_path / "wt_runs" / "micro_validation" / "validation" / "summary.json").read_text()
    )
    assert summary4["target_compute"] == pytest.approx(4 * 2.0e9)
    assert float(new.data.params["predicted"]) == summary4["predicted_loss"]
    target4 = [r for r in trial_runs(client, exp.experiment_id).values() if r.data.tags["study"] == "target"]
    assert new.info.end_time <= max(r.info.start_time for r in target4)
