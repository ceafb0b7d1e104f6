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

A run with ``points`` also reports the loss of a WSM merge or a WSD cooldown branch at chosen token fractions
(``trainer.points``: ``point_*`` metrics, ``TrainResult.points``); the run's own path is left unchanged.

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
from trainer.points import PointTaker, points_from_history
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
    points: list[dict[str, float]] = field(default_factory=list)  # trainer.points: one dict per point

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


class _Run:
    """One run's state, shared by the phases of ``train``: set-up, resume, steps, the end (merge, eval)."""

    def __init__(self, run_cfg: RunConfig, report: ReportFn | None, workdir: str | Path | None) -> None:
        cfg = self.cfg = run_cfg
        self.t_start = time.perf_counter()
        # torchrun: process groups of the layout; one process: a no-op
        par = self.par = init_parallel(cfg, resolve_device(cfg.device))
        self.device = par.device
        # only rank 0 reports; every rank trains, evaluates its shard and returns the result
        self.report = report if par.is_main else None
        seed_everything(cfg.seed)
        self.data = TokenData(prepare_data(cfg), cfg.model.seq_len, cfg.seed)
        model = build_model(cfg.model, cfg.precision, device=self.device)
        model.train()
        self.model = par.wrap_model(model, cfg)  # expert parallel: this rank keeps its experts
        self.optimizer = build_optimizer(self.model, cfg)
        self.schedule = LRSchedule.from_config(cfg)
        opt = cfg.optim
        global_micro = opt.micro_batch_size or opt.batch_size
        self.n_micro = opt.batch_size // global_micro
        self.micro = par.local_micro(global_micro)  # sequences per forward on this rank
        self.rows = par.batch_rows(opt.batch_size, global_micro)  # this rank's rows of each batch (None: all)
        self.wsm = cfg.schedule.kind == "wsm"
        interval = checkpoint_interval(cfg.steps, cfg.schedule.merge_window, cfg.schedule.checkpoint_interval)
        self.merge_steps = (
            merge_checkpoint_steps(cfg.steps, cfg.schedule.merge_window, interval) if self.wsm else []
        )
        self.points = PointTaker(cfg)  # points of one run at token fractions (trainer.points)
        self.save_merge_steps = set(self.merge_steps) | self.points.checkpoint_steps()
        self.val_batches = par.shard_batches(self.data.val_batches(cfg.eval_batches, global_micro))
        self.tmp = tempfile.TemporaryDirectory(prefix="wt-run-") if workdir is None else None
        self.ckpt = CheckpointManager(workdir if workdir is not None else self.tmp.name)  # type: ignore[union-attr]
        self.save_full = workdir is not None
        self.result = TrainResult(
            status="finished",
            steps=0,
            tokens=0,
            final_loss=math.nan,
            val_loss=math.nan,
            wall_s=0.0,
            n_params=count_params(cfg.model).as_dict(),
            flops_per_token=flops_per_token(cfg.model),
            data_manifest_hash=self.data.manifest_hash,
            config_hash=cfg.config_hash(),
        )
        self.step = 0
        self.spike = SpikeRule(cfg.diverge_factor)
        # MFU (trainer.hardware): peak and model FLOPs per token are fixed for the run; None: no peak known
        self.peak_tflops = resolve_peak_tflops(cfg, self.device)
        self.mfu_F = mfu_flops_per_token(cfg.model) if self.peak_tflops is not None else math.nan
        self.recent: list[float] = []
        self.last_val: float | None = None

    def restore(self) -> None:
        """Continue from the newest valid checkpoint (RNG states stay CPU tensors; rank 0 reads it)."""
        par, result = self.par, self.result
        state = par.broadcast_object(self.ckpt.load_latest(map_location="cpu") if par.is_main else None)
        if state is None:
            return
        extra = state["extra"]
        if extra.get("config_hash") != result.config_hash:
            raise ValueError(
                f"{self.ckpt.ckpt_dir}: checkpoint belongs to config {extra.get('config_hash')}, "
                f"not {result.config_hash}; use another workdir or resume=False"
            )
        self.step = par.restore_training_state(state, self.model, self.optimizer)
        if "loss_ema" in extra:  # a checkpoint without the EMA state: the rule restarts here
            self.spike.best, self.spike.ema = extra["best_loss"], extra["loss_ema"]
        self.recent = list(extra["recent"])
        result.history = [(s, dict(m)) for s, m in extra["history"]]
        result.resumed_from = self.step

    def emit(self, s: int, metrics: dict[str, float]) -> None:
        self.result.history.append((s, metrics))
        if self.report is not None:
            self.report(s, metrics)

    def save(self, s: int) -> None:
        extra = {
            "config_hash": self.result.config_hash,
            "best_loss": self.spike.best,
            "loss_ema": self.spike.ema,
            "recent": self.recent,
            "history": self.result.history,
            "schedule": asdict(self.schedule),
        }
        state = self.par.training_state(self.model, self.optimizer, s, extra)  # gathers experts: collective
        if self.par.is_main:
            self.ckpt.save(s, state)

    def evaluate(self) -> float:
        (val,) = self.par.mean(evaluate(self.model, self.val_batches, self.device, self.cfg.precision.dtype))
        return val

    def forward_backward(self, monitor: bool) -> tuple[float, float, dict[str, Any]]:
        """Gradients of step ``self.step``'s global batch (items 1-2 of the module docstring); returns the
        batch's LM loss and total loss (averaged over ranks) and the last micro-batch's model metrics."""
        cfg, model = self.cfg, self.model
        x_BT, y_BT = self.data.batch(self.step, cfg.optim.batch_size, rows=self.rows)
        x_BT, y_BT = x_BT.to(self.device, non_blocking=True), y_BT.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        if monitor:  # FP8 safeguard sampling on this step's forward/backward only
            set_fp8_monitor(model, True)
        lm_sum, loss_sum, out_metrics = 0.0, 0.0, {}
        for i in range(self.n_micro):
            sl = slice(i * self.micro, (i + 1) * self.micro)
            with _autocast(self.device, cfg.precision.dtype):
                out = model(x_BT[sl], y_BT[sl])
            (out.loss / self.n_micro).backward()
            lm_sum += float(out.lm_loss.detach())
            loss_sum += float(out.loss.detach())
            out_metrics = out.metrics
        loss, loss_sum = self.par.mean(lm_sum / self.n_micro, loss_sum)  # the global batch's, on every rank
        return loss, loss_sum, out_metrics

    def update(self) -> float:
        """Clip, AdamW step and expert-bias update (item 3 of the module docstring); returns the grad norm."""
        opt, model = self.cfg.optim, self.model
        max_norm = opt.grad_clip if opt.grad_clip > 0 else math.inf
        grad_norm = self.par.clip_grad_norm_(model, max_norm)  # averages gradients over dp ranks first
        self.optimizer.step()
        self.par.sync_expert_loads(model)  # global expert loads: identical bias updates on every rank
        model.update_expert_bias()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return grad_norm

    def log_metrics(self, loss: float, lr: float, grad_norm: float, dt: float, out: dict[str, Any]) -> dict:
        """The metrics of a logged step (every ``log_interval``, the last, and a diverged one)."""
        cfg, batch_tokens = self.cfg, self.cfg.batch_tokens
        metrics: dict[str, float] = {k: float(v) for k, v in out.items() if k != "lm_loss"}
        metrics.update(
            loss=loss,
            lr=lr,
            tokens=float(self.step * batch_tokens),
            grad_norm=grad_norm,
            step_time_s=dt,
            tokens_per_s=batch_tokens / dt,
        )
        if self.peak_tflops is not None:  # MFU of one GPU: global tokens/s over world x peak
            metrics["mfu"] = mfu(batch_tokens / dt, self.mfu_F, self.peak_tflops, self.par.world_size)
        if cfg.model.moe is not None:
            metrics.update(self.model.moe_balance())
        return metrics

    def train_step(self) -> bool:
        """One optimizer step (items 1-4 of the module docstring), its merge checkpoint, evaluation,
        checkpoint and report; False when the run diverged."""
        cfg, total_steps, result = self.cfg, self.cfg.steps, self.result
        t0 = time.perf_counter()
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mon = cfg.precision.monitor_interval
        monitor = cfg.precision.dtype == "fp8" and mon > 0 and (self.step + 1) % mon == 0
        loss, loss_sum, out_metrics = self.forward_backward(monitor)
        if not (math.isfinite(loss) and math.isfinite(loss_sum)):
            result.status = "diverged"
            result.error = f"non-finite loss at step {self.step + 1}"
            self.emit(self.step + 1, {"loss": loss, "lr": lr})
            return False
        grad_norm = self.update()
        self.step += 1
        step, dt = self.step, time.perf_counter() - t0
        self.recent = (self.recent + [loss])[-cfg.log_interval :]
        best_before = self.spike.best
        diverged = self.spike.update(loss, armed=step > self.schedule.warmup_steps)
        metrics: dict[str, float] = {}
        if step % cfg.log_interval == 0 or step == total_steps or diverged:
            metrics = self.log_metrics(loss, lr, grad_norm, dt, out_metrics)
        if monitor:
            set_fp8_monitor(self.model, False)
            metrics.update(_fp8_stats(self.model, cfg))
        if diverged:
            result.status = "diverged"
            result.error = (
                f"loss (EMA) {self.spike.ema:.4g} > {cfg.diverge_factor} x best {best_before:.4g}"
                f" at step {step} (last batch {loss:.4g})"
            )
            self.emit(step, metrics)
            return False
        self.checkpoint_and_report(step, metrics)
        return True

    def checkpoint_and_report(self, step: int, metrics: dict[str, float]) -> None:
        """After a step: the WSM merge checkpoint, the evaluation, the full checkpoint and the report."""
        total_steps = self.cfg.steps
        if step in self.save_merge_steps:
            merge_state = self.par.full_model_state(self.model)
            if self.par.is_main:
                self.ckpt.save_merge(step, merge_state)
        do_eval = step % self.cfg.eval_interval == 0 or step == total_steps
        if do_eval:
            self.last_val = self.evaluate()
            # a WSM run's last val_loss is the merged model's, reported once after the merge
            metrics["val_loss_unmerged" if self.wsm and step == total_steps else "val_loss"] = self.last_val
            if step == total_steps and not self.wsm:
                metrics.update(self.points.final(self.last_val))
        metrics.update(self.points.at_step(self, step))  # a point below f = 1 at this step, if any
        if metrics:
            self.result.history.append((step, metrics))
        if do_eval and self.save_full:  # the checkpoint's history includes this step
            self.save(step)
        if metrics and self.report is not None:
            self.report(step, metrics)

    def merge(self) -> None:
        """A finished WSM run: merge its checkpoints, evaluate and save the merged model, report val_loss."""
        par, result, step = self.par, self.result, self.step
        # a corrupt merge checkpoint is left out, warned; rank 0 holds the files and merges
        paths = self.ckpt.valid_merge_paths(self.merge_steps) if par.is_main else []
        shape, ema = self.cfg.schedule.merge_shape, self.cfg.schedule.ema_decay
        merge = merge_checkpoint_files(paths, shape, ema) if paths else None
        merge, merged_steps = par.broadcast_object((merge, [step_of(p) for p in paths]))
        if merge is not None:
            merged, weights = merge
            par.load_full_model_state(self.model, merged)
            result.val_loss = self.evaluate()
            result.merged_steps = merged_steps
            if self.save_full and par.is_main:
                save_checkpoint(
                    self.ckpt.workdir / "merged.pt",
                    {"model": merged, "merged_steps": result.merged_steps, "merge_weights": weights},
                )
        self.emit(step, {"val_loss": result.val_loss, **self.points.final(result.val_loss)})

    def finish(self) -> TrainResult:
        """The result: final losses (the merged model's for WSM), status of a non-finite end, clean-up."""
        result, step = self.result, self.step
        result.steps = step
        result.tokens = step * self.cfg.batch_tokens
        result.final_loss = float(np.mean(self.recent)) if self.recent else math.nan
        if result.status == "finished":
            if self.last_val is None:  # resumed from a finished run's last checkpoint
                self.last_val = self.evaluate()
            result.val_loss = result.val_loss_unmerged = self.last_val
            if self.wsm:
                self.merge()
        if result.status == "finished" and not math.isfinite(result.val_loss):  # e.g. NaN weights at the end
            result.status = "diverged"
            result.error = f"non-finite validation loss ({result.val_loss}) after step {step}"
        result.checkpoint_warnings = list(self.ckpt.skipped)
        result.points = points_from_history(result.history)
        result.wall_s = time.perf_counter() - self.t_start
        if self.tmp is not None:
            self.tmp.cleanup()
        self.par.close()
        return result


def train(
    run_cfg: RunConfig,
    report: ReportFn | None = None,
    workdir: str | Path | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train one run (see the module docstring); checkpoints go to ``workdir`` when given."""
    run = _Run(run_cfg, report, workdir)
    if resume and run.save_full:
        run.restore()
    try:
        while run.step < run_cfg.steps and run.train_step():
            pass
    except Exception as err:  # a crash inside the loop is a failed run, not a crashed sweep
        run.result.status = "failed"
        run.result.error = f"{type(err).__name__}: {err}"
        warnings.warn(f"training failed at step {run.step}: {traceback.format_exc()}", stacklevel=2)
    return run.finish()
