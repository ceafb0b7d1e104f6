"""One Tuner for the whole sweep: the order in which ``GroupedSearcher`` hands out trials (longest work
first, grid points before TPE, TPE only after its group's grid finished) with real ``OptunaSearch`` groups,
and the degenerate-law check of the end-of-sweep fit (``fitting.check_optima``)."""

from __future__ import annotations

import math

import optuna
import pytest
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from windtunnel.orchestrator.fitting import check_optima
from windtunnel.orchestrator.groups import GroupedSearcher, GroupSource


def _optuna(seed: int = 0) -> OptunaSearch:
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=2)
    return OptunaSearch(space=space, metric="val_loss", mode="min", sampler=sampler)


def _group(key: str, grid: list[float], remaining: int, cost: float) -> GroupSource:
    return GroupSource(key, _optuna(), [{"lr": x} for x in grid], remaining, cost)


def test_longest_work_first_then_grid_then_tpe_after_the_grid() -> None:
    small = _group("small", [1e-3, 1e-2], remaining=3, cost=1.0)
    big = _group("big", [2e-3, 2e-2], remaining=3, cost=10.0)
    s = GroupedSearcher(fixed_costs=[5.0, 40.0], groups=[small, big])
    # work left: fixed 45, big 30, small 3 -> the fixed trials first, the largest (idx 1) first
    assert s.suggest("t0") == {"idx": 1}
    # fixed 5 < big 30: the big group's grid points, in order
    assert s.suggest("t1") == {"group": 1, "lr": 2e-3}
    assert s.suggest("t2") == {"group": 1, "lr": 2e-2}
    # big: 1 left (TPE) but its grid is running -> fixed idx 0 (5) beats small (3)
    assert s.suggest("t3") == {"idx": 0}
    assert s.suggest("t4") == {"group": 0, "lr": 1e-3}
    assert s.suggest("t5") == {"group": 0, "lr": 1e-2}
    # both groups wait for their grid points: nothing to hand out now, but not finished
    assert s.suggest("t6") is None
    s.on_trial_complete("t1", {"val_loss": 3.0})
    assert s.suggest("t6") is None  # t2 of the big group still runs
    s.on_trial_complete("t2", {"val_loss": 2.0})
    t = s.suggest("t6")
    assert t is not None and t["group"] == 1 and 1e-3 <= t["lr"] <= 1e-1
    # the grid results reached the group's TPE as evaluated trials
    study = big.searcher._ot_study
    done = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(tr.params["lr"] for tr in done) == [2e-3, 2e-2]
    s.on_trial_complete("t6", {"val_loss": 1.5})
    assert len([tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]) == 3
    # a failed grid trial is told to TPE as failed, not as a value
    s.on_trial_complete("t4", None, error=True)
    s.on_trial_complete("t5", {"val_loss": 2.5})
    states = sorted(str(tr.state) for tr in small.searcher._ot_study.trials)
    assert states == ["TrialState.COMPLETE", "TrialState.FAIL"]
    assert s.suggest("t7")["group"] == 0
    assert s.suggest("t8") == Searcher.FINISHED


def test_no_groups_only_fixed() -> None:
    s = GroupedSearcher([1.0, 3.0, 2.0], [])
    assert [s.suggest(f"t{i}") for i in range(3)] == [{"idx": 1}, {"idx": 2}, {"idx": 0}]
    assert s.suggest("t3") == Searcher.FINISHED


def _rows(
    budget_values: dict[float, list[tuple[float, float]]], pruned: dict[float, list[float]] | None = None
):
    rows = [
        {"budget": c, "value": v, "loss": loss, "status": "finished"}
        for c, pairs in budget_values.items()
        for v, loss in pairs
    ]
    for c, vals in (pruned or {}).items():
        rows += [{"budget": c, "value": v, "loss": math.nan, "status": "pruned"} for v in vals]
    return rows


def test_check_optima_identified() -> None:
    rows = _rows(
        {
            1e10: [(4e-3, 3.1), (8e-3, 3.0), (1.6e-2, 3.05)],
            1e11: [(2e-3, 2.9), (4e-3, 2.8), (8e-3, 2.85)],
        }
    )
    out = check_optima(rows, (-0.4, -0.1))
    assert out["optima"] == {1e10: 8e-3, 1e11: 4e-3}
    assert out["warnings"] == [] and not out["degenerate"]


def test_check_optima_same_value_everywhere_is_degenerate() -> None:
    rows = _rows({c: [(4e-3, 3.1), (8e-3, 3.0), (1.6e-2, 3.05)] for c in (1e10, 1e11, 1e12)})
    out = check_optima(rows, (0.0, 0.0))
    assert out["degenerate"]
    assert any("same value" in w for w in out["warnings"])
    assert any("zero width" in w for w in out["warnings"])


def test_check_optima_edges_count_pruned_runs_as_tried() -> None:
    # at 1e10 the best finished run is the lowest finished LR, but a pruned run tried lower: not an edge
    rows = _rows(
        {
            1e10: [(4e-3, 3.0), (8e-3, 3.1)],
            1e11: [(4e-3, 2.9), (8e-3, 2.8)],
            1e12: [(1e-3, 2.5), (2e-3, 2.6)],
        },
        pruned={1e10: [1e-3]},
    )
    out = check_optima(rows, (-0.3, 0.1))
    assert out["edges"] == {1e11: "high", 1e12: "low"}
    assert out["degenerate"]  # 2 of 3 budgets at an edge
    assert any("edge" in w for w in out["warnings"])
    # one edge in three budgets: a warning, not degenerate
    rows = _rows(
        {1e10: [(4e-3, 3.0), (8e-3, 3.1), (2e-3, 3.2)], 1e11: [(2e-3, 2.9), (4e-3, 2.8), (8e-3, 2.85)]}
    )
    rows += _rows({1e12: [(1e-3, 2.7), (2e-3, 2.6)]})
    out = check_optima(rows, (-0.3, 0.1))
    assert out["edges"] == {1e12: "high"} and not out["degenerate"] and len(out["warnings"]) == 1


@pytest.mark.parametrize("status", ["failed"])
def test_check_optima_ignores_failed_runs(status: str) -> None:
    rows = _rows({1e10: [(4e-3, 3.0), (8e-3, 3.1)]})
    rows.append({"budget": 1e10, "value": 1e-3, "loss": math.nan, "status": status})
    assert check_optima(rows)["edges"] == {1e10: "low"}
