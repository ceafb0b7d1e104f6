"""Seed noise of a sweep: how much the final loss of one configuration moves when only its seed changes.

Runs are grouped by their full RunConfig (the ``run_config`` tag) with ``seed`` and ``name`` removed; per
group with at least two finished seeds, s = sample standard deviation of the final loss (ddof = 1). The
sweep's ``seed_noise_std`` is the root mean square of the groups' s (pooled standard deviation for groups
of equal size). A prediction error smaller than this cannot be told from noise by one run.
"""

from __future__ import annotations

import json
import math
from typing import Any


def seed_groups(runs: list[Any]) -> dict[str, list[tuple[int, float]]]:
    """Config without seed -> [(seed, final loss)] over finished runs."""
    from windtunnel.orchestrator.tracking import RT_PREFIX, effective_status

    groups: dict[str, list[tuple[int, float]]] = {}
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        loss = metrics.get(RT_PREFIX + "loss", math.nan)
        if effective_status(run) != "finished" or "run_config" not in tags or not math.isfinite(loss):
            continue
        cfg = json.loads(tags["run_config"])
        seed = int(cfg.pop("seed", 0))
        cfg.pop("name", None)
        groups.setdefault(json.dumps(cfg, sort_keys=True), []).append((seed, float(loss)))
    return groups


def seed_noise(groups: dict[str, list[tuple[int, float]]]) -> tuple[float | None, list[float]]:
    """(pooled seed_noise_std or None, per-group standard deviations) over groups with >= 2 seeds."""
    stds = []
    for members in groups.values():
        losses = [loss for _, loss in members]
        if len({s for s, _ in members}) >= 2:
            mean = sum(losses) / len(losses)
            stds.append(math.sqrt(sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)))
    if not stds:
        return None, []
    return math.sqrt(sum(s * s for s in stds) / len(stds)), stds


def seed_noise_lines(client: Any, sweep: str) -> list[str]:
    """The end-of-sweep summary line on seed noise (none when no configuration ran with two seeds)."""
    from windtunnel.orchestrator.tracking import trial_runs, with_retry

    exp = with_retry(client.get_experiment_by_name, sweep)
    if exp is None:
        return []
    pooled, stds = seed_noise(seed_groups(list(trial_runs(client, exp.experiment_id).values())))
    if pooled is None:
        return []
    return [
        f"seed_noise_std: {pooled:.4f} nats (std of the final loss over seeds, pooled over {len(stds)} "
        f"configurations; largest {max(stds):.4f})"
    ]
