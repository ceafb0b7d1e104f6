"""What a (re-)run of a sweep has left to do, decided from the tracking store by content identity.

A fixed trial (grid/ladder) is done when the store holds a finished/diverged/pruned child run with its
``trial_key`` (``identity.py``); an unfinished one is resumed with the config its checkpoints were written by.
A search group counts only the runs tagged with its ``search_group`` label and its ``group_key``: done points
are replayed to TPE, unfinished ones resumed as fixed trials, and ``num_samples - sampled`` points are left
to draw. Stored runs that match nothing (another data set, base model or trainer results version) are never
reused; the end-of-sweep summary says how many were reused and why they match, and how many were not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trainer.config import RunConfig
from windtunnel.orchestrator.spec import Plan, SearchGroup
from windtunnel.orchestrator.trial import DIVERGED_PENALTY


def trial_item(
    cfg: RunConfig,
    study: str,
    kind: str,
    budget: float | None,
    manifest: str,
    group: str | None = None,
    gkey: str | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "run_cfg": cfg.model_dump(mode="json"),
        "study": study,
        "kind": kind,
        "budget": budget,
        "manifest_hash": manifest,
    }
    if group is not None:
        item["search_group"] = group
        item["group_key"] = gkey
    return item


@dataclass
class SearchPlan:
    """A search group's state at launch: trials left to draw, done points (replayed to TPE) and the LR grid
    points not yet tried."""

    group: SearchGroup
    remaining: int
    points: list[dict[str, Any]]
    rewards: list[float]
    grid: list[dict[str, Any]]
    manifest: str = ""
    gkey: str = ""


def _grid_points(group: SearchGroup) -> list[dict[str, Any]]:
    """``lr_grid`` points; with a batch search too, at the base batch size (or the middle choice)."""
    lrs = group.search.lr_grid_values()
    if not lrs:
        return []
    extra: dict[str, Any] = {}
    choices = group.search.batch_size
    if choices:
        b = group.base_cfg.optim.batch_size
        extra["batch_size"] = b if b in choices else choices[len(choices) // 2]
    return [{"lr": lr, **extra} for lr in lrs]


@dataclass
class Work:
    """What is left to run, from the store: fixed trials to launch, search plans, and what was reused."""

    fixed: list[dict[str, Any]] = field(default_factory=list)
    searches: list[SearchPlan] = field(default_factory=list)
    done_counts: dict[str, int] = field(default_factory=dict)
    matched_ids: set[str] = field(default_factory=set)  # stored runs that belong to this spec's trials
    fixed_keys: set[str] = field(default_factory=set)
    group_keys: set[str] = field(default_factory=set)

    def count_done(self, status: str) -> None:
        self.done_counts[status] = self.done_counts.get(status, 0) + 1


def belongs(run: Any, work: Work) -> bool:
    tags = run.data.tags
    return tags.get("trial_key") in work.fixed_keys or tags.get("group_key") in work.group_keys


def reuse_lines(work: Work, existing: dict[str, Any], n_reused: int) -> list[str]:
    """The summary's account of reuse: how many stored results were reused and why they match, and how many
    stored runs of the sweep were not (their content differs from every trial of this spec)."""
    from windtunnel.orchestrator.identity import REUSE_RULE

    lines = []
    if n_reused:
        lines.append(f"reused {n_reused} stored results, each with the {REUSE_RULE}")
    stale = [r for r in existing.values() if r.info.run_id not in work.matched_ids]
    if stale:
        lines.append(
            f"not reused: {len(stale)} stored runs of this sweep match no trial of this spec (their config, "
            "data manifest or trainer results version differ); they stay in the store, outside this fit"
        )
    return lines


def plan_work(plan: Plan, existing: dict[str, Any], manifests: dict[str, str]) -> Work:
    """Split the plan into done (reused) and to-run by content identity (``identity.py``)."""
    from windtunnel.orchestrator.identity import data_key, trial_key
    from windtunnel.orchestrator.tracking import DONE_STATUSES, effective_status

    work = Work()
    for t in plan.trials:
        manifest = manifests[data_key(t.run_cfg)]
        key = trial_key(t.run_cfg, manifest)
        work.fixed_keys.add(key)
        run = existing.get(key)
        cfg = t.run_cfg
        if run is not None:
            work.matched_ids.add(run.info.run_id)
            if effective_status(run) in DONE_STATUSES:
                work.count_done(effective_status(run))
                continue
            if "run_config" in run.data.tags:  # resume with the config its checkpoints were written by
                stored = RunConfig.model_validate_json(run.data.tags["run_config"])
                cfg = stored if trial_key(stored, manifest) == key else cfg
        work.fixed.append(trial_item(cfg, t.study, t.kind, t.budget, manifest))
    for g in plan.searches:
        work.searches.append(plan_search(g, existing, manifests[data_key(g.base_cfg)], work))
    return work


def plan_search(g: SearchGroup, existing: dict[str, Any], manifest: str, work: Work) -> SearchPlan:
    """A search group's done points (replayed to TPE), its unfinished points (resumed as fixed trials) and
    the draws left; only runs whose ``group_key`` matches this group's content count."""
    from windtunnel.orchestrator.identity import group_key
    from windtunnel.orchestrator.tracking import DONE_STATUSES, RT_PREFIX, effective_status

    searched = [n for n, v in (("lr", g.search.lr), ("batch_size", g.search.batch_size)) if v is not None]
    gkey = group_key(g.base_cfg, searched, manifest)
    work.group_keys.add(gkey)
    runs = [
        r
        for r in existing.values()
        if r.data.tags.get("search_group") == g.key and r.data.tags.get("group_key") == gkey
    ]
    points, rewards = [], []
    tried = [float(r.data.params["optim.lr"]) for r in runs if "optim.lr" in r.data.params]
    for r in runs:
        work.matched_ids.add(r.info.run_id)
        status = effective_status(r)
        point = {}
        if g.search.lr is not None:
            point["lr"] = float(r.data.params["optim.lr"])
        if g.search.batch_size is not None:
            point["batch_size"] = int(r.data.params["optim.batch_size"])
        if status in DONE_STATUSES:
            work.count_done(status)
            if status == "diverged":
                reward = DIVERGED_PENALTY
            elif status == "pruned":
                reward = float(r.data.metrics.get("val_loss", DIVERGED_PENALTY))
            else:
                reward = float(r.data.metrics.get(RT_PREFIX + "loss", DIVERGED_PENALTY))
            points.append(point)
            rewards.append(reward)
        else:  # sampled before an interruption: resume it as a fixed trial
            if "run_config" in r.data.tags:  # the exact config the trial ran with
                cfg = RunConfig.model_validate_json(r.data.tags["run_config"])
            else:
                cfg = g.base_cfg.with_overrides(
                    {f"optim.{k}": v for k, v in point.items()} | {"name": r.data.tags.get("run_name", "run")}
                )
            work.fixed.append(trial_item(cfg, g.study, "search", g.budget, manifest, g.key, gkey))
    remaining = max(0, g.search.num_samples - len(runs))
    grid = [p for p in _grid_points(g) if not any(math.isclose(p["lr"], x, rel_tol=1e-6) for x in tried)]
    return SearchPlan(g, remaining, points, rewards, grid[:remaining], manifest, gkey)
