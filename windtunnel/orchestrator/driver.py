"""The sweep driver: plan -> skip what the store records as done -> Ray Tune -> laws at the end.

Resume and idempotence (trial identity = ``RunConfig.config_hash()``):
- fixed trials (grid/ladder) whose child run is ``finished``/``diverged``/``pruned`` are skipped; unfinished
  ones run again and the trainer resumes from its checkpoint in ``<workdir>/<sweep>/<hash>``; the trial
  finds its existing MLflow child run by hash and continues it (no second run, no duplicated steps);
- search groups (one Optuna TPE search per study x budget x seed) tag their runs ``search_group``. On a
  re-run, done points are replayed to ``OptunaSearch`` as ``points_to_evaluate`` + ``evaluated_rewards``
  (so TPE conditions on them and they are not re-run), unfinished sampled points join the fixed trials
  (resumed from checkpoints), and only ``num_samples - already sampled`` new points are drawn.

One Tuner runs every trial of the sweep, fixed trials and all search groups together (``groups.py``:
``GroupedSearcher`` hands out the source with the most work left, each group first runs its ``lr_grid``
points, then TPE; ``GroupedScheduler`` prunes each group with its own ASHA/median rule), on one Ray session
(``reuse_actors=True``, ``max_concurrent_trials = concurrency``, ``FailureConfig(max_failures=retries)``:
a trial that raises is re-run up to ``retries`` times, its child run's ``attempts`` tag counting the runs;
a diverged run returns normally and is never retried).

On a multi-node cluster (``--address auto|ray://...``) trials write to the tracking store and their workdirs
themselves: use a tracking server (``--tracking-uri http://...``) and a ``workdir`` on shared storage.
"""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import RunConfig
from windtunnel.orchestrator.raycluster import (
    TUNE_ENV,
    StorePoller,
    check_cluster_fits,
    connect_cluster,
    ray_client_mode,
)
from windtunnel.orchestrator.spec import Plan, SearchGroup, SpecError, SweepSpec

DIVERGED_REWARD = 1.0e3


def resolve_tracking_uri(uri: str, base_dir: Path | None = None) -> str:
    """Make relative ``sqlite:///x.db`` paths absolute (Ray workers run in other directories)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri.removeprefix("sqlite:///")
        return "sqlite:///" + str(((base_dir or Path.cwd()) / rel).resolve())
    if "://" not in uri:  # a bare path: treat as a SQLite file
        return "sqlite:///" + str(((base_dir or Path.cwd()) / uri).resolve())
    return uri


@dataclass
class SweepOutcome:
    sweep: str
    tracking_uri: str
    parent_run_id: str
    n_planned: int
    n_skipped: int
    n_launched: int
    wall_s: float
    counts: dict[str, int] = field(default_factory=dict)
    laws_path: Path | None = None
    summary: list[str] = field(default_factory=list)


def _item(
    cfg: RunConfig, study: str, kind: str, budget: float | None, group: str | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "run_cfg": cfg.model_dump(mode="json"),
        "study": study,
        "kind": kind,
        "budget": budget,
    }
    if group is not None:
        item["search_group"] = group
    return item


def _prepare_data(configs: list[RunConfig]) -> str:
    """``prepare_data`` once per distinct (data, vocab), on the driver; returns the manifest hashes."""
    from trainer.data import prepare_data

    seen: dict[str, str] = {}
    for cfg in configs:
        key = cfg.data.model_dump_json() + f"|{cfg.model.vocab_size}"
        if key not in seen:
            try:
                seen[key] = prepare_data(cfg).manifest_hash
            except (ValueError, OSError) as err:  # DataError is a ValueError: a user-input problem
                raise SpecError(" ".join(f"data: {err}".split())) from None
    return ",".join(sorted(set(seen.values())))


@dataclass
class SearchPlan:
    """A search group's state at launch: trials left to draw, done points (replayed to TPE) and the LR grid
    points not yet tried."""

    group: SearchGroup
    remaining: int
    points: list[dict[str, Any]]
    rewards: list[float]
    grid: list[dict[str, Any]]


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


def _search_space(group: SearchGroup) -> dict[str, Any]:
    import optuna

    space: dict[str, Any] = {}
    if group.search.lr is not None:
        space["lr"] = optuna.distributions.FloatDistribution(
            group.search.lr.low, group.search.lr.high, log=group.search.lr.log
        )
    if group.search.batch_size is not None:
        space["batch_size"] = optuna.distributions.CategoricalDistribution(list(group.search.batch_size))
    return space


def _scheduler(group: SearchGroup) -> Any:
    from windtunnel.orchestrator.tune_callback import PruningASHA, PruningMedian

    total = group.base_cfg.optim.tokens
    grace = max(1.0, group.search.grace_fraction * total)
    if group.search.scheduler == "asha":
        return PruningASHA(
            time_attr="tokens_seen",
            max_t=float(total),
            grace_period=grace,
            reduction_factor=group.search.reduction_factor,
        )
    if group.search.scheduler == "median":
        return PruningMedian(time_attr="tokens_seen", grace_period=grace, min_samples_required=3)
    return None


def run_sweep(
    spec: SweepSpec,
    plan: Plan,
    address: str | None = None,
    tracking_uri: str | None = None,
    show_progress: bool = True,
    log_flush_s: float = 10.0,
    planned_s: float | None = None,
) -> SweepOutcome:
    """Run (or resume) a sweep. See the module docstring for the resume rules."""

    from windtunnel.orchestrator.tracking import (
        DONE_STATUSES,
        effective_status,
        ensure_experiment,
        ensure_parent_run,
        open_client,
        trial_runs,
        with_retry,
    )

    t_start = time.perf_counter()
    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    sweep_dir = (Path(spec.workdir) / spec.name).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    client = open_client(uri)
    exp_id = ensure_experiment(client, spec.name)
    parent_id = ensure_parent_run(
        client,
        exp_id,
        spec.name,
        {"n_trials": plan.n_trials, "concurrency": spec.concurrency, "spec": spec.model_dump_json()},
    )
    existing = trial_runs(client, exp_id)
    done_counts: dict[str, int] = {}

    def is_done(h: str) -> bool:
        run = existing.get(h)
        return run is not None and effective_status(run) in DONE_STATUSES

    fixed: list[dict[str, Any]] = []
    for t in plan.trials:
        if is_done(t.config_hash):
            st = effective_status(existing[t.config_hash])
            done_counts[st] = done_counts.get(st, 0) + 1
        else:
            fixed.append(_item(t.run_cfg, t.study, t.kind, t.budget))
    searches: list[SearchPlan] = []
    for g in plan.searches:
        runs = [r for r in existing.values() if r.data.tags.get("search_group") == g.key]
        points, rewards = [], []
        tried = [float(r.data.params["optim.lr"]) for r in runs if "optim.lr" in r.data.params]
        for r in runs:
            status = effective_status(r)
            point = {}
            if g.search.lr is not None:
                point["lr"] = float(r.data.params["optim.lr"])
            if g.search.batch_size is not None:
                point["batch_size"] = int(r.data.params["optim.batch_size"])
            if status in DONE_STATUSES:
                done_counts[status] = done_counts.get(status, 0) + 1
                if status == "diverged":
                    reward = DIVERGED_REWARD
                elif status == "pruned":
                    reward = float(r.data.metrics.get("val_loss", DIVERGED_REWARD))
                else:
                    reward = float(r.data.metrics.get("rt.loss", DIVERGED_REWARD))
                points.append(point)
                rewards.append(reward)
            else:  # sampled before an interruption: resume it as a fixed trial
                if "run_config" in r.data.tags:  # the exact config the trial ran with
                    cfg = RunConfig.model_validate_json(r.data.tags["run_config"])
                else:
                    cfg = g.base_cfg.with_overrides(
                        {f"optim.{k}": v for k, v in point.items()}
                        | {"name": r.data.tags.get("run_name", "run")}
                    )
                fixed.append(_item(cfg, g.study, "search", g.budget, g.key))
        remaining = max(0, g.search.num_samples - len(runs))
        grid = [p for p in _grid_points(g) if not any(math.isclose(p["lr"], x, rel_tol=1e-6) for x in tried)]
        searches.append(SearchPlan(g, remaining, points, rewards, grid[:remaining]))
    n_launch = len(fixed) + sum(s.remaining for s in searches)
    n_skipped = sum(done_counts.values())
    ctx = {
        "tracking_uri": uri,
        "experiment_id": exp_id,
        "parent_run_id": parent_id,
        "sweep": spec.name,
        "sweep_dir": str(sweep_dir),
        "cpus": spec.resources.cpus,
        "log_flush_s": log_flush_s,
    }
    from windtunnel.orchestrator.progress import SweepProgress, make_callback

    progress = SweepProgress(spec.name, plan.n_trials, already_done=dict(done_counts), planned_s=planned_s)
    if n_launch:
        all_cfgs = [RunConfig.from_dict(i["run_cfg"]) for i in fixed] + [s.group.base_cfg for s in searches]
        ctx["manifest_hash"] = _prepare_data(all_cfgs)
        _run_tuners(spec, ctx, fixed, searches, address, sweep_dir, progress, show_progress, make_callback)
    with_retry(client.set_tag, parent_id, "status", "finished")
    outcome = SweepOutcome(
        spec.name, uri, parent_id, plan.n_trials, n_skipped, n_launch, time.perf_counter() - t_start
    )
    final = trial_runs(client, exp_id)
    for run in final.values():
        st = effective_status(run)
        outcome.counts[st] = outcome.counts.get(st, 0) + 1
    from windtunnel.orchestrator.fitting import fit_at_end

    fit_at_end(spec, uri, parent_id, sweep_dir, outcome)
    # the parent run gets its MLflow end time only now (laws and figures are its artifacts); a re-run of the
    # sweep marks it RUNNING again (``ensure_parent_run``)
    with_retry(client.set_terminated, parent_id, "FINISHED")
    return outcome


def _run_tuners(
    spec: SweepSpec,
    ctx: dict[str, Any],
    fixed: list[dict[str, Any]],
    searches: list[SearchPlan],
    address: str | None,
    sweep_dir: Path,
    progress: Any,
    show_progress: bool,
    make_callback: Any,
) -> None:
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)
    import optuna
    import ray
    from ray import tune

    from windtunnel.orchestrator.groups import (
        GroupedScheduler,
        GroupedSearcher,
        GroupSource,
        grouped_trainable,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if address:  # an existing cluster: its own dashboard/logging settings stand
            connect_cluster(ray, address)
        else:
            # its own Ray: never a cluster that RAY_ADDRESS or an earlier `ray start` here points to
            ray.init(address="local", **kwargs)
    check_cluster_fits(spec, ray.cluster_resources())
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    active = [s for s in searches if s.remaining > 0]
    sources, schedulers, group_items = [], {}, []
    for gi, sp in enumerate(active):
        g = sp.group
        group_items.append(_item(g.base_cfg, g.study, "search", g.budget, g.key))
        sources.append(
            GroupSource(
                key=g.key,
                searcher=_optuna_searcher(sp),
                grid=list(sp.grid),
                remaining=sp.remaining,
                cost=trial_flops(g.base_cfg),
            )
        )
        schedulers[gi] = _scheduler(g)
    n_total = len(fixed) + sum(sp.remaining for sp in active)
    if n_total == 0:
        return
    scheduler = GroupedScheduler(schedulers)
    searcher = GroupedSearcher([trial_flops(RunConfig.from_dict(i["run_cfg"])) for i in fixed], sources)
    live, poller = None, None
    if show_progress:
        from rich.live import Live

        live = Live(progress.table(), refresh_per_second=2, transient=False)
        live.start()
        if ray_client_mode(address):  # Tune runs remotely: its callbacks cannot reach this table
            poller = StorePoller(progress, live, ctx["tracking_uri"], ctx["experiment_id"])
            poller.start()
    try:
        trainable = tune.with_resources(
            tune.with_parameters(grouped_trainable, ctx=ctx, fixed=fixed, groups=group_items), resources
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                metric="val_loss",
                mode="min",
                num_samples=n_total,
                max_concurrent_trials=spec.concurrency,
                reuse_actors=True,
            ),
            run_config=_run_config(
                spec,
                sweep_dir,
                "sweep",
                [make_callback(progress, None if poller else live, scheduler, ctx["tracking_uri"])],
            ),
        )
        tuner.fit()
    finally:
        if poller is not None:
            poller.stop()  # one last read of the store
        if live is not None:
            live.update(progress.table())
            live.stop()


def trial_flops(cfg: RunConfig) -> float:
    """A run's training FLOPs as the trainer counts them: C_train = D * F, D = steps * batch_tokens (the
    tokens the trainer trains: ``optim.tokens`` rounded down to whole batches) and
    F = ``trainer.hardware.mfu_flops_per_token`` = M (with MTP) + 6 * d_model * vocab * (1 + n_mtp), the
    output layer included (PaLM App. B). M alone leaves out the head, which dominates tiny models: an IsoFLOP
    profile's smallest model has the most tokens and is the slowest trial at its budget. Also the cost the
    searcher orders trials by (longest work first) and the planner's FLOPs (``windtunnel plan``)."""
    from trainer.hardware import mfu_flops_per_token

    return float(mfu_flops_per_token(cfg.model)) * float(cfg.steps * cfg.batch_tokens)


_cost = trial_flops  # the name tests/orchestrator/test_spec.py and groups.py's docstring use


def _optuna_searcher(sp: SearchPlan) -> Any:
    """The group's TPE (``OptunaSearch``), with its done points replayed as evaluated.

    TPE's start-up phase (random draws before the model is used; Optuna's default is 10 trials, more than
    a small search has) is the LR grid when there is one, else half the samples (at most 10).
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    g = sp.group
    n_existing = g.search.num_samples - sp.remaining
    n_startup = g.search.lr_grid or min(10, max(1, g.search.num_samples // 2))
    sampler = optuna.samplers.TPESampler(
        # a re-run replays done points; a fresh seed keeps the random start-up draws from repeating them.
        # Each group (budget) gets its own stream: with one seed, every budget drew the same random LRs and
        # batches while its grid was still running (seen in hparam_law_cpu: identical trials at 4 budgets)
        seed=g.search.seed + zlib.crc32(g.key.encode()) % 100_003 + 7919 * n_existing,
        n_startup_trials=n_startup,
    )
    return OptunaSearch(
        space=_search_space(g),
        metric="val_loss",
        mode="min",
        points_to_evaluate=sp.points or None,
        evaluated_rewards=sp.rewards or None,
        sampler=sampler,
    )


def _run_config(spec: SweepSpec, sweep_dir: Path, name: str, callbacks: list[Any]) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=str(sweep_dir / "_tune"),
        failure_config=tune.FailureConfig(max_failures=spec.retries),
        callbacks=callbacks,
        progress_reporter=_make_quiet_reporter(),
        verbose=0,  # legacy output engine (RAY_AIR_NEW_OUTPUT=0): silent; the rich table shows progress
    )


def _make_quiet_reporter() -> Any:
    """A Tune ProgressReporter that prints nothing (the rich table shows progress)."""
    from ray.tune import ProgressReporter

    class Quiet(ProgressReporter):
        def should_report(self, trials: list, done: bool = False) -> bool:
            return False

        def report(self, trials: list, done: bool, *sys_info: Any) -> None:
            return None

    return Quiet()
