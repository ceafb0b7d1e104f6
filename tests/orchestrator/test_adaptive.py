"""The adaptive phase end to end on the real stack (Ray Tune, MLflow SQLite, the trainer): a micro IsoFLOP
ladder, then one propose -> run -> fit round of k = 2; the round's proposal is recorded, its trials carry
``adaptive_round``, the round logs ``pi95_width_at_target`` and the loop's stop reason; a second run of the
sweep launches nothing. With ``adaptive.points`` the round's runs may give several rows each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from micro_spec import MICRO_DATA, micro_base

from windtunnel.orchestrator.adaptive import ROUND_ROLE, STOP_TAG, WIDTH_METRIC
from windtunnel.orchestrator.tracking import ROLE, open_client, search_all, trial_runs

pytestmark = [pytest.mark.slow]

SPEC = {
    "name": "micro_adaptive",
    "data": dict(MICRO_DATA),
    "base": micro_base(20_000),
    "concurrency": 2,
    "min_runs_to_fit": 6,
    "fit": {"laws": ["parametric"], "bootstrap": 10},
    "studies": [
        {
            "name": "ladder",
            "ladder": {
                "budgets": [3.0e8, 6.0e8],
                "rule": {
                    "n_sizes": 3,
                    "d_model_min": 16,
                    "d_model_max": 32,
                    "head_dim": 8,
                    "aspect_ratio": 64,
                },
            },
        }
    ],
    "adaptive": {"target": 6.0e9, "rounds": 1, "k": 2, "bootstrap": 10, "budget": 1.0e9},
}


def _run(spec_path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "windtunnel.cli", "run", str(spec_path), "--no-progress"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.parametrize("points", [None, {"at_fractions": [0.5, 1.0], "mode": "wsd"}])
def test_one_round_recorded_run_and_resumed(tmp_path: Path, points: dict | None) -> None:
    spec = {**SPEC, "adaptive": {**SPEC["adaptive"], **({"points": points} if points else {})}}
    spec_path = tmp_path / "a.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    proc = _run(spec_path, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("micro_adaptive").experiment_id
    rounds = search_all(client, exp_id, f"tags.`{ROLE}` = '{ROUND_ROLE}'")
    assert len(rounds) == 1 and rounds[0].data.tags["adaptive_round"] == "1"
    n = int(rounds[0].data.params["n_proposals"])  # k = 2 within the budget; a run with points costs more
    assert n == 2 if not points else 1 <= n <= 2
    assert f"adaptive round 1: {n} runs" in proc.stdout, proc.stdout[-3000:]
    assert WIDTH_METRIC in rounds[0].data.metrics and rounds[0].data.metrics[WIDTH_METRIC] > 0
    assert rounds[0].data.tags[STOP_TAG] == "rounds: all 1 rounds ran"
    parent = client.get_run(rounds[0].data.tags["mlflow.parentRunId"])
    assert parent.data.tags[STOP_TAG] == "rounds: all 1 rounds ran"
    runs = trial_runs(client, exp_id)
    tagged = [r for r in runs.values() if r.data.tags.get("adaptive_round") == "1"]
    assert len(tagged) == n and all(r.data.tags["status"] == "finished" for r in tagged)
    assert all(r.data.tags["study"] == "adaptive_r1" for r in tagged)
    assert len(runs) == 6 + n
    if points:  # the runs with points report them; their rows join the run table the round refits
        from windtunnel.orchestrator.tracking import runs_from_mlflow

        table = runs_from_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}", "micro_adaptive")
        ids = {r.info.run_id for r in tagged if json.loads(r.data.tags["run_config"]).get("points")}
        assert ids, "the design proposed no run with points"
        assert set(table.loc[table["point_fraction"] == 0.5, "parent_run_id"]) == ids

    if (
        not points
    ):  # `windtunnel propose` on the same store: the parametric design, and the frontier's refusal
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        cli = [sys.executable, "-m", "windtunnel", "propose", "--experiment", "micro_adaptive"]
        cli += ["--tracking-uri", uri, "--target", "6e9", "--k", "1", "--bootstrap", "10"]
        out = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "designed for the parametric law" in out.stdout, (
            out.stdout + out.stderr
        )
        out = subprocess.run(
            [*cli, "--law", "frontier"], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 2, out.stdout + out.stderr
        # 2 ladder budgets: too few for the frontier, or (the round's runs adding budgets) no bracketed m_opt
        err = out.stderr.strip()
        assert (
            err.startswith("windtunnel propose: error: the experiment's runs give no ") and "\n" not in err
        ), err

    again = _run(spec_path, tmp_path)  # resume: the recorded round and its finished runs stand
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "recorded proposal" in again.stdout, again.stdout[-3000:]
    assert len(trial_runs(client, exp_id)) == 6 + n
    assert len(search_all(client, exp_id, f"tags.`{ROLE}` = '{ROUND_ROLE}'")) == 1
