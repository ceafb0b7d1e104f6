"""From a law set and a target to one RunConfig plus a summary: the recommender's core.

Laws used (docs/DESIGN.md "Contracts", law file; Ling, "Towards Greater Leverage", arXiv 2507.17702):
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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from trainer.config import (
    ModelConfig,
    OptimConfig,
    PrecisionConfig,
    RunConfig,
    ScheduleConfig,
)
from windtunnel.errors import RecommendError, one_line
from windtunnel.recommend.feasibility import diagnose, layout_error
from windtunnel.recommend.law_values import (
    LawSetLike,
    compute_for_size,
    has_law,
    law_name,
    leverage,
    predict_positive,
    predicted_loss,
    require_laws,
    size_target,
)
from windtunnel.recommend.layout import (
    Layout,
    choose_layout,
    parallel_config,
)
from windtunnel.recommend.search import Candidate, enumerate_candidates, make_candidate
from windtunnel.recommend.summary import summary_dict
from windtunnel.recommend.targets import Constraints, Target


@dataclass(frozen=True)
class Interval:
    """A law's prediction and its 95 % interval."""

    value: float
    lo: float
    hi: float


@dataclass
class Recommendation:
    """The recommended run (``run_config``) and the typed facts it was derived from.

    ``summary`` is the flat, JSON-ready view of these fields that the CLI, the sweep summary and the
    dashboard print.
    """

    run_config: RunConfig
    candidate: Candidate
    layout: Layout
    target_kind: str
    compute: float
    tokens: int
    lr: Interval
    batch_law: Interval
    allocation: dict[str, Any]
    schedule: dict[str, int]
    loss: dict[str, Any]
    leverage: Interval | None
    constraints: Constraints
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float:
        """GPU-hours = C / (peak FLOP/s · MFU) / 3600, C = M·D."""
        c = self.constraints
        return self.compute / (c.peak_tflops * 1e12 * c.mfu) / 3600.0

    @property
    def summary(self) -> dict[str, Any]:
        return summary_dict(self)


MAX_WARMUP_STEPS = 2000
MAX_LAYOUT_TRIES = 40
WARMUP_SHARE = 0.01


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


@dataclass(frozen=True)
class Option:
    """A ranked candidate, the compute it is trained with, and its allocation report (None: compute later)."""

    candidate: Candidate
    compute: float
    allocation: dict[str, Any] | None


@dataclass(frozen=True)
class Placed:
    """The first option a parallel layout fits, with the law values its draft config was built from."""

    option: Option
    tokens: float
    lr: Interval
    batch_law: Interval
    draft: RunConfig
    layout: Layout
    skipped: int


def _leverage_cache(lawset: LawSetLike) -> Callable[[Candidate, float], Interval | None]:
    cache: dict[tuple[float, float, float], Interval | None] = {}

    def el_at(cand: Candidate, compute: float) -> Interval | None:
        key = (round(cand.activation_ratio, 6), round(cand.granularity, 6), compute)
        if key not in cache:
            el = leverage(lawset, cand, compute)
            cache[key] = Interval(*el) if el is not None else None
        return cache[key]

    return el_at


def _base_config(target: Target) -> RunConfig | None:
    if target.kind != "model":
        return None
    assert target.model_path is not None
    try:
        return RunConfig.from_yaml(target.model_path)
    except (OSError, ValueError) as err:
        raise RecommendError(f"--model {target.model_path}: {one_line(err)}") from None


def _options(
    lawset: LawSetLike, target: Target, c: Constraints, base: RunConfig | None, el_at
) -> list[Option]:
    """The candidates to try, best first: the fixed model, or those near the compute or size target."""
    if base is not None:
        fixed = make_candidate(base.model)
        family = fixed.model.family
        has_alloc = any(
            has_law(lawset, law_name(lawset, n, family)) for n in ("m_opt", "d_opt", "params_opt")
        )
        return [Option(fixed, fixed.flops_per_token * float(target.tokens), None if has_alloc else {})]
    families = _families(c)
    if target.kind == "compute":
        compute = float(target.compute)
        goals = {fam: size_target(lawset, compute, fam) for fam in families}
        cands = [
            x
            for fam, cf in families.items()
            for x in enumerate_candidates(*goals[fam][:2], cf, band=c.m_tolerance)
        ]
        if not cands:
            metric, goal, _ = next(iter(goals.values()))
            raise diagnose(metric, goal, c)
        ranked = rank(cands, lambda x: goals[x.model.family][:2], c, lambda x: _el_value(el_at(x, compute)))
        return [Option(x, compute, goals[x.model.family][2]) for x in ranked]
    goal = float(target.total_params)
    cands = [
        x for cf in families.values() for x in enumerate_candidates("total", goal, cf, band=c.m_tolerance)
    ]
    if not cands:
        raise diagnose("total", goal, c)

    def c_of(x: Candidate) -> float:
        return compute_for_size(lawset, x.flops_per_token, x.model.family)

    # EL ranks A and G, so evaluate it at one compute (that of the closest candidate) for all
    c_ref = c_of(min(cands, key=lambda x: abs(math.log(x.counts.total / goal))))
    ranked = rank(cands, lambda x: ("total", goal), c, lambda x: _el_value(el_at(x, c_ref)))
    return [Option(x, c_of(x), None) for x in ranked]


def _draft(lawset: LawSetLike, opt: Option, target: Target, c: Constraints, base: RunConfig | None):
    """(tokens, lr, batch law, draft RunConfig) of an option: D = C/M unless the target fixes it."""
    model: ModelConfig = opt.candidate.model
    tokens = (
        float(target.tokens) if target.tokens is not None else opt.compute / opt.candidate.flops_per_token
    )
    lr = Interval(*predict_positive(lawset, "lr_opt", opt.compute))
    bt = Interval(*predict_positive(lawset, "batch_opt", opt.compute))
    n_tokens = max(1, int(tokens))
    try:
        if base is not None:
            optim = base.optim.model_copy(update={"lr": lr.value, "tokens": n_tokens})
            draft = base.model_copy(update={"optim": optim})
        else:
            draft = RunConfig(
                name=_name(target, opt.compute),
                model=model,
                optim=OptimConfig(
                    lr=lr.value, batch_size=max(1, round(bt.value / model.seq_len)), tokens=n_tokens
                ),
                precision=PrecisionConfig(dtype=c.precision),
            )
    except ValueError as err:
        raise RecommendError(
            f"the laws give an unusable config at C = {opt.compute:.3g}: {one_line(err)}"
        ) from None
    return tokens, lr, bt, draft


def _place(lawset: LawSetLike, options: list[Option], target: Target, c: Constraints, base) -> Placed:
    """The best-ranked option that some parallel layout fits (a prime layer count admits no pipeline split).

    When none of the first ``MAX_LAYOUT_TRIES`` fits, the error describes the option that came closest
    (least memory per GPU) and what would make it fit.
    """
    fixed_layout = {"tp": c.tp, "pp": c.pp, "ep": c.ep}
    closest: tuple[float, RunConfig, float, Layout | None] | None = None
    for tried, opt in enumerate(options[:MAX_LAYOUT_TRIES]):
        tokens, lr, bt, draft = _draft(lawset, opt, target, c, base)
        sequences = bt.value / opt.candidate.model.seq_len
        layout, least = choose_layout(draft, c.gpus, c.gpu_memory_gb, sequences, fixed_layout)
        if layout is not None:
            return Placed(opt, tokens, lr, bt, draft, layout, tried)
        need = least.memory["total"] if least is not None else math.inf
        if closest is None or need < closest[0]:
            closest = (need, draft, sequences, least)
    assert closest is not None, "no option to place"
    raise layout_error(closest[1], c, closest[2], closest[3])


def _run_config(placed: Placed, c: Constraints, base: RunConfig | None) -> tuple[RunConfig, dict[str, int]]:
    """The final RunConfig: the draft with the layout's batch, the WSM schedule and the parallel layout."""
    layout, model = placed.layout, placed.option.candidate.model
    steps = max(1, int(placed.tokens) // (layout.batch_sequences * model.seq_len))
    sched, sched_report = wsm_schedule(steps, c)
    optim_fields = {
        "lr": placed.lr.value,
        "batch_size": layout.batch_sequences,
        "micro_batch_size": layout.dp,
        "tokens": max(1, int(placed.tokens)),
    }
    optim = base.optim.model_copy(update=optim_fields) if base is not None else OptimConfig(**optim_fields)
    precision = base.precision if base is not None else PrecisionConfig(dtype=c.precision)
    run_cfg = RunConfig.from_dict(
        {
            **(base.model_dump(mode="json") if base is not None else {}),
            "name": placed.draft.name,
            "model": model.model_dump(mode="json"),
            "optim": optim.model_dump(mode="json"),
            "schedule": sched.model_dump(mode="json"),
            "precision": precision.model_dump(mode="json"),
            "parallel": parallel_config(layout, c.gpu_memory_gb).model_dump(mode="json"),
        }
    )
    return run_cfg, {"steps": steps, **sched_report}


def recommend(lawset: LawSetLike, target: Target, constraints: Constraints | None = None) -> Recommendation:
    """Recommend a compute-optimal run: architecture, tokens, LR, batch, WSM schedule, layout, predictions."""
    c = constraints or Constraints()
    require_laws(lawset, ("lr_opt", "batch_opt"), "peak LR and batch come from them")
    base = _base_config(target)
    el_at = _leverage_cache(lawset)
    placed = _place(lawset, _options(lawset, target, c, base, el_at), target, c, base)
    opt = placed.option
    run_cfg, schedule = _run_config(placed, c, base)
    notes: list[str] = []
    if placed.skipped:
        notes.append(
            f"{placed.skipped} better-ranked architecture(s) had no parallel layout that fits; took the next"
        )
    el = el_at(opt.candidate, opt.compute)
    loss = predicted_loss(lawset, opt.candidate, placed.tokens, opt.compute)
    if el is None:
        notes.append("the law set has no leverage law: EL n/a")
    if loss["loss_law"] == "n/a":
        notes.append("the law set has no loss law (parametric or frontier): predicted loss n/a")
    allocation = opt.allocation
    if allocation is None:
        allocation = size_target(lawset, opt.compute, opt.candidate.model.family)[2]
    return Recommendation(
        run_config=run_cfg,
        candidate=opt.candidate,
        layout=placed.layout,
        target_kind=target.kind,
        compute=opt.compute,
        tokens=int(placed.tokens),
        lr=placed.lr,
        batch_law=placed.batch_law,
        allocation=allocation,
        schedule=schedule,
        loss=loss,
        leverage=el,
        constraints=c,
        notes=notes,
    )


def _el_value(el: Interval | None) -> float | None:
    return el.value if el is not None and math.isfinite(el.value) else None


def _name(target: Target, compute: float) -> str:
    if target.kind == "model" and target.model_path is not None:
        return f"{target.model_path.stem}-D{target.tokens:.2g}".replace("+", "")
    return f"recommend-C{compute:.2e}".replace("+", "")
