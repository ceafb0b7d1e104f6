"""Infeasible constraints: name the ones that conflict and the nearest feasible alternative.

Architecture: a constraint "conflicts" when freeing it alone (trying the values nearest to the requested
one, in log distance) makes the search feasible; the first such value is the nearest feasible alternative.
Layout and memory: a fixed (tp, pp, ep) that does not fit is compared with the best free layout; otherwise
the GPU count is doubled until a layout fits, and the memory per GPU the least-memory layout would need is
given.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from trainer.config import RunConfig
from windtunnel.errors import RecommendError
from windtunnel.recommend.layout import EP_CHOICES, PP_CHOICES, TP_CHOICES, Layout, choose_layout
from windtunnel.recommend.search import enumerate_candidates, family_shapes
from windtunnel.recommend.targets import Constraints

_RELAX_VALUES: dict[str, tuple] = {
    "activation_ratio": (1 / 128, 1 / 64, 0.025, 9 / 257, 0.05, 0.078, 0.1, 0.125, 0.25, 0.5),
    "granularity": (1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0),
    "ep": EP_CHOICES,
    "pp": PP_CHOICES,
    "tp": TP_CHOICES,
    "n_experts": (8, 16, 32, 64, 128, 256, 384, 512, 1024),
    "n_kv_heads": (1, 2, 4, 8, 16),
    "n_dense_layers": (0, 1, 2, 4),
    "max_experts": (64, 128, 256, 512, 1024, 2048, 4096),
    "n_shared_experts": (0, 1, 2),
}


def _user_set(c: Constraints) -> list[str]:
    base = Constraints()
    names = []
    for name in _RELAX_VALUES:
        if getattr(c, name) != getattr(base, name):
            names.append(name)
    if c.aspect != base.aspect:
        names.append("aspect")
    for name in (
        "max_experts",
        "n_shared_experts",
    ):  # defaults that often are the other side of an A conflict
        if name not in names:
            names.append(name)
    return names


def _as_value(name: str, v: Any) -> Any:
    return (v,) if name in ("activation_ratio", "granularity", "n_shared_experts") else v


def _distance(name: str, v: Any, current: Any) -> float:
    cur = current[0] if isinstance(current, tuple) else current
    if cur in (None, 0) or v in (None, 0):
        return abs(float(v or 0) - float(cur or 0))
    return abs(math.log(float(v) / float(cur)))


def diagnose(metric: str, target: float, c: Constraints) -> RecommendError:
    """Name the constraints whose single relaxation makes the search feasible and the nearest such value."""
    suspects = _user_set(c)
    conflicts: list[str] = []
    alternatives: list[str] = []
    for name in suspects:
        if name == "aspect":
            trial = replace(c, aspect=(16.0, 512.0))
            if enumerate_candidates(metric, target, trial):
                conflicts.append("aspect")
                alternatives.append("aspect=16:512")
            continue
        current = getattr(c, name)
        for v in sorted(_RELAX_VALUES[name], key=lambda v: _distance(name, v, current)):
            trial = replace(c, **{name: _as_value(name, v)})
            if family_shapes(trial) and enumerate_candidates(metric, target, trial):
                conflicts.append(name)
                alternatives.append(f"{name}={v:.4g}" if isinstance(v, float) else f"{name}={v}")
                break
    shown = ", ".join(f"{n}={_show(getattr(c, n))}" for n in suspects) or "the defaults"
    if conflicts:
        return RecommendError(
            f"no architecture satisfies {shown} together (A within {c.a_tolerance:.0%}, at most "
            f"{c.max_experts} experts, head_dim {c.head_dim}); conflicting: {', '.join(conflicts)}; "
            f"nearest feasible alternative: {' or '.join(alternatives)}"
        )
    return RecommendError(f"no architecture satisfies {shown}; relaxing any single one of them does not help")


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def layout_error(
    run_cfg: RunConfig, c: Constraints, sequences: float, least: Layout | None
) -> RecommendError:
    """Why no layout fits, and the nearest feasible alternative: a free layout, more GPUs, or bigger GPUs."""
    fixed = {"tp": c.tp, "pp": c.pp, "ep": c.ep}
    free_layout = {"tp": None, "pp": None, "ep": None}
    given = ", ".join(f"{k}={v}" for k, v in fixed.items() if v is not None)
    best = (
        f"{least.memory['total']:.1f} GB/GPU at best (tp={least.tp}, pp={least.pp}, ep={least.ep})"
        if least
        else "no valid layout for this model's heads/layers/experts"
    )
    where = f"{c.gpus} GPUs of {c.gpu_memory_gb:g} GB" + (f" with {given}" if given else "")
    free, free_least = choose_layout(run_cfg, c.gpus, c.gpu_memory_gb, sequences, free_layout)
    if given and least is None:
        alt = (
            f"tp={free.tp}, pp={free.pp}, ep={free.ep}, dp={free.dp} ({free.memory['total']:.1f} GB/GPU)"
            if free is not None
            else "a GPU count that tp·pp divides"
        )
        return RecommendError(
            f"no layout with {given} exists on {c.gpus} GPUs (tp·pp must divide the GPU count, tp the "
            f"heads, pp the layers, ep the experts and tp·dp); conflicting: gpus and {given}; "
            f"nearest feasible: {alt}"
        )
    if given and free is not None:
        return RecommendError(
            f"the model does not fit {where}: {best}; conflicting: gpu_memory_gb and {given}; nearest "
            f"feasible: tp={free.tp}, pp={free.pp}, ep={free.ep}, dp={free.dp} "
            f"({free.memory['total']:.1f} GB/GPU)"
        )
    options = []
    gpus = c.gpus
    for _ in range(14):
        gpus *= 2
        more, _ = choose_layout(run_cfg, gpus, c.gpu_memory_gb, sequences, free_layout)
        if more is not None:
            options.append(
                f"{gpus} GPUs of {c.gpu_memory_gb:g} GB (tp={more.tp}, pp={more.pp}, ep={more.ep}: "
                f"{more.memory['total']:.1f} GB/GPU)"
            )
            break
    if free_least is not None:
        need = free_least.memory["total"] / Layout.headroom
        options.append(
            f"GPUs with at least {need:.0f} GB (tp={free_least.tp}, pp={free_least.pp}, ep={free_least.ep})"
        )
    conflict = "gpus and gpu_memory_gb" + (f" (with {given})" if given else "")
    return RecommendError(
        f"the model does not fit {where}: {best}; conflicting: {conflict}; nearest feasible: "
        + (" or ".join(options) if options else "none found: constrain the size (smaller C or total params)")
    )
