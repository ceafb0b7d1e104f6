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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import RunConfig

DIVERGED_PENALTY = 1.0e3  # val_loss reported to the searcher for diverged runs (TPE only uses ranks)


def run_table_row(cfg: RunConfig, tokens: float, loss: float) -> dict[str, float]:
    """DESIGN.md run-table row: params = non-embedding active, m = FLOPs/token, compute = m*tokens."""
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
    h = cfg.config_hash()
    tags = {
        "sweep": ctx["sweep"],
        "config_hash": h,
        "family": cfg.model.family,
        "study": meta.get("study", ""),
        "kind": meta.get("kind", ""),
        "manifest_hash": ctx.get("manifest_hash", ""),
        "run_name": cfg.name,
        "run_config": cfg.model_dump_json(),  # the full RunConfig (RunConfig.model_validate_json)
    }
    if meta.get("search_group"):
        tags["search_group"] = str(meta["search_group"])
    if meta.get("budget") is not None:
        tags["budget"] = f"{meta['budget']:.6g}"
    return tags


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
    from windtunnel.orchestrator.tracking import TrialLogger, flatten

    h = cfg.config_hash()
    workdir = Path(ctx["sweep_dir"]) / h
    workdir.mkdir(parents=True, exist_ok=True)
    logger = TrialLogger(
        ctx["tracking_uri"],
        ctx["experiment_id"],
        ctx["parent_run_id"],
        trial_tags(cfg, meta, ctx),
        flatten(cfg.model_dump(mode="json")),
        flush_s=float(ctx.get("log_flush_s", 10.0)),
    )
    logger.start()
    if logger.existing_status in ("finished", "diverged", "pruned"):
        # a searcher proposed a point that is already done: report its stored outcome, do not re-run
        stored = logger.existing_metrics.get(
            "rt.loss", logger.existing_metrics.get("val_loss", DIVERGED_PENALTY)
        )
        if tune_report is not None:
            tune_report({"val_loss": float(stored), "progress": 1.0, "diverged": 0.0, "reused": 1.0})
        return None
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
    wall = time.perf_counter() - t0
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
        logger.client.log_batch(logger.run_id, metrics=_metrics(overhead))
        logger.finish("diverged", row, tags={"reason": str(reason)[:500]})
        if tune_report is not None:
            tune_report({"val_loss": DIVERGED_PENALTY, "progress": 1.0, "diverged": 1.0})
        return result
    row = run_table_row(cfg, result.tokens, float(result.val_loss))
    logger.client.log_batch(logger.run_id, metrics=_metrics(overhead))
    logger.finish("finished", row)
    if tune_report is not None:
        tune_report({"val_loss": float(result.val_loss), "progress": 1.0, "diverged": 0.0})
    return result


def _metrics(values: dict[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    return [Metric(k, float(v), ts, 0) for k, v in values.items()]


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
