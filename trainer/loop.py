"""The training loop: ``train(run_cfg, report=None, workdir=None, resume=True) -> TrainResult``.

One optimizer step ``t`` (0-based; ``step = t + 1`` updates are complete after it):

1. LR from ``trainer.schedule.LRSchedule`` (WSM/WSD/cosine/constant).
2. The batch ``TokenData.batch(t, batch_size)`` (deterministic in (seed, t)) is split into
   ``batch_size / micro_batch_size`` micro-batches; each runs forward/backward on ``loss / n_micro``
   (gradient accumulation), under bf16 autocast on CUDA when ``precision.dtype`` is bf16/fp8, fp32 otherwise
   (always fp32 on the CPU).
3. Global-norm clipping to ``optim.grad_clip`` (0: off; the norm is reported either way), an AdamW update
   (β1, β2, ε, weight decay from ``optim``; **no weight decay on norms, biases and embeddings**: every
   parameter with ndim < 2 and every ``nn.Embedding`` weight is in the no-decay group; the untied output head
   is decayed), then ``model.update_expert_bias()`` (aux-loss-free balancing from the loads of this step).
4. Divergence: a non-finite loss, or (after warmup) a smoothed training loss (EMA, ``SPIKE_EMA_BETA``: a
   ~10-step window) above ``diverge_factor`` × the best smoothed loss so far, stops the run with status
   ``"diverged"``; so does a non-finite final validation loss (weights that went NaN in the last update, or a
   resume from a checkpoint of NaN weights). The rule compares smoothed losses because single batches are
   noisy: with 512-token batches of the default corpus one batch of near-verbatim text scored 1.34 and a
   normal batch 4.08 later flagged a healthy isoflop_cpu run as diverged under the per-batch rule.

Every ``eval_interval`` steps and at the end the validation loss (LM cross-entropy, mean over
``eval_batches`` fixed batches) is computed and, when a ``workdir`` is given, a full checkpoint is saved
(``trainer.checkpoint``). WSM runs also save model-only merge checkpoints at
``trainer.schedule.merge_checkpoint_steps`` and the run's ``val_loss`` is that of the merged model
θ̂ = Σ c_j θ_{n+j} (``val_loss_unmerged`` is the final model's). Each metric is reported once per step: at a
WSM run's last step the final model's evaluation is reported as ``val_loss_unmerged`` and ``val_loss`` comes
once, after the merge (the unmerged value when no merge checkpoint is left). ``resume=True`` restarts from
the newest valid checkpoint in ``workdir``; the loss curve equals an uninterrupted run's (bit-identical on
the CPU).

Under ``torchrun`` (several processes) the same loop runs data parallel, and expert parallel when
``parallel.ep > 1``: each rank trains its shard of the same global batch, gradients are averaged, expert
loads summed, only rank 0 reports and writes files (``trainer.distributed``, docs/PARALLEL.md).

The trainer never imports ray or mlflow.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.checkpoint import (
    CheckpointManager,
    save_checkpoint,
    step_of,
)
from trainer.config import RunConfig
from trainer.data import TokenData, prepare_data
from trainer.distributed import init_parallel
from trainer.flops import count_params, flops_per_token
from trainer.fp8 import fp8_safeguard_stats, set_fp8_monitor
from trainer.hardware import mfu, mfu_flops_per_token, resolve_peak_tflops
from trainer.merge import merge_checkpoint_files
from trainer.model import build_model
from trainer.schedule import LRSchedule, checkpoint_interval, merge_checkpoint_steps

ReportFn = Callable[[int, dict[str, float]], None]

# Raise whenever a trainer change alters what a given config trains to (its loss curve or final loss): the
# orchestrator's trial identity includes it, so results of an older trainer are not reused.
RESULTS_VERSION = 1


@dataclass
class TrainResult:
    """Outcome of one run; ``summary()`` is everything but the loss curve (a run-table row's raw material)."""

    status: str  # "finished" | "diverged" | "failed"
    steps: int
    tokens: int
    final_loss: float
    val_loss: float
    wall_s: float
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    val_loss_unmerged: float = math.nan
    n_params: dict[str, int] = field(default_factory=dict)
    flops_per_token: float = math.nan
    data_manifest_hash: str = ""
    config_hash: str = ""
    merged_steps: list[int] = field(default_factory=list)
    resumed_from: int | None = None
    error: str | None = None
    checkpoint_warnings: list[str] = field(default_factory=list)  # corrupt checkpoints skipped, and why

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        return d


SPIKE_EMA_BETA = 0.9  # smoothing of the training loss for the spike rule (module docstring, item 4)


@dataclass
class SpikeRule:
    """The loss-spike divergence rule (module docstring, item 4): EMA_t = β·EMA_{t−1} + (1−β)·loss_t
    (β = ``SPIKE_EMA_BETA``, EMA_1 = loss_1); diverged when armed (past warmup) and
    EMA_t > factor × min_{s<t} EMA_s.
    ``ema`` and ``best`` travel in checkpoints, so a resumed run applies the same rule."""

    factor: float
    ema: float = math.nan
    best: float = math.inf

    def update(self, loss: float, armed: bool) -> bool:
        b = SPIKE_EMA_BETA
        self.ema = loss if math.isnan(self.ema) else b * self.ema + (1 - b) * loss
        diverged = armed and self.ema > self.factor * self.best
        self.best = min(self.best, self.ema)
        return diverged


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices (ndim >= 2) except embeddings; none on norms, biases, embeddings."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or id(p) in embedding_ids else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, run_cfg: RunConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` with the config's betas/eps/weight decay; the fused kernel where it runs
    (CPU and CUDA: one kernel over all tensors, ~6x faster than the per-tensor loop on the CPU), else the
    default implementation. Fused and unfused AdamW compute the same update (Loshchilov & Hutter 2019,
    "Decoupled Weight Decay Regularization", Alg. 2).
    """
    opt = run_cfg.optim
    groups = param_groups(model, opt.weight_decay)
    kwargs: dict[str, Any] = {"lr": opt.lr, "betas": (opt.beta1, opt.beta2), "eps": opt.eps}
    device_types = {p.device.type for g in groups for p in g["params"]}
    if device_types <= {"cpu", "cuda"}:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # a dtype/device the fused kernel does not take
            pass
    return torch.optim.AdamW(groups, **kwargs)


def _autocast(device: torch.device, dtype: str) -> Any:
    if device.type == "cuda" and dtype in ("bf16", "fp8"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, dtype: str
) -> float:
    """Mean next-token cross-entropy (``ModelOutput.lm_loss``) over fixed validation batches."""
    was_training = model.training
    model.eval()
    total = 0.0
    for x_BT, y_BT in batches:
        with _autocast(device, dtype):
            out = model(x_BT.to(device), y_BT.to(device))
        total += float(out.lm_loss)
    model.train(was_training)
    return total / max(len(batches), 1)


def _fp8_stats(model: nn.Module, run_cfg: RunConfig) -> dict[str, float]:
    """``trainer.fp8.fp8_safeguard_stats`` of the last sampled step."""
    prec = run_cfg.precision
    stats = fp8_safeguard_stats(model, underflow_alert=prec.underflow_alert, cosine_alert=prec.cosine_alert)
    return {k: float(v) for k, v in stats.items()}


def train(
    run_cfg: RunConfig,
    report: ReportFn | None = None,
    workdir: str | Path | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train one run (see the module docstring); checkpoints go to ``workdir`` when given."""
    t_start = time.perf_counter()
    cfg = run_cfg
    device = resolve_device(cfg.device)
    par = init_parallel(cfg, device)  # torchrun: process groups of the layout; one process: a no-op
    device = par.device
    if not par.is_main:  # only rank 0 reports; every rank trains, evaluates its shard and returns the result
        report = None
    seed_everything(cfg.seed)

    artifacts = prepare_data(cfg)
    data = TokenData(artifacts, cfg.model.seq_len, cfg.seed)

    model = build_model(cfg.model, cfg.precision, device=device)
    model.train()
    model = par.wrap_model(model, cfg)  # expert parallel: this rank keeps its experts
    opt = cfg.optim
    optimizer = build_optimizer(model, cfg)
    schedule = LRSchedule.from_config(cfg)
    total_steps = cfg.steps
    global_micro = opt.micro_batch_size or opt.batch_size
    n_micro = opt.batch_size // global_micro
    micro = par.local_micro(global_micro)  # sequences per forward on this rank
    rows = par.batch_rows(opt.batch_size, global_micro)  # this rank's rows of each global batch (None: all)
    is_moe = cfg.model.moe is not None
    wsm = cfg.schedule.kind == "wsm"
    interval = checkpoint_interval(total_steps, cfg.schedule.merge_window, cfg.schedule.checkpoint_interval)
    merge_steps = merge_checkpoint_steps(total_steps, cfg.schedule.merge_window, interval) if wsm else []
    val_batches = par.shard_batches(data.val_batches(cfg.eval_batches, global_micro))
    counts = count_params(cfg.model)

    tmp = tempfile.TemporaryDirectory(prefix="wt-run-") if workdir is None else None
    ckpt = CheckpointManager(workdir if workdir is not None else tmp.name)  # type: ignore[union-attr]
    save_full = workdir is not None

    result = TrainResult(
        status="finished",
        steps=0,
        tokens=0,
        final_loss=math.nan,
        val_loss=math.nan,
        wall_s=0.0,
        n_params=counts.as_dict(),
        flops_per_token=flops_per_token(cfg.model),
        data_manifest_hash=data.manifest_hash,
        config_hash=cfg.config_hash(),
    )
    step = 0
    spike = SpikeRule(cfg.diverge_factor)
    # MFU (trainer.hardware): peak and model FLOPs per token are fixed for the run; None: no peak known
    peak_tflops = resolve_peak_tflops(cfg, device)
    mfu_F = mfu_flops_per_token(cfg.model) if peak_tflops is not None else math.nan
    recent: list[float] = []
    if resume and save_full:
        # RNG states must stay CPU tensors; rank 0 reads, every rank gets it (no shared disk needed)
        state = par.broadcast_object(ckpt.load_latest(map_location="cpu") if par.is_main else None)
        if state is not None:
            extra = state["extra"]
            if extra.get("config_hash") != result.config_hash:
                raise ValueError(
                    f"{ckpt.ckpt_dir}: checkpoint belongs to config {extra.get('config_hash')}, "
                    f"not {result.config_hash}; use another workdir or resume=False"
                )
            step = par.restore_training_state(state, model, optimizer)
            if "loss_ema" in extra:  # a checkpoint from before the EMA rule: the rule restarts here
                spike.best, spike.ema = extra["best_loss"], extra["loss_ema"]
            recent = list(extra["recent"])
            result.history = [(s, dict(m)) for s, m in extra["history"]]
            result.resumed_from = step

    def emit(s: int, metrics: dict[str, float]) -> None:
        result.history.append((s, metrics))
        if report is not None:
            report(s, metrics)

    def save(s: int) -> None:
        extra = {
            "config_hash": result.config_hash,
            "best_loss": spike.best,
            "loss_ema": spike.ema,
            "recent": recent,
            "history": result.history,
            "schedule": asdict(schedule),
        }
        state = par.training_state(model, optimizer, s, extra)  # experts gathered: a collective
        if par.is_main:
            ckpt.save(s, state)

    last_val: float | None = None
    try:
        while step < total_steps:
            t0 = time.perf_counter()
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x_BT, y_BT = data.batch(step, opt.batch_size, rows=rows)
            x_BT, y_BT = x_BT.to(device, non_blocking=True), y_BT.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            mon = cfg.precision.monitor_interval
            monitor = cfg.precision.dtype == "fp8" and mon > 0 and (step + 1) % mon == 0
            if monitor:  # FP8 safeguard sampling on this step's forward/backward only
                set_fp8_monitor(model, True)
            lm_sum, loss_sum, out_metrics = 0.0, 0.0, {}
            for i in range(n_micro):
                sl = slice(i * micro, (i + 1) * micro)
                with _autocast(device, cfg.precision.dtype):
                    out = model(x_BT[sl], y_BT[sl])
                (out.loss / n_micro).backward()
                lm_sum += float(out.lm_loss.detach())
                loss_sum += float(out.loss.detach())
                out_metrics = out.metrics
            loss = lm_sum / n_micro
            loss, loss_sum = par.mean(loss, loss_sum)  # the global batch's loss on every rank
            if not (math.isfinite(loss) and math.isfinite(loss_sum)):
                result.status = "diverged"
                result.error = f"non-finite loss at step {step + 1}"
                emit(step + 1, {"loss": loss, "lr": lr})
                break
            max_norm = opt.grad_clip if opt.grad_clip > 0 else math.inf
            grad_norm = par.clip_grad_norm_(model, max_norm)  # averages gradients over dp ranks first
            optimizer.step()
            par.sync_expert_loads(model)  # global expert loads: identical bias updates on every rank
            model.update_expert_bias()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step += 1
            dt = time.perf_counter() - t0
            recent = (recent + [loss])[-cfg.log_interval :]
            best_before = spike.best
            diverged = spike.update(loss, armed=step > schedule.warmup_steps)

            metrics: dict[str, float] = {}
            if step % cfg.log_interval == 0 or step == total_steps or diverged:
                metrics.update({k: float(v) for k, v in out_metrics.items() if k != "lm_loss"})
                metrics.update(
                    loss=loss,
                    lr=lr,
                    tokens=float(step * cfg.batch_tokens),
                    grad_norm=grad_norm,
                    step_time_s=dt,
                    tokens_per_s=cfg.batch_tokens / dt,
                )
                if peak_tflops is not None:  # MFU of one GPU: global tokens/s over world x peak
                    metrics["mfu"] = mfu(cfg.batch_tokens / dt, mfu_F, peak_tflops, par.world_size)
                if is_moe:
                    metrics.update(model.moe_balance())
            if monitor:
                set_fp8_monitor(model, False)
                metrics.update(_fp8_stats(model, cfg))
            if diverged:
                result.status = "diverged"
                result.error = (
                    f"loss (EMA) {spike.ema:.4g} > {cfg.diverge_factor} x best {best_before:.4g}"
                    f" at step {step} (last batch {loss:.4g})"
                )
                emit(step, metrics)
                break
            if wsm and step in merge_steps:
                merge_state = par.full_model_state(model)
                if par.is_main:
                    ckpt.save_merge(step, merge_state)
            do_eval = step % cfg.eval_interval == 0 or step == total_steps
            if do_eval:
                (last_val,) = par.mean(evaluate(model, val_batches, device, cfg.precision.dtype))
                # a WSM run's last val_loss is the merged model's, reported once after the merge
                metrics["val_loss_unmerged" if wsm and step == total_steps else "val_loss"] = last_val
            if metrics:
                result.history.append((step, metrics))
            if do_eval and save_full:  # the checkpoint's history includes this step
                save(step)
            if metrics and report is not None:
                report(step, metrics)
    except Exception as err:  # a crash inside the loop is a failed run, not a crashed sweep
        result.status = "failed"
        result.error = f"{type(err).__name__}: {err}"
        warnings.warn(f"training failed at step {step}: {traceback.format_exc()}", stacklevel=2)

    result.steps = step
    result.tokens = step * cfg.batch_tokens
    result.final_loss = float(np.mean(recent)) if recent else math.nan
    if result.status == "finished":
        if last_val is None:  # resumed from a finished run's last checkpoint
            (last_val,) = par.mean(evaluate(model, val_batches, device, cfg.precision.dtype))
        result.val_loss = result.val_loss_unmerged = last_val
        if wsm:
            # a corrupt merge checkpoint is left out, warned; rank 0 holds the files and merges
            paths = ckpt.valid_merge_paths(merge_steps) if par.is_main else []
            shape, ema = cfg.schedule.merge_shape, cfg.schedule.ema_decay
            merge = merge_checkpoint_files(paths, shape, ema) if paths else None
            merge, merged_steps = par.broadcast_object((merge, [step_of(p) for p in paths]))
            if merge is not None:
                merged, weights = merge
                par.load_full_model_state(model, merged)
                (result.val_loss,) = par.mean(evaluate(model, val_batches, device, cfg.precision.dtype))
                result.merged_steps = merged_steps
                if save_full and par.is_main:
                    save_checkpoint(
                        ckpt.workdir / "merged.pt",
                        {"model": merged, "merged_steps": result.merged_steps, "merge_weights": weights},
                    )
            emit(step, {"val_loss": result.val_loss})
    if result.status == "finished" and not math.isfinite(result.val_loss):  # e.g. NaN weights at the end
        result.status = "diverged"
        result.error = f"non-finite validation loss ({result.val_loss}) after step {step}"
    result.checkpoint_warnings = list(ckpt.skipped)
    result.wall_s = time.perf_counter() - t_start
    if tmp is not None:
        tmp.cleanup()
    par.close()
    return result
