"""Learning-rate schedules (WSM, WSD, cosine, constant) and WSM checkpoint-merge weights.

Step convention: ``t`` is the 0-based index of an optimizer update, ``t = 0 .. T-1`` where ``T`` is the
run's total number of updates (``RunConfig.steps``). The LR returned for ``t`` is used by update ``t``.

Schedules (``η`` is the peak LR, ``W`` the warmup steps, ``m`` = ``min_lr_ratio``). ``W`` is
``schedule.warmup_steps`` when set (absolute, the same for runs of any length: a config with ``W >= T`` is
refused, never clamped), else ``round(warmup_fraction·T)`` clamped to ``T - 1``
(``ScheduleConfig.warmup_updates``):

- warmup (all kinds): ``η_t = η·(t+1)/W`` for ``t < W`` (the first update already moves; update ``W-1``
  reaches the peak).
- ``wsm`` / ``constant``: ``η_t = η`` after warmup (WSM gets its "decay" from the final checkpoint merge,
  arXiv 2507.17634; ``constant`` is the same LR curve without the merge).
- ``wsd`` (warmup-stable-decay): constant until the last ``D = round(decay_fraction·T)`` updates, then
  ``η_t = η·(m + (1-m)·f(x))`` with progress ``x = (t - (T-D) + 1)/D ∈ (0, 1]`` and decay shape
  ``f(x) = 1 - x`` (linear) or ``f(x) = 1 - sqrt(x)`` (1-sqrt, Hägele et al. 2024, arXiv 2405.18392).
- ``cosine``: ``η_t = η·(m + (1-m)·½(1 + cos(π·x)))`` with ``x = (t - W + 1)/(T - W)`` after warmup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from trainer.config import RunConfig

DecayShape = Literal["linear", "1-sqrt"]
MergeShape = Literal["mean", "linear", "1-sqrt", "ema"]


def decay_fn(x: float, shape: str) -> float:
    """Decay shape f on progress x ∈ [0, 1], with f(0) = 1 and f(1) = 0: linear 1-x, or 1-sqrt(x)."""
    x = min(max(x, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - x
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(x)
    raise ValueError(f"unknown decay shape {shape!r} (expected 'linear' or '1-sqrt')")


@dataclass(frozen=True)
class LRSchedule:
    """LR at update t for one run; see the module docstring for the formulas."""

    kind: Literal["wsm", "wsd", "cosine", "constant"]
    total_steps: int
    peak_lr: float
    warmup_steps: int = 0
    decay_steps: int = 0
    decay_shape: DecayShape = "linear"
    min_lr_ratio: float = 0.0

    @classmethod
    def from_config(cls, run_cfg: RunConfig) -> LRSchedule:
        sched = run_cfg.schedule
        total = run_cfg.steps
        warmup = sched.warmup_updates(total)
        decay = 0
        if sched.kind == "wsd":
            decay = min(int(round(sched.decay_fraction * total)), total - warmup)
        return cls(
            kind=sched.kind,
            total_steps=total,
            peak_lr=run_cfg.optim.lr,
            warmup_steps=warmup,
            decay_steps=decay,
            decay_shape=sched.decay_shape,
            min_lr_ratio=run_cfg.optim.min_lr_ratio,
        )

    def factor(self, t: int) -> float:
        """LR multiplier η_t/η in [0, 1] for update t."""
        T, W, m = self.total_steps, self.warmup_steps, self.min_lr_ratio
        if t < W:
            return (t + 1) / W
        if self.kind in ("wsm", "constant"):
            return 1.0
        if self.kind == "wsd":
            start = T - self.decay_steps
            if self.decay_steps <= 0 or t < start:
                return 1.0
            x = (t - start + 1) / self.decay_steps
            return m + (1.0 - m) * decay_fn(x, self.decay_shape)
        if self.kind == "cosine":
            span = max(T - W, 1)
            x = min((t - W + 1) / span, 1.0)
            return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * x))
        raise ValueError(f"unknown schedule kind {self.kind!r}")

    def __call__(self, t: int) -> float:
        return self.peak_lr * self.factor(t)


# ---- WSM: checkpoint merging as implicit decay -------------------------------------------------------


def decay_shape_weights(k: int, shape: MergeShape, ema_decay: float = 0.9) -> list[float]:
    """Decay weights w_1 ≥ … ≥ w_k for the k update intervals that follow the first merged checkpoint.

    w_i is the LR multiplier the merge implicitly applies to the updates between checkpoints n+i-1 and n+i.
    ``linear`` and ``mean``: w_i = 1 - i/(k+1) (the same thing: see ``merge_weights``);
    ``1-sqrt``: w_i = 1 - sqrt(i/(k+1)); ``ema`` (exponential moving average of checkpoints with decay β,
    c_j ∝ (1-β)·β^(k-j), the oldest checkpoint taking the remainder β^k): w_i = 1 - β^(k-i+1).
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    if shape in ("linear", "mean"):
        return [decay_fn(i / (k + 1), "linear") for i in range(1, k + 1)]
    if shape == "1-sqrt":
        return [decay_fn(i / (k + 1), "1-sqrt") for i in range(1, k + 1)]
    if shape == "ema":
        return [1.0 - ema_decay ** (k - i + 1) for i in range(1, k + 1)]
    raise ValueError(f"unknown merge shape {shape!r}")


def merge_weights_from_decay(w: list[float]) -> list[float]:
    """Merge weights c_0..c_k from decay weights w_1 ≥ … ≥ w_k (WSM, Tian et al., arXiv 2507.17634, Sec. 3).

    Theorem (WSM, "decay-free LR schedule via checkpoint merging"): let θ_n, θ_{n+1}, …, θ_{n+k} be
    checkpoints of a constant-LR run and Δ_i = θ_{n+i} - θ_{n+i-1} the update of interval i. The merge
    θ̂ = Σ_{j=0..k} c_j θ_{n+j} with Σ c_j = 1 equals θ_n + Σ_{i=1..k} w_i Δ_i with w_i = Σ_{j≥i} c_j, i.e.
    the model one would get (to first order, same gradients) by scaling the LR of interval i by w_i — a
    decay schedule. Conversely any decay w_1 ≥ … ≥ w_k (in [0, 1]) is realised by
        c_k = w_k,  c_j = w_j - w_{j+1} (1 ≤ j < k),  c_0 = 1 - w_1,
    all non-negative and summing to 1 (telescoping).
    """
    k = len(w)
    if k == 0:
        return [1.0]
    if any(w[i] < w[i + 1] - 1e-12 for i in range(k - 1)) or w[0] > 1 + 1e-12 or w[-1] < -1e-12:
        raise ValueError("decay weights must satisfy 1 >= w_1 >= ... >= w_k >= 0")
    c = [1.0 - w[0]]
    c += [w[j] - w[j + 1] for j in range(k - 1)]
    c.append(w[-1])
    return c


def merge_weights(n_checkpoints: int, shape: MergeShape = "mean", ema_decay: float = 0.9) -> list[float]:
    """Merge weights c_0..c_k (oldest first) for ``n_checkpoints = k+1`` checkpoints.

    ``mean`` is uniform, c_j = 1/(k+1); by the theorem in ``merge_weights_from_decay`` it is exactly the
    linear decay w_i = 1 - i/(k+1). The WSM paper finds 1-sqrt > mean (linear) > EMA in downstream quality.
    """
    if n_checkpoints < 1:
        raise ValueError("need at least one checkpoint to merge")
    k = n_checkpoints - 1
    if shape == "mean":
        return [1.0 / n_checkpoints] * n_checkpoints
    return merge_weights_from_decay(decay_shape_weights(k, shape, ema_decay))


def checkpoint_interval(total_steps: int, merge_window: int, interval: int = 0, span: float = 0.2) -> int:
    """Steps between WSM merge checkpoints; ``interval = 0`` picks it so the window spans ~``span``·T.

    Auto: ``max(1, round(span·T / merge_window))`` so that ``merge_window`` checkpoints cover the last ~20%.
    """
    if interval > 0:
        return interval
    return max(1, int(round(span * total_steps / max(merge_window, 1))))


def merge_checkpoint_steps(total_steps: int, merge_window: int, interval: int) -> list[int]:
    """Completed-update counts at which WSM merge checkpoints are saved, oldest first, ending at T.

    ``[T - (n-1-j)·interval for j = 0..n-1]`` with n = ``merge_window``; steps < 1 are dropped (short runs
    merge fewer checkpoints).
    """
    steps = [total_steps - (merge_window - 1 - j) * interval for j in range(merge_window)]
    return [s for s in steps if s >= 1]
