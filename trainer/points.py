"""Many (N, D, loss) points from one run: WSM merges or WSD cooldown branches at token fractions f_k.

A run of T updates with ``points: {at_fractions: [f_1, ..., f_K], mode: ...}``
(``trainer.config.PointsConfig``) takes point k after s_k = round(f_k·T) updates, i.e. at D_k = s_k·B
tokens (B = tokens per batch):

- ``wsm`` (WSM, Tian et al., arXiv 2507.17634, Sec. 3): the model at D_k is the merge θ̂_k = Σ_j c_j θ_{n+j}
  of the constant-LR checkpoints that a WSM run of s_k updates would merge: ``merge_checkpoint_steps(s_k,
  merge_window, checkpoint_interval(s_k, ...))`` with the run's merge shape. The parent saves the union of
  every point's checkpoint steps; merging costs no training.
- ``wsd`` (warmup-stable-decay, Hägele et al. 2024, arXiv 2405.18392, Sec. 3): from the state at s_k (model
  and AdamW moments) a branch trains b_k = round(r·s_k) more updates on the batches s_k .. s_k+b_k-1 with
  η_t = η·(m + (1-m)·f(x)), x = (t - s_k + 1)/b_k (the run's decay shape f and min_lr_ratio m), is
  evaluated and thrown away; the parent continues from the saved state, unchanged. r = ``branch_fraction``,
  or d/(1-d) (d = ``schedule.decay_fraction``) so a branch decays over the share d of its tokens, as the
  run's own final decay does. The branch trains b_k·B extra tokens. A WSD point inside the warmup is refused.
- both modes: a point's warmup is the parent's W updates (``ScheduleConfig.warmup_updates``), so it equals
  the warmup of a run trained to D_k alone only when W is given in updates (``schedule.warmup_steps``).

The point at f = 1 is the run itself: its ``val_loss`` (the merged model's for WSM, the decayed one's for
WSD), with no extra training. Each point's loss is the mean LM loss over the run's own validation batches.

Each point is reported through the trainer's report callback at the parent step s_k (s_K = T for f = 1) as
``point_fraction``, ``point_step``, ``point_at_tokens`` (D_k), ``point_tokens`` (D_k + b_k·B: the tokens the
point's model was trained on), ``point_val_loss``, ``point_flops`` = M·point_tokens and ``point_extra_flops``
= M·b_k·B (M = ``trainer.flops.flops_per_token``, the run table's m; the branch's own training cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from trainer.config import RunConfig
from trainer.flops import flops_per_token
from trainer.merge import merge_checkpoint_files
from trainer.schedule import LRSchedule, checkpoint_interval, merge_checkpoint_steps

if TYPE_CHECKING:
    from trainer.loop import _Run

POINT_KEYS = (
    "point_fraction",
    "point_step",
    "point_at_tokens",
    "point_tokens",
    "point_val_loss",
    "point_flops",
    "point_extra_flops",
)


@dataclass(frozen=True)
class PointSpec:
    """Point k: taken after ``step`` = s_k parent updates; ``branch_steps`` = b_k (WSD, f < 1; else 0);
    ``merge_steps``: the checkpoints its WSM merge averages (empty for WSD)."""

    fraction: float
    step: int
    branch_steps: int = 0
    merge_steps: tuple[int, ...] = ()


def branch_ratio(cfg: RunConfig) -> float:
    """r = b_k/s_k of a WSD branch: ``points.branch_fraction``, else d/(1-d) with d =
    ``schedule.decay_fraction``."""
    pts = cfg.points
    if pts is not None and pts.branch_fraction is not None:
        return pts.branch_fraction
    d = cfg.schedule.decay_fraction
    return d / (1.0 - d) if 0 < d < 1 else math.nan


def _merge_steps(cfg: RunConfig, step: int) -> tuple[int, ...]:
    """The checkpoint steps a WSM run of ``step`` updates merges (``trainer.schedule``)."""
    sched = cfg.schedule
    interval = checkpoint_interval(step, sched.merge_window, sched.checkpoint_interval)
    return tuple(merge_checkpoint_steps(step, sched.merge_window, interval))


def point_specs(cfg: RunConfig) -> list[PointSpec]:
    """Every point of ``cfg`` in ascending order (none when ``cfg.points`` is unset); see the module
    docstring for s_k, b_k and the merged steps. Assumes ``check_points`` passed."""
    if cfg.points is None:
        return []
    T, wsd = cfg.steps, cfg.points.mode == "wsd"
    specs = []
    for f in cfg.points.at_fractions:
        s_k = int(round(f * T))
        if wsd:
            b_k = max(1, int(round(branch_ratio(cfg) * s_k))) if s_k < T else 0
            specs.append(PointSpec(f, s_k, branch_steps=b_k))
        else:
            specs.append(PointSpec(f, s_k, merge_steps=_merge_steps(cfg, s_k)))
    return specs


def check_points(cfg: RunConfig) -> None:
    """Refuse a ``points`` block this run cannot honour; ValueError naming the field (one line)."""
    pts = cfg.points
    if pts is None:
        return
    if cfg.schedule.kind != pts.mode:
        raise ValueError(f"points.mode: {pts.mode} needs schedule.kind {pts.mode} (got {cfg.schedule.kind})")
    T = cfg.steps
    steps = [int(round(f * T)) for f in pts.at_fractions]
    for f, s in zip(pts.at_fractions, steps, strict=True):
        if s < 1:
            raise ValueError(f"points.at_fractions: {f} is less than one update of this run's {T} updates")
    for i in range(1, len(steps)):
        if steps[i] == steps[i - 1]:
            a, b = pts.at_fractions[i - 1], pts.at_fractions[i]
            raise ValueError(f"points.at_fractions: {a} and {b} fall on the same update ({steps[i]} of {T})")
    if pts.mode == "wsd":
        if not math.isfinite(branch_ratio(cfg)):
            raise ValueError("points.branch_fraction: needed when schedule.decay_fraction is 0 or 1")
        sched = LRSchedule.from_config(cfg)
        early = [f for f, s in zip(pts.at_fractions, steps, strict=True) if s <= sched.warmup_steps]
        if early:
            raise ValueError(
                f"points.at_fractions: {early[0]} lies in the run's warmup ({sched.warmup_steps} updates); "
                "a WSD branch decays from the peak LR"
            )
        stable_end = T - sched.decay_steps
        late = [f for f, s in zip(pts.at_fractions, steps, strict=True) if stable_end < s < T]
        if late:
            raise ValueError(
                f"points.at_fractions: {late[0]} lies in the run's decay (after update {stable_end} of {T}); "
                "WSD points below 1 come from the stable phase"
            )


def extra_tokens(cfg: RunConfig) -> int:
    """Tokens the WSD branches train besides the run itself: Σ_k b_k·B (0 for WSM and without points)."""
    return sum(p.branch_steps for p in point_specs(cfg)) * cfg.batch_tokens


def point_metrics(cfg: RunConfig, p: PointSpec, loss: float) -> dict[str, float]:
    """The report of point ``p`` with loss ``loss`` (keys ``POINT_KEYS``; FLOPs by ``trainer.flops``)."""
    M, B = flops_per_token(cfg.model), cfg.batch_tokens
    at, extra = p.step * B, p.branch_steps * B
    return {
        "point_fraction": float(p.fraction),
        "point_step": float(p.step),
        "point_at_tokens": float(at),
        "point_tokens": float(at + extra),
        "point_val_loss": float(loss),
        "point_flops": float(M * (at + extra)),
        "point_extra_flops": float(M * extra),
    }


def points_from_history(history: list[tuple[int, dict[str, float]]]) -> list[dict[str, float]]:
    """The points a run reported, in order (one dict of ``POINT_KEYS`` each)."""
    return [{k: float(m[k]) for k in POINT_KEYS} for _, m in history if "point_val_loss" in m]


def _snapshot(run: _Run) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Copies of this rank's parameters and buffers, and of the optimizer state."""
    tensors = {f"p:{n}": p.detach().clone() for n, p in run.model.named_parameters()}
    tensors.update({f"b:{n}": b.detach().clone() for n, b in run.model.named_buffers()})
    opt = run.optimizer.state_dict()
    opt_copy = {
        "state": {i: {k: v.clone() for k, v in s.items()} for i, s in opt["state"].items()},
        "param_groups": [dict(g) for g in opt["param_groups"]],
    }
    return tensors, opt_copy


@torch.no_grad()
def _restore(run: _Run, tensors: dict[str, torch.Tensor], opt: dict[str, Any] | None) -> None:
    for n, p in run.model.named_parameters():
        p.copy_(tensors[f"p:{n}"])
    for n, b in run.model.named_buffers():
        b.copy_(tensors[f"b:{n}"])
    if opt is not None:
        run.optimizer.load_state_dict(opt)


class PointTaker:
    """Takes a run's points (module docstring) at their parent steps; used by ``trainer.loop``."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.specs = {p.step: p for p in point_specs(cfg)}

    def checkpoint_steps(self) -> set[int]:
        """WSM checkpoint steps the points below f = 1 need saved."""
        return {s for p in self.specs.values() if p.step < self.cfg.steps for s in p.merge_steps}

    def at_step(self, run: _Run, step: int) -> dict[str, float]:
        """The report of the point at parent step ``step`` below T (empty when there is none); the run's
        model and optimizer are as they were before."""
        p = self.specs.get(step)
        if p is None or step >= self.cfg.steps:
            return {}
        loss = self._branch_loss(run, p) if p.branch_steps else self._merge_loss(run, p)
        return point_metrics(self.cfg, p, loss)

    def final(self, val_loss: float) -> dict[str, float]:
        """The report of the point at f = 1 (the run's own ``val_loss``), if the run asked for it."""
        p = self.specs.get(self.cfg.steps)
        return {} if p is None else point_metrics(self.cfg, p, val_loss)

    def _merge_loss(self, run: _Run, p: PointSpec) -> float:
        """Loss of the WSM merge of ``p.merge_steps`` (rank 0 merges, every rank evaluates)."""
        par = run.par
        paths = run.ckpt.valid_merge_paths(list(p.merge_steps)) if par.is_main else []
        sched = self.cfg.schedule
        merged = merge_checkpoint_files(paths, sched.merge_shape, sched.ema_decay)[0] if paths else None
        merged = par.broadcast_object(merged)
        if merged is None:
            return math.nan
        saved, _ = _snapshot(run)
        par.load_full_model_state(run.model, merged)
        try:
            return run.evaluate()
        finally:
            _restore(run, saved, None)

    def _branch_loss(self, run: _Run, p: PointSpec) -> float:
        """Loss after a WSD cooldown branch of ``p.branch_steps`` updates from the current state."""
        s_k, b_k = p.step, p.branch_steps
        base = run.schedule
        lr_at = LRSchedule(
            kind="wsd",
            total_steps=s_k + b_k,
            peak_lr=base.peak_lr,
            warmup_steps=base.warmup_steps,
            decay_steps=b_k,
            decay_shape=base.decay_shape,
            min_lr_ratio=base.min_lr_ratio,
        )
        saved, opt = _snapshot(run)
        try:
            for t in range(s_k, s_k + b_k):
                run.step = t  # forward_backward reads the batch of update t
                for group in run.optimizer.param_groups:
                    group["lr"] = lr_at(t)
                run.forward_backward(False)
                run.update()
            return run.evaluate()
        finally:
            run.step = s_k
            _restore(run, saved, opt)
