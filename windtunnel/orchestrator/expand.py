"""Expansion of a validated ``SweepSpec`` into trials (see ``spec.py`` for the study kinds and formulas).

- grid: the Cartesian product of the listed values, each value validated alone first so an error names it;
- ladder: D = C / M per (budget, size), M = ``trainer.flops.flops_per_token`` (C = M * D); or, with
  ``tokens: law``, C from inverting M_opt = a * C^b and D = C / M, LR = a * C^b and batch = a * C^b from the
  lr_opt / batch_opt laws (Ling "Towards Greater Leverage" sec. 3; the built-in ``ling`` law set);
- search: one ``SearchGroup`` per (study, budget, seed), tokens = C / M (M of the budget's model when the
  search lists one model per budget).
Trials are deduplicated by ``RunConfig.config_hash()``. The expanded plan is then checked (``check_plan``):
every number of every trial finite, at most ``limits.max_trials`` trials, none costing more than
``limits.max_trial_flops`` (cost = D * (M + 6 * d_model * vocab), ``trial_flops``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.config import ConfigError, RunConfig
from windtunnel.errors import one_line
from windtunnel.flatten import flatten
from windtunnel.orchestrator.spec import (
    SearchStudy,
    SpecError,
    Study,
    SweepSpec,
    check_finite,
    friendly_message,
)


@dataclass
class Trial:
    """One concrete trial: a validated RunConfig plus where it came from."""

    study: str
    kind: Literal["grid", "ladder", "search"]
    run_cfg: RunConfig
    budget: float | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def config_hash(self) -> str:
        return self.run_cfg.config_hash()


@dataclass
class SearchGroup:
    """One Optuna search: a study at one budget; ``base_cfg`` has tokens = C/M already set."""

    study: str
    budget: float
    base_cfg: RunConfig
    search: SearchStudy
    seed: int

    @property
    def key(self) -> str:
        return f"{self.study}@{self.budget:.3g}#s{self.seed}"


@dataclass
class Plan:
    trials: list[Trial]
    searches: list[SearchGroup]

    @property
    def n_trials(self) -> int:
        return len(self.trials) + sum(g.search.num_samples for g in self.searches)


def _fpt(model_cfg: Any) -> float:
    from trainer.flops import flops_per_token

    return float(flops_per_token(model_cfg))


MAX_LAYERS = 10_000  # FLOP and parameter counts walk the layers: a typo of 1e30 layers would never return


def _check_depth(cfg: RunConfig, where: str) -> RunConfig:
    if cfg.model.n_layers > MAX_LAYERS:
        raise SpecError(f"{where}: model.n_layers ({cfg.model.n_layers}) must be <= {MAX_LAYERS}")
    return cfg


def _apply(cfg: RunConfig, overrides: dict[str, Any], where: str) -> RunConfig:
    try:
        return _check_depth(cfg.with_overrides(overrides), where)
    except ConfigError as err:
        msg = friendly_message(str(err))
        if len(overrides) == 1:
            (key,) = overrides
            if msg.startswith(f"{key}: "):  # the error is about the overridden field itself
                msg = msg.removeprefix(f"{key}: ")
                if msg == "unknown field":
                    where = where.rsplit("[", 1)[0]
                return_msg = f"{where}: {msg}"
                raise SpecError(one_line(return_msg)) from None
        raise SpecError(one_line(f"{where}: {msg}")) from None


def _tokens_for_budget(cfg: RunConfig, budget: float, where: str) -> RunConfig:
    m = _fpt(cfg.model)
    tokens = int(budget / m)
    if tokens < cfg.batch_tokens:
        raise SpecError(
            f"{where}: budget {budget:.3g} FLOPs gives {tokens} tokens (M = {m:.3g} FLOPs/token), "
            f"less than one batch ({cfg.batch_tokens} tokens)"
        )
    return _apply(cfg, {"optim.tokens": tokens}, where)


def _law_coeffs(lawset: Any, name: str, where: str) -> tuple[float, float]:
    law = lawset.laws.get(name)
    if law is None:
        raise SpecError(f"{where}: law set has no '{name}' law")
    return float(law.coefficients["a"]), float(law.coefficients["b"])


def _load_lawset(ref: str, where: str) -> Any:
    from windtunnel.laws import load_laws

    try:
        return load_laws(ref)
    except Exception as err:  # noqa: BLE001 - any load problem is the user's input
        raise SpecError(one_line(f"{where}: cannot load laws '{ref}': {err}")) from None


def _expand_ladder(study: Study, idx: int, base: RunConfig) -> list[tuple[RunConfig, float | None, dict]]:
    ladder = study.ladder
    assert ladder is not None
    where = f"studies[{idx}].ladder"
    moe = base.model.moe is not None
    if ladder.models is not None:
        shapes = []
        for j, m in enumerate(ladder.models):
            if not isinstance(m, dict) or not m:
                raise SpecError(f"{where}.models[{j}]: must be a non-empty mapping of model fields")
            shapes.append(_model_overrides(m))
    else:
        shapes = ladder.rule.shapes(moe)  # type: ignore[union-attr]
    sized = []
    for j, shape in enumerate(shapes):
        sized.append(_apply(base, shape, f"{where}.models[{j}]" if ladder.models else f"{where}.rule[{j}]"))
    out: list[tuple[RunConfig, float | None, dict]] = []
    if ladder.tokens == "budget":
        for c in ladder.budgets or []:
            for j, cfg in enumerate(sized):
                out.append((_tokens_for_budget(cfg, c, f"{where}.budgets"), c, {"size": j}))
        return out
    lawset = _load_lawset(ladder.laws, f"{where}.laws")
    # Ling publishes separate allocation laws for dense models (m_opt_dense) and MoE (m_opt)
    m_law = "m_opt_dense" if not moe and "m_opt_dense" in lawset.laws else "m_opt"
    a_m, b_m = _law_coeffs(lawset, m_law, f"{where}.laws")
    for j, cfg in enumerate(sized):
        m = _fpt(cfg.model)
        c = (m / a_m) ** (1.0 / b_m)  # invert M_opt = a C^b
        overrides: dict[str, Any] = {"optim.tokens": max(cfg.batch_tokens, int(c / m))}
        if ladder.hparams == "law":
            a_lr, b_lr = _law_coeffs(lawset, "lr_opt", f"{where}.laws")
            a_b, b_b = _law_coeffs(lawset, "batch_opt", f"{where}.laws")
            overrides["optim.lr"] = a_lr * c**b_lr
            mb = cfg.optim.micro_batch_size or 1  # keep batch a multiple of the micro-batch
            overrides["optim.batch_size"] = max(mb, round(a_b * c**b_b / cfg.model.seq_len / mb) * mb)
        out.append((_apply(cfg, overrides, f"{where}[{j}]"), c, {"size": j}))
    return out


def _model_overrides(model: dict[str, Any]) -> dict[str, Any]:
    """``model.*`` dotted overrides of a model block (its ``moe`` block and empty dicts set whole)."""
    return {f"model.{k}": v for k, v in flatten(model, leaves=("moe",), keep_empty=True).items()}


def trial_flops(cfg: RunConfig) -> float:
    """A run's training FLOPs as the trainer counts them: C_train = D * F, D = steps * batch_tokens (the
    tokens the trainer trains: ``optim.tokens`` rounded down to whole batches) and
    F = ``trainer.hardware.mfu_flops_per_token`` = M (with MTP) + 6 * d_model * vocab * (1 + n_mtp), the
    output layer included (PaLM App. B). M alone leaves out the head, which dominates tiny models: an IsoFLOP
    profile's smallest model has the most tokens and is the slowest trial at its budget. The cost the
    searcher orders trials by (longest work first), the ``limits.max_trial_flops`` check and the planner's
    FLOPs (``windtunnel plan``). A run with WSD points (``trainer.points``) also trains its cooldown
    branches: D += ``trainer.points.extra_tokens``."""
    from trainer.hardware import mfu_flops_per_token
    from trainer.points import extra_tokens

    tokens = cfg.steps * cfg.batch_tokens + extra_tokens(cfg)
    return float(mfu_flops_per_token(cfg.model)) * float(tokens)


def check_plan(spec: SweepSpec, plan: Plan) -> None:
    """Refuse a plan with a non-finite number, more trials than ``limits.max_trials`` or a trial costing more
    than ``limits.max_trial_flops`` (one line naming the study, the limit and how to raise it)."""
    lim = spec.limits
    if plan.n_trials > lim.max_trials:
        raise SpecError(
            f"limits.max_trials: the sweep expands to {plan.n_trials} trials, more than {lim.max_trials};"
            " raise limits.max_trials to run it"
        )
    configs = [(t.study, t.run_cfg) for t in plan.trials] + [(g.study, g.base_cfg) for g in plan.searches]
    for study, cfg in configs:
        check_finite(cfg.model_dump(mode="python"), f"studies[{study}].trial")
        cost = trial_flops(cfg)
        if not cost <= lim.max_trial_flops:
            raise SpecError(
                f"limits.max_trial_flops: a trial of study {study} costs {cost:.3g} training FLOPs "
                f"({cfg.optim.tokens:.3g} tokens), more than the limit {lim.max_trial_flops:.3g} "
                "(1e21 is ~700 H100-hours); raise limits.max_trial_flops to run it"
            )


def expand(spec: SweepSpec) -> Plan:
    """Expand the studies into trials (deduplicated by config hash) and search groups; ``check_plan``."""
    plan = _expand(spec)
    check_plan(spec, plan)
    return plan


def _expand(spec: SweepSpec) -> Plan:
    base0 = _check_depth(spec.base_config(), "base")
    trials: list[Trial] = []
    searches: list[SearchGroup] = []
    seen: set[str] = set()
    for idx, study in enumerate(spec.studies):
        where = f"studies[{idx}]"
        base = _apply(base0, study.overrides, f"{where}.overrides") if study.overrides else base0
        seeds = study.seeds or spec.seeds
        if study.search is not None:
            for i, c in enumerate(study.search.budgets):
                sized = base
                if study.search.models is not None:
                    shape = study.search.models[i]
                    if not isinstance(shape, dict) or not shape:
                        raise SpecError(f"{where}.search.models[{i}]: must be a non-empty mapping of fields")
                    over = _model_overrides(shape)
                    sized = _apply(base, over, f"{where}.search.models[{i}]")
                cfg = _tokens_for_budget(sized, c, f"{where}.search.budgets[{i}]")
                for seed in seeds:
                    searches.append(
                        SearchGroup(study.name, c, _apply(cfg, {"seed": seed}, where), study.search, seed)
                    )
            continue
        # grid values: validate each one alone so the error names the exact value
        grid = study.grid or {}
        for key, values in grid.items():
            for j, v in enumerate(values):
                _apply(base, {key: v}, f"{where}.grid.{key}[{j}]")
        if study.ladder is not None:
            points = _expand_ladder(study, idx, base)
            kind: Literal["grid", "ladder", "search"] = "ladder"
        else:
            points = [(base, None, {})]
            kind = "grid"
        keys = list(grid)
        for cfg, budget, labels in points:
            for combo in itertools.product(*(grid[k] for k in keys)):
                over = dict(zip(keys, combo, strict=True))
                # grid over optim.batch_size in a ladder keeps the compute (tokens) fixed
                run = _apply(cfg, over, f"{where}.grid") if over else cfg
                # a grid over ``seed`` itself replaces the seed list
                for seed in [run.seed] if "seed" in over else seeds:
                    run_s = _apply(run, {"seed": seed}, where)
                    h = run_s.config_hash()
                    if h in seen:
                        continue
                    seen.add(h)
                    run_s = run_s.model_copy(update={"name": f"{spec.name}-{study.name}-{h[:8]}"})
                    trials.append(Trial(study.name, kind, run_s, budget, {**labels, **over, "seed": seed}))
    return Plan(trials, searches)
