"""The Ray Tune function trainable: one trial = one ``trainer.loop.train`` run, logged to MLflow.

``ray_trainable(config, ctx, items)`` is bound with ``tune.with_parameters``. ``config`` holds either
``{"idx": i}`` (a fixed trial: ``items[i]``) or the searched values ``{"lr": .., "batch_size": ..}`` applied
to ``items[0]`` (a search group's base config). ``execute_trial`` does the work and is usable without Ray.

Logging happens inside the trial, straight to the tracking store (``TrialLogger``: buffered ``log_batch``).
Tune gets a ``tune.report`` per trainer log step (``step``, ``tokens_seen``, ``progress``, ``loss``, and
``val_loss``: the latest evaluation, or the training loss before the first one); the final report carries the
run's final (merged-model) val_loss, which the searcher records.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import RunConfig

# val_loss reported to the searcher for diverged runs, and their reward on resume (TPE only uses ranks)
DIVERGED_PENALTY = 1.0e3


def run_table_row(cfg: RunConfig, tokens: float, loss: float) -> dict[str, float]:
    """Run-table row (docs/DESIGN.md "Contracts").

    params = non-embedding active, m = FLOPs/token, compute = m*tokens.
    """
    from trainer.flops import activation_ratio, count_params, flops_per_token, granularity

    counts = count_params(cfg.model)
    m = float(flops_per_token(cfg.model))
    row = {
        "params": float(counts.active_nonembed),
        "n_total": float(counts.total),
        "n_active": float(counts.active),
        "m": m,
        "tokens": float(tokens),
        "compute": m * float(tokens),
        "lr": float(cfg.optim.lr),
        "batch_tokens": float(cfg.batch_tokens),
        "loss": float(loss),
    }
    if cfg.model.moe is not None:
        row["act_ratio"] = float(activation_ratio(cfg.model))
        row["granularity"] = float(granularity(cfg.model))
    return row


def trial_tags(cfg: RunConfig, meta: dict[str, Any], ctx: dict[str, Any]) -> dict[str, str]:
    """The child run's tags; ``trial_key`` (``identity.trial_key``) is the identity a re-run matches."""
    from trainer.loop import RESULTS_VERSION
    from windtunnel.orchestrator.identity import trial_key

    manifest = _manifest(meta, ctx)
    tags = {
        "sweep": ctx["sweep"],
        "trial_key": trial_key(cfg, manifest),
        "config_hash": cfg.config_hash(),
        "trainer_results_version": str(RESULTS_VERSION),
        "family": cfg.model.family,
        "study": meta.get("study", ""),
        "kind": meta.get("kind", ""),
        "manifest_hash": manifest,
        "run_name": cfg.name,
        "run_config": cfg.model_dump_json(),  # the full RunConfig (RunConfig.model_validate_json)
    }
    if meta.get("search_group"):
        tags["search_group"] = str(meta["search_group"])
        tags["group_key"] = str(meta.get("group_key", ""))
    if meta.get("adaptive_round") is not None:
        tags["adaptive_round"] = str(meta["adaptive_round"])
    if meta.get("budget") is not None:
        tags["budget"] = f"{meta['budget']:.6g}"
    return tags


def _manifest(meta: dict[str, Any], ctx: dict[str, Any]) -> str:
    """The data manifest hash the driver prepared for this trial (``preflight.prepare_manifests``)."""
    return str(meta.get("manifest_hash", ctx.get("manifest_hash", "")))


def execute_trial(
    cfg: RunConfig,
    meta: dict[str, Any],
    ctx: dict[str, Any],
    tune_report: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """Run one trial: find/create its MLflow child run, train (resuming from the workdir), record the outcome.

    Returns the trainer's ``TrainResult``. Raises when the trainer crashes or reports ``failed`` (so Tune
    retries it); a diverged run is recorded with status ``diverged`` and returns normally (not retried).
    """
    from trainer.loop import train
    from windtunnel.flatten import flatten
    from windtunnel.orchestrator.tracking import RT_PREFIX, TrialLogger, with_retry

    tags = trial_tags(cfg, meta, ctx)
    h = tags["trial_key"]
    workdir = Path(ctx["sweep_dir"]) / h
    workdir.mkdir(parents=True, exist_ok=True)
    logger = TrialLogger(
        ctx["tracking_uri"],
        ctx["experiment_id"],
        ctx["parent_run_id"],
        tags,
        flatten(cfg.model_dump(mode="json")),
        flush_s=float(ctx.get("log_flush_s", 10.0)),
    )
    logger.start()
    if logger.existing_status in ("finished", "diverged", "pruned"):
        # a searcher proposed a point that is already done: report its stored outcome, do not re-run
        stored = logger.existing_metrics.get(
            RT_PREFIX + "loss", logger.existing_metrics.get("val_loss", DIVERGED_PENALTY)
        )
        if tune_report is not None:
            tune_report({"val_loss": float(stored), "progress": 1.0, "diverged": 0.0, "reused": 1.0})
        return None
    # the process running this attempt (the fault-injection tests find the Ray worker to kill by it)
    with_retry(logger.client.set_tag, logger.run_id, "pid", str(os.getpid()))
    record_node(logger.client, logger.run_id)  # which Ray node runs this attempt (retries append)
    report = _reporter(logger, cfg, tune_report)
    t0 = time.perf_counter()
    try:
        result = train(cfg, report=report, workdir=workdir, resume=True)
    except SystemExit:  # Tune stopped the trial: the driver tags pruned=1 if its scheduler decided so
        logger.finish(
            "stopped", tags={"reason": "stopped by Tune (pruned on intermediate val_loss if pruned=1)"}
        )
        raise
    except BaseException as err:
        logger.finish("failed", tags={"reason": f"{type(err).__name__}: {err}"[:500]})
        raise
    return _record_outcome(cfg, result, logger, time.perf_counter() - t0, h, tune_report)


def _record_outcome(
    cfg: RunConfig,
    result: Any,
    logger: Any,
    wall: float,
    h: str,
    tune_report: Callable[[dict[str, Any]], None] | None,
) -> Any:
    """Close the trial's run with the trainer's outcome (its run-table row when it has one) and tell Tune."""
    from windtunnel.orchestrator.tracking import RT_PREFIX
    from windtunnel.runtable import stored_point_metrics

    history = list(getattr(result, "history", []) or [])
    if history and logger.resumed:  # resumed after a crash: fill in steps lost with unflushed buffers
        logger.backfill(history)
    overhead = {
        "wt.log_seconds": logger.log_seconds,
        "wt.setup_seconds": logger.setup_seconds,
        "wt.train_wall_s": wall,
        "wt.log_calls": float(logger.n_calls),
    }
    status = str(result.status)
    if status == "failed":
        logger.finish(
            "failed", tags={"reason": str(getattr(result, "error", None) or "trainer failed")[:500]}
        )
        raise RuntimeError(f"trial {h}: trainer reported status 'failed'")
    if status == "diverged":
        row = run_table_row(cfg, result.tokens, float("nan"))
        reason = getattr(result, "error", None) or "loss diverged (NaN or above diverge_factor x best)"
        logger.finish(
            "diverged", row, tags={"reason": str(reason)[:500], **_resume_tags(result)}, extra=overhead
        )
        if tune_report is not None:
            tune_report({"val_loss": DIVERGED_PENALTY, "progress": 1.0, "diverged": 1.0})
        return result
    row = run_table_row(cfg, result.tokens, float(result.val_loss))
    points = stored_point_metrics(list(getattr(result, "points", []) or []))  # trainer.points, if any
    overhead.update({RT_PREFIX + k: v for k, v in points.items()})
    logger.finish("finished", row, tags=_resume_tags(result), extra=overhead)  # waits out a store outage
    if tune_report is not None:
        tune_report({"val_loss": float(result.val_loss), "progress": 1.0, "diverged": 0.0})
    return result


def _reporter(
    logger: Any, cfg: RunConfig, tune_report: Callable[[dict[str, Any]], None] | None
) -> Callable[[int, dict[str, float]], None]:
    """The trainer's report callback: log to the store; report to Tune, ``val_loss`` in every result."""
    total_tokens = cfg.steps * cfg.batch_tokens
    last_val: list[float | None] = [None]

    def report(step: int, metrics: dict[str, float]) -> None:
        logger.log(step, metrics)
        if tune_report is not None:
            out = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "val_loss"}
            out.update(step=step, tokens_seen=float(metrics.get("tokens", step * cfg.batch_tokens)))
            out["progress"] = out["tokens_seen"] / total_tokens
            out["mlflow_run_id"] = logger.run_id  # type: ignore[assignment]
            if "val_loss" in metrics:
                last_val[0] = float(metrics["val_loss"])
                # pruning decisions come on evaluations; a pruned trial's thread is not resumed, so the
                # store must already hold its metrics when Tune decides
                logger.flush()
            # every result carries val_loss (OptunaSearch and ASHA read it): the latest evaluation, or the
            # training loss before the first evaluation
            out["val_loss"] = last_val[0] if last_val[0] is not None else float(metrics.get("loss", math.nan))
            tune_report(out)

    return report


def record_node(client: Any, run_id: str) -> dict[str, str]:
    """Tag the child run with where this attempt runs and return the tags.

    ``ray_node_id`` (hex id of the Ray node, "" outside Ray) and ``hostname`` are this attempt's;
    ``ray_nodes`` lists ``node_id@hostname`` of every attempt, oldest first, comma-separated, so a trial
    retried on another node after its node died shows both.
    """
    import socket
    import sys

    from mlflow.entities import RunTag

    from windtunnel.orchestrator.tracking import with_retry

    ray = sys.modules.get("ray")  # only a Ray worker has Ray imported and initialised
    node_id = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""
    host = socket.gethostname()
    previous = with_retry(client.get_run, run_id).data.tags.get("ray_nodes", "")
    nodes = [n for n in previous.split(",") if n] + [f"{node_id or 'local'}@{host}"]
    tags = {"ray_node_id": node_id, "hostname": host, "ray_nodes": ",".join(nodes)[-5000:]}
    with_retry(client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return tags


def close_lost_run(tracking_uri: str, run_id: str, retries: int | None = None) -> bool:
    """Mark a trial's child run ``failed`` if it is still ``running`` after Tune gave up on the trial.

    An attempt whose Ray worker or node died could not close its run; when no retry is left (Tune calls the
    driver's ``on_trial_error``) the run would otherwise stay ``running`` after the sweep ended. A run the
    trial closed itself (finished, diverged, failed by the trainer) is left alone. ``failed`` runs are
    resumed (from their checkpoints) by the next ``windtunnel run`` of the sweep. Returns whether the run
    was changed.
    """
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    from windtunnel.orchestrator.tracking import with_retry

    client = MlflowClient(tracking_uri)
    run = with_retry(client.get_run, run_id)
    if run.data.tags.get("status", "running") != "running":
        return False
    used = "" if retries is None else f" ({retries})"
    reason = (
        "lost: its last attempt ended without closing its run (its Ray worker or node died, or the tracking "
        f"store was unreachable) and its retries{used} were used up; run the sweep again to resume it"
    )
    with_retry(client.log_batch, run_id, tags=[RunTag("status", "failed"), RunTag("reason", reason)])
    with_retry(client.set_terminated, run_id, "FAILED")
    return True


def _resume_tags(result: Any) -> dict[str, str]:
    """``resumed_from``: the checkpoint step the last attempt restarted from ("none": from scratch);
    ``checkpoint_warnings``: corrupt checkpoints it skipped, and why (absent when there were none)."""
    step = getattr(result, "resumed_from", None)
    tags = {"resumed_from": "none" if step is None else str(step)}
    warned = list(getattr(result, "checkpoint_warnings", []) or [])
    if warned:
        tags["checkpoint_warnings"] = " | ".join(warned)[:4000]
    return tags


def ray_trainable(config: dict[str, Any], ctx: dict[str, Any], items: list[dict[str, Any]]) -> None:
    """Tune function trainable (bind ``ctx`` and ``items`` with ``tune.with_parameters``)."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(ctx.get("cpus", 1))))
    if "idx" in config:
        item = items[int(config["idx"])]
        cfg = RunConfig.from_dict(item["run_cfg"])
    else:
        item = items[0]
        over: dict[str, Any] = {}
        if "lr" in config:
            over["optim.lr"] = float(config["lr"])
        if "batch_size" in config:
            over["optim.batch_size"] = int(config["batch_size"])
        cfg = RunConfig.from_dict(item["run_cfg"]).with_overrides(over)
        h = cfg.config_hash()
        cfg = cfg.model_copy(update={"name": f"{ctx['sweep']}-{item['study']}-{h[:8]}"})
    execute_trial(cfg, item, ctx, tune_report=tune.report)
