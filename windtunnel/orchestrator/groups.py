"""One Ray Tune run for a whole sweep: fixed trials and every search group's trials share the slots.

One Tuner per search group, run one after another, would leave slots idle during each group's last trials and
make a group's TPE wait for the previous group. A single Tuner takes all trials from
``GroupedSearcher`` and prunes with ``GroupedScheduler``:

- ``GroupedSearcher`` (a ``ray.tune.search.Searcher``) hands out, from several sources, the next trial of the
  source with the most work left (remaining trials x cost per trial; cost = training FLOPs with the output
  layer, ``expand.trial_flops``): longest work first, so the sweep does not end on one long trial while the
  other slots idle (the LPT rule of multiprocessor scheduling, Graham 1969). Sources: the fixed trials
  (``{"idx": i}``, costliest first) and one per search group (``{"group": g, "lr": ..}``). A group first runs
  its LR grid points (``lr_grid``), which are told to that group's ``OptunaSearch`` (TPE) as evaluated points
  when they finish; TPE draws the rest only once none of the group's grid points is still running (so it
  conditions on all of them; until then the searcher answers ``None`` and Tune asks again later).
- ``GroupedScheduler`` routes each trial to its own group's pruning scheduler (ASHA/median): groups differ in
  tokens, so trials are compared only inside their group; fixed trials are never pruned.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher


@dataclass
class GroupSource:
    """One search group as the searcher sees it."""

    key: str
    searcher: Any  # ray.tune.search.optuna.OptunaSearch
    grid: list[dict[str, Any]]  # grid points still to hand out (before TPE)
    remaining: int  # trials still to hand out (grid points included)
    cost: float  # cost per trial (training FLOPs with the output layer)
    grid_running: set[str] = field(default_factory=set)


class GroupedSearcher(Searcher):
    """See the module docstring. ``fixed_costs[i]`` is the cost of fixed trial ``i``."""

    def __init__(
        self, fixed_costs: list[float], groups: list[GroupSource], metric: str = "val_loss", mode: str = "min"
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.fixed_costs = list(fixed_costs)
        self.fixed = sorted(range(len(fixed_costs)), key=lambda i: -fixed_costs[i])
        self.groups = groups
        self.owner: dict[str, tuple[int, dict[str, Any] | None]] = {}  # trial id -> (group, grid point)

    def _pick(self) -> int | None:
        """-1 for a fixed trial, a group index, or None when no source can give a trial now."""
        best, best_work = None, -1.0
        if self.fixed:
            best, best_work = -1, sum(self.fixed_costs[i] for i in self.fixed)
        for gi, g in enumerate(self.groups):
            if g.remaining <= 0 or (not g.grid and g.grid_running):  # TPE waits for the group's grid
                continue
            work = g.remaining * g.cost
            if work > best_work:
                best, best_work = gi, work
        return best

    def done(self) -> bool:
        return not self.fixed and all(g.remaining <= 0 for g in self.groups)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.done():
            return Searcher.FINISHED
        src = self._pick()
        if src is None:
            return None  # a group's TPE waits for its grid points to finish
        if src == -1:
            return {"idx": self.fixed.pop(0)}
        g = self.groups[src]
        g.remaining -= 1
        if g.grid:
            point = g.grid.pop(0)
            g.grid_running.add(trial_id)
            self.owner[trial_id] = (src, point)
            return {"group": src, **point}
        self.owner[trial_id] = (src, None)
        return {"group": src, **g.searcher.suggest(trial_id)}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        own = self.owner.get(trial_id)
        if own is not None and own[1] is None and self.metric in result:
            self.groups[own[0]].searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        own = self.owner.pop(trial_id, None)
        if own is None:
            return
        gi, point = own
        g = self.groups[gi]
        if point is None:
            g.searcher.on_trial_complete(trial_id, result, error)
            return
        g.grid_running.discard(trial_id)
        value = (result or {}).get(self.metric)
        if error or value is None or not math.isfinite(float(value)):
            g.searcher.add_evaluated_point(point, 0.0, error=True)  # a failed trial: TPE ignores its value
        else:  # finished, or pruned at its last intermediate val_loss (as the resume path replays it)
            g.searcher.add_evaluated_point(point, float(value))

    def save(self, checkpoint_path: str) -> None:
        """Tune snapshots searchers; the sweep resumes from the tracking store, not from this file."""
        state = {"fixed_left": len(self.fixed), "groups": {g.key: g.remaining for g in self.groups}}
        with open(checkpoint_path, "w") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a sweep resumes from its MLflow store (windtunnel run again)")


class GroupedScheduler(TrialScheduler):
    """Routes a trial to its group's scheduler (``trial.config["group"]``); FIFO for fixed trials."""

    def __init__(self, schedulers: dict[int, Any]) -> None:
        super().__init__()
        self._metric = None
        self.fifo = FIFOScheduler()
        self.children = {g: s for g, s in schedulers.items() if s is not None}

    def _for(self, trial: Any) -> Any:
        g = trial.config.get("group")
        return self.fifo if g is None else self.children.get(int(g), self.fifo)

    @property
    def pruned(self) -> set[str]:
        """Trial ids any group scheduler stopped early (read by the progress callback)."""
        out: set[str] = set()
        for s in self.children.values():
            out |= getattr(s, "pruned", set())
        return out

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        ok = all(s.set_search_properties(metric, mode, **spec) for s in self.children.values())
        self._metric = metric
        return ok

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._for(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._for(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        return self.fifo.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return f"GroupedScheduler: {len(self.children)} group schedulers, {len(self.pruned)} pruned"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"pruned": sorted(self.pruned)}, f)

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a sweep resumes from its MLflow store (windtunnel run again)")


def grouped_trainable(
    config: dict[str, Any], ctx: dict[str, Any], fixed: list[dict[str, Any]], groups: list[dict[str, Any]]
) -> None:
    """Tune function trainable: ``{"idx": i}`` runs ``fixed[i]``; ``{"group": g, "lr": ..}`` runs group
    ``g``'s base config with the searched values (``trial.ray_trainable`` does the work)."""
    from windtunnel.orchestrator.trial import ray_trainable

    if "idx" in config:
        ray_trainable(config, ctx, fixed)
        return
    searched = {k: v for k, v in config.items() if k != "group"}
    ray_trainable(searched, ctx, [groups[int(config["group"])]])
