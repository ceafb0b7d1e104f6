"""From a law set and a target to one RunConfig plus a summary: the recommender's core.

Laws used (DESIGN.md "Law file"; Ling, "Towards Greater Leverage", arXiv 2507.17702):
- allocation ``m_opt``: M_opt(C) = a·C^b (M = non-embedding training FLOPs per token, C = M·D, Sec. 5).
  Fallbacks: ``d_opt`` (M_opt = C / D_opt(C)) or ``params_opt`` (match non-embedding active params).
- hyper-parameters ``lr_opt``: η_opt(C) = a·C^b and ``batch_opt``: B_opt(C) = a·C^b tokens (Sec. 4).
- ``leverage``: EL(A, G, C) = C_dense / C_moe at equal loss (Sec. 6), used to rank candidates and reported.
- loss: ``parametric`` L(N, D) = E + A/N^α + B/D^β (N = non-embedding active params) or ``frontier``
  L(C) = E + A·C^−α; "n/a" when the law set has neither (the built-in ``ling`` set has no loss law).

Choice among candidates (``search.enumerate_candidates``): those whose size is within ``m_tolerance``
of the law's optimum, ranked by EL (2 decimals), then by d_model/n_layers inside Ling's range 96–128
(102, 128, 102 for mini/flash/1T; outside it in 10 % steps of distance), then by closeness to the
optimum; the first one that a parallel layout fits in GPU memory wins. D = C / M of the chosen model, so
C is spent exactly.
Schedule: WSM (arXiv 2507.17634): linear warmup of 1 % of steps (at most 2,000), constant LR, a checkpoint
every ``merge_fraction``·steps / ``merge_window`` steps and a mean merge of the last ``merge_window`` ones.
GPU-hours = C / (peak FLOP/s · MFU) / 3600 with C = M·D (embeddings and head excluded, as in the laws).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from trainer.config import (
    ModelConfig,
    OptimConfig,
    PrecisionConfig,
    RunConfig,
    ScheduleConfig,
)
from windtunnel.recommend.feasibility import diagnose, layout_error
from windtunnel.recommend.layout import (
    Layout,
    choose_layout,
    parallel_config,
)
from windtunnel.recommend.search import Candidate, enumerate_candidates, make_candidate
from windtunnel.recommend.targets import Constraints, RecommendError, Target


class LawSetLike(Protocol):
    laws: dict[str, Any]

    def predict(self, name: str, x: Any) -> tuple[float, float, float]: ...


@dataclass
class Recommendation:
    run_config: RunConfig
    summary: dict[str, Any]
    candidate: Candidate
    layout: Layout
    notes: list[str] = field(default_factory=list)


MAX_WARMUP_STEPS = 2000
MAX_LAYOUT_TRIES = 40
WARMUP_SHARE = 0.01


# ---- law helpers ---------------------------------------------------------------------------------------
def _has(lawset: LawSetLike, name: str) -> bool:
    return name in lawset.laws


def _predict(lawset: LawSetLike, name: str, x: Any) -> tuple[float, float, float]:
    value, lo, hi = lawset.predict(name, x)
    return float(value), float(lo), float(hi)


def _require(lawset: LawSetLike, names: tuple[str, ...], why: str) -> None:
    missing = [n for n in names if not _has(lawset, n)]
    if missing:
        have = ", ".join(sorted(lawset.laws)) or "none"
        raise RecommendError(f"the law set lacks {', '.join(missing)} ({why}); it has: {have}")


def _law_name(lawset: LawSetLike, name: str, family: str) -> str:
    """``m_opt`` etc. for MoE; for a dense family the ``*_dense`` variant when the set has one."""
    if family == "dense" and _has(lawset, f"{name}_dense"):
        return f"{name}_dense"
    return name


def size_target(
    lawset: LawSetLike, compute: float, family: str = "moe"
) -> tuple[str, float, dict[str, float]]:
    """(metric, target value, report) of the compute-optimal size at C from the allocation laws.

    m_opt: M_opt = a·C^b; else d_opt: M_opt = C / D_opt(C); else params_opt: N_opt = a·C^b.
    """
    m_law, d_law, n_law = (_law_name(lawset, n, family) for n in ("m_opt", "d_opt", "params_opt"))
    report: dict[str, Any] = {}
    if _has(lawset, d_law):
        d, d_lo, d_hi = _predict(lawset, d_law, compute)
        report.update(d_opt=d, d_opt_lo=d_lo, d_opt_hi=d_hi)
    if _has(lawset, m_law):
        m, lo, hi = _predict(lawset, m_law, compute)
        return "m", m, {"m_opt": m, "m_opt_lo": lo, "m_opt_hi": hi, "allocation_law": m_law, **report}
    if _has(lawset, d_law):
        m = compute / report["d_opt"]
        lo, hi = compute / report["d_opt_hi"], compute / report["d_opt_lo"]
        return "m", m, {"m_opt": m, "m_opt_lo": lo, "m_opt_hi": hi, "allocation_law": d_law, **report}
    if _has(lawset, n_law):
        n, lo, hi = _predict(lawset, n_law, compute)
        return (
            "params",
            n,
            {"params_opt": n, "params_opt_lo": lo, "params_opt_hi": hi, "allocation_law": n_law},
        )
    _require(lawset, ("m_opt",), "a compute target needs an allocation law: m_opt, d_opt or params_opt")
    raise AssertionError("unreachable")


def compute_for_size(lawset: LawSetLike, m: float, family: str = "moe") -> float:
    """Invert the allocation law: the C whose optimal M is ``m``.

    m_opt: M = a·C^b → C = (M/a)^(1/b); d_opt: C/M = a·C^b → C = (a·M)^(1/(1−b)).
    """
    m_law, d_law = _law_name(lawset, "m_opt", family), _law_name(lawset, "d_opt", family)
    if _has(lawset, m_law):
        co = lawset.laws[m_law].coefficients
        return (m / co["a"]) ** (1.0 / co["b"])
    if _has(lawset, d_law):
        co = lawset.laws[d_law].coefficients
        return (co["a"] * m) ** (1.0 / (1.0 - co["b"]))
    raise RecommendError("a total-parameter target needs m_opt or d_opt in the law set to find its compute")


def leverage(lawset: LawSetLike, cand: Candidate, compute: float) -> tuple[float, float, float] | None:
    """EL against dense at equal loss: 1 for a dense model; None when the law set has no ``leverage`` law."""
    if cand.model.moe is None:
        return (1.0, 1.0, 1.0)
    if not _has(lawset, "leverage"):
        return None
    return _predict(lawset, "leverage", (cand.activation_ratio, cand.granularity, compute))


def predicted_loss(lawset: LawSetLike, cand: Candidate, tokens: float, compute: float) -> dict[str, Any]:
    if _has(lawset, "parametric"):
        v, lo, hi = _predict(lawset, "parametric", (float(cand.counts.active_nonembed), float(tokens)))
        return {
            "predicted_loss": v,
            "predicted_loss_lo": lo,
            "predicted_loss_hi": hi,
            "loss_law": "parametric",
        }
    if _has(lawset, "frontier"):
        v, lo, hi = _predict(lawset, "frontier", compute)
        return {"predicted_loss": v, "predicted_loss_lo": lo, "predicted_loss_hi": hi, "loss_law": "frontier"}
    return {"predicted_loss": None, "predicted_loss_lo": None, "predicted_loss_hi": None, "loss_law": "n/a"}


# ---- choosing among candidates -------------------------------------------------------------------------
def _metric_value(cand: Candidate, metric: str) -> float:
    if metric == "m":
        return cand.flops_per_token
    if metric == "params":
        return float(cand.counts.active_nonembed)
    return float(cand.counts.total)


def rank(
    cands: list[Candidate],
    goal_of: Any,
    c: Constraints,
    el_of: Any,
) -> list[Candidate]:
    """Rank: within ``m_tolerance`` of the target → highest EL → d_model/n_layers inside (or nearest, in
    10 % steps) the preferred range → closest to the target.

    ``goal_of(candidate) -> (metric, target)`` (the target can differ by family: dense vs MoE laws).
    """

    def dist(cand: Candidate) -> float:
        metric, target = goal_of(cand)
        return abs(math.log(_metric_value(cand, metric) / target))

    near = [x for x in cands if dist(x) <= math.log1p(c.m_tolerance)]
    if not near:
        best = min(cands, key=dist)
        metric, target = goal_of(best)
        raise RecommendError(
            f"no architecture within {c.m_tolerance:.0%} of the target {_metric_name(metric)} = {target:.3g} "
            f"under these constraints (head_dim {c.head_dim}, d_model/n_layers in {c.aspect}, seq_len "
            f"{c.seq_len}); nearest feasible: {describe(best)} with {_metric_name(metric)} = "
            f"{_metric_value(best, metric):.3g} — change head_dim, aspect or seq_len, or the target"
        )

    def key(cand: Candidate) -> tuple:
        el = el_of(cand)
        el_v = round(el, 2) if el is not None else 0.0
        lo, hi = c.preferred_aspect
        off = max(0.0, math.log(lo / cand.aspect), math.log(cand.aspect / hi))
        return (-el_v, round(off / 0.1), dist(cand))

    return sorted(near, key=key)


def _families(c: Constraints) -> dict[str, Constraints]:
    """Split the requested activation ratios into a MoE and a dense (A = 1) search."""
    moe = tuple(a for a in c.activation_ratio if a < 1.0)
    out: dict[str, Constraints] = {}
    if moe:
        out["moe"] = replace(c, activation_ratio=moe)
    if len(moe) < len(c.activation_ratio):
        out["dense"] = replace(c, activation_ratio=(1.0,))
    return out


def _metric_name(metric: str) -> str:
    return {"m": "M (FLOPs/token)", "params": "non-embedding active params", "total": "total params"}[metric]


def describe(cand: Candidate) -> str:
    m = cand.model
    if m.moe is None:
        return f"dense {m.n_layers}L d{m.d_model} ({m.n_heads}h/{m.n_kv_heads}kv) d_ffn {m.d_ffn}"
    e = m.moe
    return (
        f"{m.n_layers}L d{m.d_model} ({m.n_heads}h/{m.n_kv_heads}kv) E={e.n_experts} top-{e.top_k} "
        f"+{e.n_shared_experts} shared d_expert {e.d_expert} "
        f"(A={cand.activation_ratio:.4f}, G={cand.granularity:.3g})"
    )


# ---- the recommendation ----------------------------------------------------------------------------------
def wsm_schedule(steps: int, c: Constraints) -> tuple[ScheduleConfig, dict[str, int]]:
    """WSM: warmup 1 % of steps (≤ 2,000, < half the run), constant LR, merge the last ``merge_window``
    checkpoints taken every ``merge_fraction``·steps/``merge_window`` steps (mean merge ≈ linear decay)."""
    warmup = min(MAX_WARMUP_STEPS, max(1, round(WARMUP_SHARE * steps)))
    warmup = min(warmup, max(0, (steps - 1) // 2))
    interval = max(1, round(c.merge_fraction * steps / c.merge_window))
    sched = ScheduleConfig(
        kind="wsm",
        warmup_fraction=warmup / steps if steps > 0 else 0.0,
        checkpoint_interval=interval,
        merge_window=c.merge_window,
        merge_shape="mean",
    )
    return sched, {"warmup_steps": warmup, "checkpoint_interval": interval, "merge_window": c.merge_window}


def recommend(lawset: LawSetLike, target: Target, constraints: Constraints | None = None) -> Recommendation:
    """Recommend a compute-optimal run: architecture, tokens, LR, batch, WSM schedule, layout, predictions."""
    c = constraints or Constraints()
    _require(lawset, ("lr_opt", "batch_opt"), "peak LR and batch come from them")
    notes: list[str] = []
    base: RunConfig | None = None
    el_cache: dict[tuple[float, float, float], tuple[float, float, float] | None] = {}

    def el_at(cand: Candidate, compute: float) -> tuple[float, float, float] | None:
        key = (round(cand.activation_ratio, 6), round(cand.granularity, 6), compute)
        if key not in el_cache:
            el_cache[key] = leverage(lawset, cand, compute)
        return el_cache[key]

    # options: ranked (candidate, compute, allocation report or None = compute it later)
    options: list[tuple[Candidate, float, dict[str, Any] | None]]
    if target.kind == "model":
        assert target.model_path is not None and target.tokens is not None
        try:
            base = RunConfig.from_yaml(target.model_path)
        except ValueError as err:
            raise RecommendError(str(err)) from None
        fixed = make_candidate(base.model)
        compute = fixed.flops_per_token * float(target.tokens)
        family = fixed.model.family
        has_alloc = any(_has(lawset, _law_name(lawset, n, family)) for n in ("m_opt", "d_opt", "params_opt"))
        options = [(fixed, compute, None if has_alloc else {})]
    elif target.kind == "compute":
        assert target.compute is not None
        compute = float(target.compute)
        goals = {fam: size_target(lawset, compute, fam) for fam in _families(c)}
        cands = [
            x
            for fam, cf in _families(c).items()
            for x in enumerate_candidates(*goals[fam][:2], cf, band=c.m_tolerance)
        ]
        if not cands:
            metric, goal, _ = next(iter(goals.values()))
            raise diagnose(metric, goal, c)
        ranked = rank(cands, lambda x: goals[x.model.family][:2], c, lambda x: _el_value(el_at(x, compute)))
        options = [(x, compute, goals[x.model.family][2]) for x in ranked]
    else:
        assert target.total_params is not None
        goal = float(target.total_params)
        cands = [
            x
            for cf in _families(c).values()
            for x in enumerate_candidates("total", goal, cf, band=c.m_tolerance)
        ]
        if not cands:
            raise diagnose("total", goal, c)

        def c_of(x: Candidate) -> float:
            return compute_for_size(lawset, x.flops_per_token, x.model.family)

        # EL ranks A and G, so evaluate it at one compute (that of the closest candidate) for all
        c_ref = c_of(min(cands, key=lambda x: abs(math.log(x.counts.total / goal))))
        ranked = rank(cands, lambda x: ("total", goal), c, lambda x: _el_value(el_at(x, c_ref)))
        options = [(x, c_of(x), None) for x in ranked]

    # the best-ranked candidate that some parallel layout fits (a prime layer count admits no pipeline split)
    first_error: RecommendError | None = None
    tried = 0
    for cand, compute, report in options[:MAX_LAYOUT_TRIES]:  # noqa: B007 (the loop's last values are used)
        model: ModelConfig = cand.model
        tokens = float(target.tokens) if target.tokens is not None else compute / cand.flops_per_token
        lr, lr_lo, lr_hi = _predict(lawset, "lr_opt", compute)
        bt, bt_lo, bt_hi = _predict(lawset, "batch_opt", compute)
        sequences = bt / model.seq_len
        draft = RunConfig(
            name=_name(target, compute),
            model=model,
            optim=OptimConfig(lr=lr, batch_size=max(1, round(sequences)), tokens=max(1, int(tokens))),
            precision=PrecisionConfig(dtype=c.precision),
        )
        if base is not None:
            optim = base.optim.model_copy(update={"lr": lr, "tokens": max(1, int(tokens))})
            draft = base.model_copy(update={"optim": optim})
        fixed_layout = {"tp": c.tp, "pp": c.pp, "ep": c.ep}
        layout, least = choose_layout(draft, c.gpus, c.gpu_memory_gb, sequences, fixed_layout)
        if layout is not None:
            break
        tried += 1
        if first_error is None:
            first_error = layout_error(draft, c, sequences, least)
    else:
        assert first_error is not None
        raise first_error
    if tried:
        notes.append(f"{tried} better-ranked architecture(s) had no parallel layout that fits; took the next")
    if report is None:
        report = size_target(lawset, compute, cand.model.family)[2]

    batch = layout.batch_sequences
    steps = max(1, int(tokens) // (batch * model.seq_len))
    sched, sched_report = wsm_schedule(steps, c)
    optim_fields = {
        "lr": lr,
        "batch_size": batch,
        "micro_batch_size": layout.dp,
        "tokens": max(1, int(tokens)),
    }
    optim = base.optim.model_copy(update=optim_fields) if base is not None else OptimConfig(**optim_fields)
    run_cfg = RunConfig.from_dict(
        {
            **(base.model_dump(mode="json") if base is not None else {}),
            "name": draft.name,
            "model": model.model_dump(mode="json"),
            "optim": optim.model_dump(mode="json"),
            "schedule": sched.model_dump(mode="json"),
            "precision": (
                base.precision if base is not None else PrecisionConfig(dtype=c.precision)
            ).model_dump(mode="json"),
            "parallel": parallel_config(layout, c.gpu_memory_gb).model_dump(mode="json"),
        }
    )

    el = el_at(cand, compute)
    loss = predicted_loss(lawset, cand, tokens, compute)
    gpu_hours = compute / (c.peak_tflops * 1e12 * c.mfu) / 3600.0
    if el is None:
        notes.append("the law set has no leverage law: EL n/a")
    if loss["loss_law"] == "n/a":
        notes.append("the law set has no loss law (parametric or frontier): predicted loss n/a")
    m_opt = report.get("m_opt")
    summary: dict[str, Any] = {
        "name": run_cfg.name,
        "target": target.kind,
        "family": model.family,
        "architecture": _arch(model),
        "activation_ratio": cand.activation_ratio,
        "granularity": cand.granularity,
        "total_params": cand.counts.total,
        "active_params": cand.counts.active,
        "total_params_nonembed": cand.counts.total_nonembed,
        "active_params_nonembed": cand.counts.active_nonembed,
        "flops_per_token": cand.flops_per_token,
        **report,
        "m_rel_error": (cand.flops_per_token / m_opt - 1) if m_opt else None,
        "tokens": int(tokens),
        "tokens_per_param": tokens / cand.counts.active_nonembed,
        "compute": compute,
        "peak_lr": lr,
        "peak_lr_lo": lr_lo,
        "peak_lr_hi": lr_hi,
        "batch_tokens": batch * model.seq_len,
        "batch_sequences": batch,
        "batch_tokens_law": bt,
        "batch_tokens_law_lo": bt_lo,
        "batch_tokens_law_hi": bt_hi,
        "seq_len": model.seq_len,
        "steps": steps,
        **sched_report,
        **loss,
        "efficiency_leverage": el[0] if el else None,
        "efficiency_leverage_lo": el[1] if el else None,
        "efficiency_leverage_hi": el[2] if el else None,
        "gpus": c.gpus,
        "mfu": c.mfu,
        "peak_tflops": c.peak_tflops,
        "gpu_hours": gpu_hours,
        "gpu_hours_basis": "C = M·D: non-embedding training FLOPs (embeddings, output head and MTP excluded)",
        "days": gpu_hours / c.gpus / 24.0,
        "parallel": {"tp": layout.tp, "pp": layout.pp, "ep": layout.ep, "dp": layout.dp},
        "memory_per_gpu_gb": layout.memory["total"],
        "memory_breakdown_gb": {k: layout.memory[k] for k in ("params", "grads", "optimizer", "activations")},
        "gpu_memory_gb": c.gpu_memory_gb,
        "precision": run_cfg.precision.dtype,
        "notes": notes,
    }
    return Recommendation(run_config=run_cfg, summary=summary, candidate=cand, layout=layout, notes=notes)


def _el_value(el: tuple[float, float, float] | None) -> float | None:
    return el[0] if el is not None and math.isfinite(el[0]) else None


def _arch(m: ModelConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "n_heads": m.n_heads,
        "n_kv_heads": m.n_kv_heads,
        "head_dim": m.head_dim_,
        "d_ffn": m.d_ffn,
        "vocab_size": m.vocab_size,
        "seq_len": m.seq_len,
        "n_mtp_layers": m.n_mtp_layers,
    }
    if m.moe is not None:
        out.update(
            n_experts=m.moe.n_experts,
            top_k=m.moe.top_k,
            n_shared_experts=m.moe.n_shared_experts,
            d_expert=m.moe.d_expert,
            n_dense_layers=m.moe.n_dense_layers,
            n_groups=m.moe.n_groups,
            topk_groups=m.moe.topk_groups,
        )
    return out


def _name(target: Target, compute: float) -> str:
    if target.kind == "model" and target.model_path is not None:
        return f"{target.model_path.stem}-D{target.tokens:.2g}".replace("+", "")
    return f"recommend-C{compute:.2e}".replace("+", "")
