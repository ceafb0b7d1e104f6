"""The sweep driver: plan -> skip what the store records as done -> Ray Tune -> laws at the end.

Resume and idempotence (trial identity by content = ``identity.trial_key``: the resolved config, the data
manifest hash and the trainer results version; one driver per sweep, ``sweeplock.SweepLock``):
- fixed trials (grid/ladder) whose child run is ``finished``/``diverged``/``pruned`` are skipped; unfinished
  ones run again and the trainer resumes from its checkpoint in ``<workdir>/<sweep>/<trial key>``; the trial
  finds its existing MLflow child run by key and continues it (no second run, no duplicated steps);
- search groups (one Optuna TPE search per study x budget x seed) tag their runs ``search_group`` and
  ``group_key`` (``identity.group_key``); only runs whose group key matches count. On a re-run, done points
  are replayed to ``OptunaSearch`` as ``points_to_evaluate`` + ``evaluated_rewards``
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
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import RunConfig
from windtunnel.orchestrator.expand import trial_flops
from windtunnel.orchestrator.raycluster import (
    TUNE_ENV,
    StorePoller,
    check_cluster_fits,
    connect_cluster,
    ray_client_mode,
)
from windtunnel.orchestrator.resume import SearchPlan, belongs, plan_work, reuse_lines, trial_item
from windtunnel.orchestrator.spec import Plan, SearchGroup, SweepSpec


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
    run_ids: set[str] = field(default_factory=set)  # the store's runs of this spec's trials (the fit's)


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
    """Run (or resume) a sweep. See the module docstring for the resume rules.

    Before the tracking store is touched: the sweep folder is created and locked (``SweepLock``: a second
    driver of the sweep raises ``SweepBusy``), the store is checked writable and every trial's data prepared
    (``preflight.py``); each failure is one line and leaves the store unchanged.
    """
    from windtunnel.orchestrator.preflight import (
        check_local_resources,
        check_store_writable,
        make_sweep_dir,
        prepare_manifests,
    )
    from windtunnel.orchestrator.sweeplock import SweepLock

    t_start = time.perf_counter()
    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    sweep_dir = make_sweep_dir(spec.workdir, spec.name)
    with SweepLock(sweep_dir, spec.name):
        if not address:
            check_local_resources(spec)
        check_store_writable(uri)
        manifests = prepare_manifests([t.run_cfg for t in plan.trials] + [g.base_cfg for g in plan.searches])
        outcome = _run_locked(
            spec, plan, uri, sweep_dir, manifests, address, show_progress, log_flush_s, planned_s
        )
    outcome.wall_s = time.perf_counter() - t_start
    return outcome


def _run_locked(
    spec: SweepSpec,
    plan: Plan,
    uri: str,
    sweep_dir: Path,
    manifests: dict[str, str],
    address: str | None,
    show_progress: bool,
    log_flush_s: float,
    planned_s: float | None = None,
) -> SweepOutcome:
    from windtunnel.orchestrator.fitting import fit_at_end
    from windtunnel.orchestrator.progress import SweepProgress, make_callback
    from windtunnel.orchestrator.tracking import (
        effective_status,
        ensure_experiment,
        ensure_parent_run,
        open_client,
        trial_runs,
        with_retry,
    )
    from windtunnel.orchestrator.validation import check_target
    from windtunnel.orchestrator.validation_report import source_commit

    check_target(spec)  # a target the ladder cannot size fails now, not after the ladder
    if spec.target is not None:
        source_commit()  # the summary names the code the study started with
    client = open_client(uri)
    exp_id = ensure_experiment(client, spec.name)
    parent_id = ensure_parent_run(
        client,
        exp_id,
        spec.name,
        {"n_trials": plan.n_trials, "concurrency": spec.concurrency, "spec": spec.model_dump_json()},
    )
    existing = trial_runs(client, exp_id)
    work = plan_work(plan, existing, manifests)
    n_launch = len(work.fixed) + sum(s.remaining for s in work.searches)
    ctx = {
        "tracking_uri": uri,
        "experiment_id": exp_id,
        "parent_run_id": parent_id,
        "sweep": spec.name,
        "sweep_dir": str(sweep_dir),
        "cpus": spec.resources.cpus,
        "log_flush_s": log_flush_s,
    }
    progress = SweepProgress(
        spec.name, plan.n_trials, already_done=dict(work.done_counts), planned_s=planned_s
    )
    if n_launch:
        _run_tuners(
            spec, ctx, work.fixed, work.searches, address, sweep_dir, progress, show_progress, make_callback
        )
    with_retry(client.set_tag, parent_id, "status", "finished")
    n_skipped = sum(work.done_counts.values())
    outcome = SweepOutcome(spec.name, uri, parent_id, plan.n_trials, n_skipped, n_launch, 0.0)
    outcome.summary.extend(reuse_lines(work, existing, n_skipped))
    for run in trial_runs(client, exp_id).values():
        if belongs(run, work):
            outcome.run_ids.add(run.info.run_id)
            st = effective_status(run)
            outcome.counts[st] = outcome.counts.get(st, 0) + 1
    fit_at_end(spec, uri, parent_id, sweep_dir, outcome)
    if spec.adaptive is not None:  # propose -> run -> fit rounds; the laws are refitted with their runs
        _adaptive_phase(spec, ctx, outcome, address, sweep_dir, show_progress)
    if spec.target is not None:  # predict beyond the ladder, record, train the target, compare
        _target_phase(spec, ctx, outcome, address, sweep_dir, show_progress)
    # the parent run gets its MLflow end time only now (laws and figures are its artifacts); a re-run of the
    # sweep marks it RUNNING again (``ensure_parent_run``)
    with_retry(client.set_terminated, parent_id, "FINISHED")
    return outcome


def _target_phase(
    spec: SweepSpec,
    ctx: dict[str, Any],
    outcome: SweepOutcome,
    address: str | None,
    sweep_dir: Path,
    show_progress: bool,
) -> None:
    """The validation phase (``validation.run_target_phase``) with the target trials launched through the
    same Ray Tune / MLflow path as the ladder."""
    from windtunnel.orchestrator.progress import SweepProgress, make_callback
    from windtunnel.orchestrator.spec_target import TARGET_STUDY
    from windtunnel.orchestrator.validation import run_target_phase

    def launch(cfgs: list[RunConfig], keys: list[str], manifests: list[str], budget: float) -> None:
        items = [
            trial_item(c, TARGET_STUDY, "target", budget, m) for c, m in zip(cfgs, manifests, strict=True)
        ]
        target_progress = SweepProgress(f"{spec.name} target", len(items))
        _run_tuners(spec, ctx, items, [], address, sweep_dir, target_progress, show_progress, make_callback)

    run_target_phase(spec, ctx["tracking_uri"], ctx["parent_run_id"], sweep_dir, outcome, launch)


def _adaptive_phase(
    spec: SweepSpec,
    ctx: dict[str, Any],
    outcome: SweepOutcome,
    address: str | None,
    sweep_dir: Path,
    show: bool,
) -> None:
    """``adaptive.run_adaptive`` with its rounds launched like any trials; refit the laws when a round ran."""
    from windtunnel.orchestrator.adaptive import run_adaptive
    from windtunnel.orchestrator.fitting import fit_at_end
    from windtunnel.orchestrator.progress import SweepProgress, make_callback

    def launch_round(items: list[dict[str, Any]], r: int) -> None:
        progress = SweepProgress(f"{spec.name} adaptive round {r}", len(items))
        _run_tuners(spec, ctx, items, [], address, sweep_dir, progress, show, make_callback)

    uri, parent_id = ctx["tracking_uri"], ctx["parent_run_id"]
    if run_adaptive(spec, uri, parent_id, outcome, launch_round):
        fit_at_end(spec, uri, parent_id, sweep_dir, outcome)


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

    from windtunnel.orchestrator.groups import GroupedScheduler, GroupedSearcher, grouped_trainable

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _init_ray(ray, address)
    check_cluster_fits(spec, ray.cluster_resources())
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    active = [s for s in searches if s.remaining > 0]
    sources, schedulers, group_items = _group_sources(active)
    n_total = len(fixed) + sum(sp.remaining for sp in active)
    if n_total == 0:
        return
    scheduler = GroupedScheduler(schedulers)
    searcher = GroupedSearcher([trial_flops(RunConfig.from_dict(i["run_cfg"])) for i in fixed], sources)
    live, poller = _start_live(progress, ctx, address) if show_progress else (None, None)
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


def _init_ray(ray: Any, address: str | None) -> None:
    """Connect to the cluster at ``address``, or start a local Ray of our own (watched), unless one is up."""
    if ray.is_initialized():
        return
    if address:  # an existing cluster: its own dashboard/logging settings stand
        connect_cluster(ray, address)
        return
    # its own Ray: never a cluster that RAY_ADDRESS or an earlier `ray start` here points to
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    _watch_local_ray()


def _group_sources(active: list[SearchPlan]) -> tuple[list[Any], dict[int, Any], list[dict[str, Any]]]:
    """Per search group with trials left: its searcher source, its pruning scheduler and its trial item."""
    from windtunnel.orchestrator.groups import GroupSource

    sources, schedulers, group_items = [], {}, []
    for gi, sp in enumerate(active):
        g = sp.group
        group_items.append(trial_item(g.base_cfg, g.study, "search", g.budget, sp.manifest, g.key, sp.gkey))
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
    return sources, schedulers, group_items


def _start_live(progress: Any, ctx: dict[str, Any], address: str | None) -> tuple[Any, Any]:
    """The live progress table, and a store poller feeding it when Tune runs remotely (Ray client)."""
    from rich.live import Live

    live = Live(progress.table(), refresh_per_second=2, transient=False)
    live.start()
    poller = None
    if ray_client_mode(address):  # Tune runs remotely: its callbacks cannot reach this table
        poller = StorePoller(progress, live, ctx["tracking_uri"], ctx["experiment_id"])
        poller.start()
    return live, poller


_WATCHDOG: list[Any] = []


def _watch_local_ray() -> None:
    """One ``raywatch`` watchdog per driver process: its Ray stops with it, even after ``kill -9``."""
    from windtunnel.orchestrator.raywatch import start_watchdog

    if not _WATCHDOG or _WATCHDOG[0].poll() is not None:
        _WATCHDOG[:] = [start_watchdog()]


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
