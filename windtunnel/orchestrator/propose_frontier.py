"""The next compute budgets for the ``frontier`` law: the IsoFLOP blocks that most narrow its 95 % interval
at a target per FLOP.

The frontier law L*(C) = E + A·C^(−alpha) is fitted to the best expected loss of each compute budget
(``powerlaw.fit_frontier_law``) and is what the validation study's targets are predicted with when its
backtest wins (``predict.choose_law``). A single run adds nothing to it unless it is its budget's best, so a
new frontier point costs a block: ``n_sizes`` models of the experiment's shape rule bracketing the
compute-optimal size M_opt(C) of the ``m_opt`` law, each trained on C/M tokens, at the LR of the ``lr_opt``
law where the runs identify it (``propose.hparam_rule``), times each of ``lr_factors`` (a small LR search
per block, as the ladder's own).

Design (``laws.design``: linearised c-optimal, Atkinson, Donev & Tobias 2007, ch. 9 and 10.2):
x = (log A, log E, alpha); Σ the covariance of the law's bootstrap refits (``design.bootstrap_covariance``)
scaled so that the linearised interval at the target equals the law's own (``propose.calibration``); a
block at budget C_b adds one row j(C_b) (``design.frontier_log_jacobian``) with the noise variance of one
frontier point, sigma² = max(sigma_res, ``SIGMA_FLOOR``)² (sigma_res the frontier fit's in-sample log
residual), at the FLOPs of all its runs (``expand.trial_flops``). ``design.greedy_design`` picks up to k
blocks. Candidate budgets are ``n_budgets`` values log-spaced from twice the largest budget already run to
a third of the target (a block at the target would be the target run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trainer.config import ConfigError, RunConfig
from windtunnel.errors import UserError
from windtunnel.laws import design
from windtunnel.orchestrator.propose import SIGMA_FLOOR, calibration, finished_runs, hparam_rule, shape_of
from windtunnel.orchestrator.spec_target import TargetShape


@dataclass
class FrontierState:
    """The fitted frontier law at a target: x̂ = (log A, log E, alpha), the bootstrap Σ, the residual
    scales, and the law's prediction (value, lo, hi) at C_target."""

    x_hat: np.ndarray
    Sigma: np.ndarray
    sigma_res: float
    sigma_log: float
    target_compute: float
    value: float
    lo: float
    hi: float

    @property
    def width(self) -> float:
        return self.hi - self.lo


def frontier_state(lawset: Any, target_compute: float) -> FrontierState:
    """The ``frontier`` law of ``lawset`` in design coordinates (UserError when absent or unbootstrapped)."""
    law = lawset.laws.get("frontier")
    if law is None:
        why = lawset.errors.get("frontier", "not fitted")
        raise UserError(f"the experiment's runs give no frontier law to design against: {why}")
    s = law.samples
    if not s:
        raise UserError("the frontier law has no bootstrap samples: fit with --bootstrap > 0")
    c = law.coefficients
    with np.errstate(divide="ignore"):
        x_hat = np.array([math.log(c["A"]), math.log(c["E"]) if c["E"] > 0 else -700.0, c["alpha"]])
        x_RP = np.column_stack([np.log(s["A"]), np.log(s["E"]), np.asarray(s["alpha"], float)])
    x_RP[:, 1] = np.maximum(x_RP[:, 1], -700.0)  # E = 0 refits: a floor, not -inf
    pi = law.extra.get("pi95", {})
    value, lo, hi = (float(v) for v in lawset.predict("frontier", target_compute))
    return FrontierState(
        x_hat=x_hat,
        Sigma=design.bootstrap_covariance(x_RP),
        sigma_res=float(pi.get("sigma_res", 0.0)),
        sigma_log=float(pi.get("sigma_log", 0.0)),
        target_compute=float(target_compute),
        value=value,
        lo=lo,
        hi=hi,
    )


@dataclass
class BudgetBlock:
    """One candidate frontier point: the IsoFLOP runs at ``budget`` and their FLOPs in all."""

    budget: float
    runs: list[RunConfig]
    flops: float


@dataclass
class BlockChoice:
    """The blocks a design picked (in order), the law's interval width at the target before, and the
    expected width after each pick (the law's scale, its asymmetry kept), and the width of the interval's
    floor (the coefficients known exactly)."""

    chosen: list[int] = field(default_factory=list)
    width_before: float = 0.0
    width_after: list[float] = field(default_factory=list)
    width_floor: float = 0.0  # what the residual and backtest scale alone give: no block lowers it


def choose_blocks(
    state: FrontierState,
    budgets_B: np.ndarray,
    cost_B: np.ndarray,
    k: int,
    budget: float = math.inf,
    sigma_floor: float = SIGMA_FLOOR,
) -> BlockChoice:
    """Up to ``k`` blocks (a frontier point at each of ``budgets_B``, costing ``cost_B`` FLOPs) that most
    lower the frontier law's interval at the target per FLOP, within ``budget`` (module docstring)."""
    g = design.frontier_log_jacobian(state.x_hat, [state.target_compute])[0]  # ∂ log L*(C_target) / ∂x
    J_BP = design.frontier_log_jacobian(state.x_hat, budgets_B)
    sigma2 = max(state.sigma_res, sigma_floor) ** 2
    scale = calibration(
        state.value, state.lo, state.hi, design.target_variance(state.Sigma, g), state.sigma_log
    )
    d = design.greedy_design(
        scale * state.Sigma, g, J_BP, np.asarray(cost_B, float), scale * sigma2, k, budget
    )
    lin_before = design.pi95_width(state.value, d.var_before, state.sigma_log)
    asym = state.width / lin_before if state.width > 0 and lin_before > 0 else 1.0
    return BlockChoice(
        chosen=list(d.chosen),
        width_before=state.width,
        width_after=[asym * design.pi95_width(state.value, v, state.sigma_log) for v in d.var_after],
        width_floor=asym * design.pi95_width(state.value, 0.0, state.sigma_log),
    )


def budget_blocks(
    lawset: Any,
    runs: pd.DataFrame,
    base: RunConfig,
    shape: TargetShape,
    budgets: np.ndarray,
    n_sizes: int = 3,
    lr_factors: tuple[float, ...] = (1.0,),
    notes: list[str] | None = None,
) -> list[BudgetBlock]:
    """The IsoFLOP block of every budget (module docstring): ``n_sizes`` consecutive models of the shape rule
    centred on the one whose FLOPs per token is nearest M_opt(C) (``m_opt`` law), D = C / M in whole
    batches, lr and batch from ``hparam_rule``, each run once per LR factor."""
    from trainer.flops import flops_per_token
    from windtunnel.orchestrator.expand import trial_flops
    from windtunnel.orchestrator.validation import shape_models

    if "m_opt" not in lawset.laws:
        why = lawset.errors.get("m_opt", "not fitted")
        raise UserError(f"the experiment's runs give no m_opt law to size the new budgets with: {why}")
    rule = hparam_rule(lawset, runs, notes if notes is not None else [])
    models = [(cfg, float(flops_per_token(cfg.model))) for cfg in shape_models(base, shape)]
    if len(models) < n_sizes:
        raise UserError(f"the shape rule gives {len(models)} models, fewer than the {n_sizes} a block needs")
    blocks = []
    for C in np.asarray(budgets, float):
        m_opt = float(lawset.predict("m_opt", C)[0])
        i = int(np.argmin([abs(math.log(m / m_opt)) for _, m in models]))
        first = min(max(0, i - n_sizes // 2), len(models) - n_sizes)
        cfgs = []
        for cfg, m in models[first : first + n_sizes]:
            bt = cfg.batch_tokens
            tokens = max(bt, int(round(C / m / bt)) * bt)
            try:
                run = cfg.with_overrides({"optim.tokens": tokens, **rule(cfg, tokens)})
                cfgs += [run.with_overrides({"optim.lr": run.optim.lr * f}) for f in lr_factors]
            except ConfigError:
                continue  # e.g. fewer updates than schedule.warmup_steps
        if cfgs:
            blocks.append(BudgetBlock(float(C), cfgs, float(sum(trial_flops(c) for c in cfgs))))
    return blocks


def propose_budgets(
    runs: pd.DataFrame,
    base: RunConfig,
    target_compute: float,
    k: int = 1,
    budget: float = math.inf,
    bootstrap: int = 100,
    seed: int = 0,
    shape: TargetShape | None = None,
    n_budgets: int = 6,
    n_sizes: int = 3,
    lr_factors: tuple[float, ...] = (1.0,),
) -> Any:
    """The runs of the ``k`` budget blocks that most narrow the frontier law's interval at ``target_compute``
    per FLOP (module docstring), as a ``propose.ProposalSet`` (every run of a block carries the block's
    expected width after it)."""
    from trainer.flops import count_params
    from windtunnel.laws.lawset import fit_laws
    from windtunnel.orchestrator.expand import trial_flops
    from windtunnel.orchestrator.propose import Proposal, ProposalSet

    finished = finished_runs(runs)
    lawset = fit_laws(
        finished, laws=["frontier", "m_opt", "lr_opt", "batch_opt"], bootstrap=bootstrap, seed=seed
    )
    state = frontier_state(lawset, target_compute)
    c_max = float(finished["compute"].max())
    if not target_compute > 6 * c_max:
        raise UserError(
            f"--target {target_compute:.3g}: the frontier design adds budgets between 2x the largest run "
            f"({c_max:.3g} FLOPs) and a third of the target; give a target above {6 * c_max:.3g}"
        )
    notes = [f"frontier law at C = {target_compute:.4g}: {state.value:.4f} [{state.lo:.4f}, {state.hi:.4f}]"]
    budgets = np.geomspace(2 * c_max, target_compute / 3, n_budgets)
    blocks = budget_blocks(
        lawset, finished, base, shape or shape_of(base), budgets, n_sizes, lr_factors, notes
    )
    if not blocks:
        raise UserError("no candidate block: the shape rule gives no runnable model at the new budgets")
    choice = choose_blocks(
        state, np.array([b.budget for b in blocks]), np.array([b.flops for b in blocks]), k, budget
    )
    out = ProposalSet(
        target_compute=float(target_compute),
        target_params=math.nan,
        target_tokens=math.nan,
        predicted=state.value,
        pi95_law=(state.lo, state.hi),
        width_before=state.width,
        notes=notes,
    )
    for i, width in zip(choice.chosen, choice.width_after, strict=True):
        for cfg in blocks[i].runs:
            n = float(count_params(cfg.model).active_nonembed)
            out.proposals.append(Proposal(cfg, n, cfg.optim.tokens, trial_flops(cfg), width))
    notes.append(
        f"the residual and backtest scale (sigma_log {state.sigma_log:.4f}) alone make a width of about "
        f"{choice.width_floor:.4f}: the design lowers the coefficients' part "
        "only; the backtest error, a misfit of the power law across budgets, is re-measured once a new top "
        "budget exists (benchmarks/design_frontier.py replays this on the validation ladder)"
    )
    picked = ", ".join(f"{blocks[i].budget:.3g}" for i in choice.chosen)
    notes.append(
        f"{len(blocks)} candidate budgets {budgets[0]:.3g}..{budgets[-1]:.3g} FLOPs, each {n_sizes} sizes "
        f"around M_opt x {len(lr_factors)} lr; picked: {picked or 'none'}"
    )
    if len(choice.chosen) < k:
        notes.append(f"only {len(choice.chosen)} of {k} blocks fit in the budget {budget:.3g} FLOPs")
    return out
