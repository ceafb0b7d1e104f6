"""The cost planner (``windtunnel plan``): FLOPs equal the trainer's own accounting, an over-budget sweep
launches nothing, the probe cache in the tracking store is reused and refreshed when the hardware changes,
and every committed sweep plans."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from micro_spec import MICRO_DATA, micro_base
from mlflow import MlflowClient

from trainer.config import RunConfig
from trainer.hardware import mfu_flops_per_token
from trainer.loop import train
from windtunnel.cli import main as cli_main
from windtunnel.orchestrator.cli_plan import totals_line
from windtunnel.orchestrator.expand import trial_flops
from windtunnel.orchestrator.plan import (
    Budget,
    estimate,
    makespan,
    n_evals,
    over_budget,
    parse_budget,
    plan_rows,
)
from windtunnel.orchestrator.probe import PROBE_EXPERIMENT, ProbeCache
from windtunnel.orchestrator.progress import SweepProgress
from windtunnel.orchestrator.spec import SpecError, load_and_expand

ROOT = Path(__file__).resolve().parents[2]

SPEC = {
    "name": "micro_plan",
    "data": dict(MICRO_DATA),
    "base": micro_base(5_200),  # 10 steps of 512 tokens (5,120 trained: the rest is not a whole batch)
    "concurrency": 2,
    "studies": [
        {"name": "lr", "grid": {"optim.lr": [1e-3, 3e-3]}},
        {
            "name": "search",
            "search": {"budgets": [1.0e9], "lr": {"low": 1e-3, "high": 3e-2}, "num_samples": 3},
        },
    ],
}


def _write_spec(tmp_path: Path, spec: dict | None = None) -> Path:
    path = tmp_path / "micro_plan.yaml"
    path.write_text(yaml.safe_dump({**(spec or SPEC), "workdir": str(tmp_path / "runs")}))
    return path


# ---- unit tests of our logic --------------------------------------------------------------------------
def test_parse_budget() -> None:
    assert parse_budget("1e15") == Budget("flops", 1e15)
    assert parse_budget("2h") == Budget("hours", 2.0)
    assert parse_budget("90m") == Budget("hours", 1.5)
    assert parse_budget("10gpu-h") == Budget("gpu_hours", 10.0)
    for bad in ("lots", "-1h", "3 parsecs", "0"):
        with pytest.raises(SpecError, match="--budget"):
            parse_budget(bad)


def test_makespan_is_longest_first_packing() -> None:
    assert makespan([5, 4, 3, 3, 3], 2) == 10  # LPT: 5 | 4, then 3 -> 4+3, 3 -> 5+3, 3 -> 7+3
    assert makespan([10, 1, 1], 2) == 10
    assert makespan([2, 2, 2, 2], 4) == 2
    assert makespan([3, 3, 3], 1) == 9


def test_eta_starts_from_the_plan_and_moves_to_the_observed_rate() -> None:
    p = SweepProgress("s", total=4, planned_s=400.0, started_at=0.0)
    assert p.eta_s(now=100.0) == pytest.approx(300.0)  # no progress yet: the plan minus the time spent
    assert SweepProgress("s", total=4, started_at=0.0).eta_s(now=100.0) is None
    p.set_fraction("a", 1.0)
    p.set_fraction("b", 1.0)  # half the work in 50 s: the rate says 50 s left, the plan 200 s; w = 1/2
    assert p.eta_s(now=50.0) == pytest.approx(0.5 * 200.0 + 0.5 * 50.0)


# ---- FLOPs against the trainer ------------------------------------------------------------------------
def test_planner_flops_equal_the_trainers_accounting(tmp_path: Path) -> None:
    """The planner's training FLOPs = the tokens the trainer really trained x its F per token."""
    spec, plan = load_and_expand(_write_spec(tmp_path))
    rows = plan_rows(plan)
    assert [r.n_runs for r in rows] == [1, 1, 3]
    cfg = rows[0].cfg
    result = train(cfg, workdir=None)
    assert result.status == "finished"
    F = mfu_flops_per_token(cfg.model)
    assert F == pytest.approx(result.flops_per_token + 6 * cfg.model.d_model * cfg.model.vocab_size)
    assert trial_flops(cfg) == pytest.approx(result.tokens * F, rel=1e-12)
    assert result.tokens == 5_120 != cfg.optim.tokens  # whole batches only: what the trainer trains
    evals = sum(1 for _, m in result.history if "val_loss" in m and "loss" in m)
    assert n_evals(cfg) == evals == 1
    eval_flops = evals * cfg.eval_batches * cfg.optim.batch_size * cfg.model.seq_len * F / 3
    assert rows[0].flops == pytest.approx(result.tokens * F + eval_flops, rel=1e-12)


# ---- budget refusal: nothing launched ------------------------------------------------------------------
def test_over_budget_sweep_launches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    path = _write_spec(tmp_path)
    db = tmp_path / "store.db"
    uri = f"sqlite:///{db}"
    for cmd in ("plan", "run"):
        assert cli_main([cmd, str(path), "--budget", "1e9", "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "over the budget of 1e+09 FLOPs" in err, err
        assert "upper bound" in err  # the search group is ASHA-pruned
    assert not db.exists() and not (tmp_path / "runs").exists()  # store and workdir untouched
    assert not ray.is_initialized()
    # a wall-time budget probes (the cache is written) but the sweep itself never starts
    assert cli_main(["run", str(path), "--budget", "1s", "--tracking-uri", uri]) == 2
    assert "over the budget of 1s of wall time; nothing launched" in capsys.readouterr().err
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert "micro_plan" not in names and PROBE_EXPERIMENT in names
    assert not (tmp_path / "runs").exists() and not ray.is_initialized()


def test_gpu_hours_budget_on_a_cpu_sweep_is_a_user_error(tmp_path: Path) -> None:
    spec, plan = load_and_expand(_write_spec(tmp_path))
    est = estimate(spec, plan, cache=None, probe=False)
    with pytest.raises(SpecError, match="uses no GPUs"):
        over_budget(est, Budget("gpu_hours", 1.0))
    assert over_budget(est, Budget("flops", est.total_flops * 1.01)) is None


# ---- the probe cache ----------------------------------------------------------------------------------
def _probe_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(PROBE_EXPERIMENT)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_probe_cache_is_reused_and_refreshed_when_the_hardware_changes(tmp_path: Path) -> None:
    spec, plan = load_and_expand(_write_spec(tmp_path))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    machine_a = {"cpu": "test-cpu-A", "cpu_count": "2", "torch": "x", "gpu": "none"}
    first = estimate(spec, plan, ProbeCache(uri, machine_a))
    assert {r.source for r in first.rows} == {"probed"}  # one shape: probed once, used by every row
    assert len(_probe_runs(uri)) == 1
    assert all(r.est_s > 0 for r in first.rows) and first.wall_s > 0

    again = estimate(spec, plan, ProbeCache(uri, machine_a))
    assert {r.source for r in again.rows} == {"cached"}
    assert len(_probe_runs(uri)) == 1
    assert [r.est_s for r in again.rows] == pytest.approx([r.est_s for r in first.rows])

    machine_b = {**machine_a, "cpu": "test-cpu-B"}
    refreshed = estimate(spec, plan, ProbeCache(uri, machine_b))
    assert {r.source for r in refreshed.rows} == {"probed"}
    runs = _probe_runs(uri)
    assert len(runs) == 2
    assert {r.data.params["hw.cpu"] for r in runs} == {"test-cpu-A", "test-cpu-B"}
    assert "upper bound" in totals_line(refreshed)


# ---- every committed sweep plans -----------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_committed_sweep_plans_without_probing(path: Path) -> None:
    spec, plan = load_and_expand(path)
    est = estimate(spec, plan, cache=None, probe=False)
    assert est.n_runs == plan.n_trials > 0
    assert all(math.isfinite(r.flops) and r.flops > 0 for r in est.rows)


def test_gpu_sweep_rows_are_extrapolated_with_a_stated_model(tmp_path: Path) -> None:
    """Without a GPU here, a cuda sweep's rows are extrapolated from FLOPs (no probe, nothing written)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: its rows are probed")
    spec, plan = load_and_expand(ROOT / "experiments" / "hparam_law.yaml")
    est = estimate(spec, plan, cache=None)
    assert {r.source for r in est.rows} == {"extrapolated"}
    assert any("MFU" in n for n in est.notes)
    row = est.rows[0]
    assert isinstance(row.cfg, RunConfig) and row.est_s > row.flops / (1e15 * 8)
    assert est.gpu_hours > 0 and est.wall_s > 0
