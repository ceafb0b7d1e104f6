"""The next runs of an experiment: candidates the trainer accepts, scored by ``laws.design``.

1. Fit the run table's laws (``fit_laws``: ``parametric`` with its rollout-chosen form and bootstrap, and
   ``lr_opt``/``batch_opt`` where the runs identify them).
2. The target point: the compute-optimal (N, D) of the fitted law at C_target
   (``design.compute_optimal_point`` with k = M/N of the experiment's largest run, so that C = M·D as
   the run table counts compute).
3. Candidates: every model of the experiment's width/depth rule (``validation.shape_models``: n_heads
   steps of head_dim, n_layers = d_model / aspect ratio, d_ffn = ffn_mult·d_model, as the ladder's
   ``LadderRule``) from the smallest run's size up to the target's, times token counts log-spaced from the
   smallest run's D to the target's D; cost = ``expand.trial_flops`` (the trainer's own accounting). Points
   already run (N and D within 2 %) are left out. With ``points`` (a ``trainer.config.PointsConfig``) every
   run is offered twice: as it is, and with the points (``schedule.kind`` = the points' mode), whose rows
   are (N, D_k + branch) for each of its points (``trainer.points.point_specs``) at the run's one cost (WSD
   branches included); a run whose points the trainer refuses (two on one update, one in the warmup), or
   whose first point falls below the smallest D the runs already have (the law is not extrapolated
   downward), is offered without them.
4. ``design.greedy_design`` (one row block per candidate run) with Σ of x = (a, b, e, alpha, beta) from
   the fitted runs' Gauss-Newton information sigma²·(JᵀJ)⁻¹ (default: the same sigma² the new runs carry,
   so old and new runs weigh alike; the bootstrap covariance is the other choice, wider where the fit is
   non-linear), sigma² = the fit's
   in-sample residual variance (at least ``sigma_floor``²); Σ is scaled so that the linearised interval at
   the target equals the law's own (``calibration``), and widths use the law's ``pi95`` sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trainer.config import ConfigError, PointsConfig, RunConfig
from windtunnel.errors import UserError
from windtunnel.laws import design
from windtunnel.orchestrator.spec_target import TargetShape

SIGMA_FLOOR = 2e-3  # one run's log-loss noise is never taken below this (seed noise on the CPU ladders)
N_TOKENS = 8  # token counts per model size in the candidate grid


@dataclass
class Proposal:
    cfg: RunConfig
    params: float
    tokens: int
    flops: float
    width_after: float  # expected pi95 width at the target after this and the earlier proposals
    point_tokens: tuple[int, ...] = ()  # tokens of each run-table row the run gives (its points; () = one)


@dataclass(frozen=True)
class Candidate:
    """A run the design may propose: its config, N, D and the tokens of every row it gives (its points)."""

    cfg: RunConfig
    params: float
    tokens: int
    point_tokens: tuple[int, ...]


def with_points(cfg: RunConfig, points: PointsConfig) -> RunConfig | None:
    """``cfg`` with ``points`` (and ``schedule.kind`` = their mode), or None when the trainer refuses them."""
    over = {"schedule.kind": points.mode, "points": points.model_dump(mode="json", exclude_none=True)}
    try:
        return cfg.with_overrides(over)
    except ConfigError:
        return None


def row_tokens(cfg: RunConfig) -> tuple[int, ...]:
    """Tokens of each run-table row of ``cfg``: D_k + its branch per point (``trainer.points``), else D."""
    from trainer.points import point_specs

    specs = point_specs(cfg)
    if not specs:
        return (cfg.steps * cfg.batch_tokens,)
    return tuple((p.step + p.branch_steps) * cfg.batch_tokens for p in specs)


@dataclass
class ProposalSet:
    target_compute: float
    target_params: float
    target_tokens: float
    predicted: float
    pi95_law: tuple[float, float]  # the law engine's own interval at the target
    width_before: float  # linearised (design) width before the proposals
    proposals: list[Proposal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def width_after(self) -> float:
        return self.proposals[-1].width_after if self.proposals else self.width_before

    @property
    def flops(self) -> float:
        return float(sum(p.flops for p in self.proposals))


def config_from_params(params: dict[str, str]) -> RunConfig:
    """The RunConfig of a trial from its MLflow params (the flattened ``model_dump(mode="json")``, each
    value stored as ``str``)."""
    import ast

    from trainer.config import set_dotted

    data: dict[str, Any] = {}
    for key, text in params.items():
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a plain string such as "cpu"
        set_dotted(data, key, value)
    return RunConfig.from_dict(data)


def shape_of(cfg: RunConfig) -> TargetShape:
    """The width/depth rule a model follows (the ladder's rule, read back from one model)."""
    m = cfg.model
    head_dim = m.head_dim_
    granularity = 2 * m.d_model / m.moe.d_expert if m.moe is not None else None
    return TargetShape(
        head_dim=head_dim,
        aspect_ratio=m.d_model / m.n_layers,
        ffn_mult=m.d_ffn / m.d_model,
        kv_ratio=max(1, m.n_heads // m.n_kv_heads),
        granularity=granularity,
    )


def shape_of_runs(cfgs: list[RunConfig]) -> TargetShape:
    """The width/depth rule of a set of runs (``shape_of`` of the widest), with the aspect ratio read from
    all of them: one model cannot tell a one-layer ladder (every run 1 layer, any width) from a rule of
    d_model / n_layers = its own width; the median d_model / n_layers of the multi-layer runs, or 1e5 (one
    layer at every width the rule reaches) when every run has one layer."""
    if not cfgs:
        raise ValueError("needs at least one run config")
    widest = max(cfgs, key=lambda c: c.model.d_model)
    deep = [c.model.d_model / c.model.n_layers for c in cfgs if c.model.n_layers > 1]
    aspect = float(np.median(deep)) if deep else 1e5
    return shape_of(widest).model_copy(update={"aspect_ratio": aspect})


def model_sizes(
    base: RunConfig, shape: TargetShape, n_min: float, n_max: float
) -> list[tuple[RunConfig, float]]:
    """(config, N) of every model of the rule with N (non-embedding active params) within
    [n_min/1.5, 1.5·n_max]."""
    from trainer.flops import count_params
    from windtunnel.orchestrator.validation import shape_models

    out = []
    for cfg in shape_models(base, shape):
        n = float(count_params(cfg.model).active_nonembed)
        if n > 1.5 * n_max:
            break
        if n >= n_min / 1.5 and all(abs(math.log(n / m)) > 1e-9 for _, m in out):
            out.append((cfg, n))
    return out


def candidates(
    base: RunConfig,
    shape: TargetShape,
    runs: pd.DataFrame,
    n_target: float,
    d_target: float,
    hparams: Any,
    points: PointsConfig | None = None,
) -> list[Candidate]:
    """The candidate grid (module docstring, step 3): every run as it is, and with ``points`` when given."""
    N0, D0 = runs["params"].to_numpy(float), runs["tokens"].to_numpy(float)
    sizes = model_sizes(base, shape, float(N0.min()), max(float(N0.max()), n_target))
    d_hi = max(float(D0.max()), d_target)
    out = []
    for cfg, n in sizes:
        for d in np.geomspace(float(D0.min()), d_hi, N_TOKENS):
            bt = cfg.batch_tokens
            tokens = max(bt, int(round(d / bt)) * bt)
            if np.any((np.abs(np.log(N0 / n)) < 0.02) & (np.abs(np.log(D0 / tokens)) < 0.02)):
                continue  # already run
            try:
                run = cfg.with_overrides({"optim.tokens": tokens, **hparams(cfg, tokens)})
            except ConfigError:
                continue  # e.g. fewer updates than schedule.warmup_steps
            variants = [Candidate(run, n, tokens, row_tokens(run))]
            pointed = with_points(run, points) if points is not None else None
            if pointed is not None and min(row_tokens(pointed)) >= 0.98 * float(D0.min()):
                variants.append(Candidate(pointed, n, tokens, row_tokens(pointed)))
            out += variants
    return out


def law_state(lawset: Any) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(x̂, Σ of the bootstrap, sigma_res, sigma_log of pi95) of the set's ``parametric`` law."""
    law = lawset.laws.get("parametric")
    if law is None:
        why = lawset.errors.get("parametric", "not fitted")
        raise UserError(f"the experiment's runs give no parametric L(N, D) law to design against: {why}")
    c = law.coefficients
    x_hat = np.array([math.log(c["A"]), math.log(c["B"]), math.log(c["E"]), c["alpha"], c["beta"]])
    s = law.samples
    if not s:
        raise UserError("the parametric law has no bootstrap samples: fit with --bootstrap > 0")
    x_RP = np.column_stack(
        [np.log(s["A"]), np.log(s["B"]), np.log(s["E"]), np.asarray(s["alpha"]), np.asarray(s["beta"])]
    )
    pi = law.extra.get("pi95", {})
    return (
        x_hat,
        design.bootstrap_covariance(x_RP),
        float(pi.get("sigma_res", 0.0)),
        float(pi.get("sigma_log", 0.0)),
    )


def hparam_rule(lawset: Any, runs: pd.DataFrame, notes: list[str]) -> Any:
    """cfg, tokens -> {optim.lr, optim.batch_size} from the lr_opt/batch_opt laws the runs identify
    (``fitting.check_optima`` on the per-budget optima of the run table), else {} (the base's values)."""
    from trainer.flops import flops_per_token
    from windtunnel.laws.base import budget_labels
    from windtunnel.orchestrator.fitting import HPARAM_COLUMNS, check_optima

    labels, centers = budget_labels(runs["compute"].to_numpy(float))
    usable = {}
    for name, col in HPARAM_COLUMNS.items():
        law = lawset.laws.get(name)
        if law is None:
            continue
        rows = [
            {"budget": float(centers[lab]), "value": float(v), "loss": float(loss), "status": st}
            for lab, v, loss, st in zip(labels, runs[col], runs["loss"], runs["status"], strict=True)
        ]
        if not check_optima(rows, law.ci95.get("b"))["degenerate"]:
            usable[name] = law
    if not usable:
        notes.append("lr and batch: the experiment's base values (its runs identify no lr_opt/batch_opt law)")
    else:
        notes.append(f"{', '.join(usable)} from the experiment's fitted laws; the rest from its base")

    def rule(cfg: RunConfig, tokens: int) -> dict[str, Any]:
        c = float(flops_per_token(cfg.model)) * tokens
        over: dict[str, Any] = {}
        if "lr_opt" in usable:
            over["optim.lr"] = float(lawset.predict("lr_opt", c)[0])
        if "batch_opt" in usable:
            seqs = float(lawset.predict("batch_opt", c)[0]) / cfg.model.seq_len
            over["optim.batch_size"] = max(1, round(seqs))
        return over

    return rule


def calibration(value: float, lo: float, hi: float, var_lin: float, sigma_log: float) -> float:
    """Factor s that makes the linearised parameter variance match the law's own interval at the target:
    the law's half-width in log loss h = (log hi − log lo)/2 = z·sqrt(s·gᵀΣg + sigma_log²) (``intervals``),
    so s = ((h/z)² − sigma_log²) / gᵀΣg. The design's ratios are kept; its widths speak the law's scale."""
    from windtunnel.laws.intervals import Z95

    h = 0.5 * math.log(hi / lo) if lo > 0 and hi > lo else 0.0
    var_law = max((h / Z95) ** 2 - sigma_log**2, 0.0)
    return var_law / var_lin if var_lin > 0 and var_law > 0 else 1.0


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs a design fits: finished, with a finite loss (UserError when there are none)."""
    finished = runs[(runs["status"] == "finished") & np.isfinite(runs["loss"])].reset_index(drop=True)
    if len(finished) == 0:
        raise UserError("no finished runs to fit")
    return finished


@dataclass
class TargetFit:
    """The fitted law at the target: x̂, its bootstrap Σ, the residual scales, the compute-optimal target
    point (N_t, D_t) and the law's prediction (value, lo, hi) there."""

    lawset: Any
    runs: pd.DataFrame
    x_hat: np.ndarray
    Sigma: np.ndarray
    sigma_res: float
    sigma_log: float
    n_t: float
    d_t: float
    value: float
    lo: float
    hi: float
    k_flops: float

    @property
    def width(self) -> float:
        return self.hi - self.lo


def fit_target(
    runs: pd.DataFrame,
    target_compute: float,
    bootstrap: int = 100,
    seed: int = 0,
    point: tuple[float, float] | None = None,
) -> TargetFit:
    """Fit ``parametric`` (and ``lr_opt``/``batch_opt``) on the finished runs; the law's prediction at the
    compute-optimal point of ``target_compute`` (module docstring, steps 1-2), or at a given (N, D)
    ``point`` (a fixed target run)."""
    from windtunnel.laws.lawset import fit_laws

    finished = finished_runs(runs)
    lawset = fit_laws(finished, laws=["parametric", "lr_opt", "batch_opt"], bootstrap=bootstrap, seed=seed)
    x_hat, Sigma, sigma_res, sigma_log = law_state(lawset)
    top = finished.loc[finished["compute"].idxmax()]
    k_flops = float(top["m"] / top["params"]) if np.isfinite(top["m"]) else 6.0
    if point is None:
        n_t, d_t = design.compute_optimal_point(x_hat, target_compute, k_flops)
    else:
        n_t, d_t = (float(v) for v in point)
    value, lo, hi = (float(v) for v in lawset.predict("parametric", (n_t, d_t)))
    return TargetFit(lawset, finished, x_hat, Sigma, sigma_res, sigma_log, n_t, d_t, value, lo, hi, k_flops)


def propose(
    runs: pd.DataFrame,
    base: RunConfig,
    target_compute: float,
    k: int = 4,
    budget: float = math.inf,
    bootstrap: int = 100,
    seed: int = 0,
    sigma_floor: float = SIGMA_FLOOR,
    shape: TargetShape | None = None,
    point: tuple[float, float] | None = None,
    covariance: str = "gauss-newton",
    points: PointsConfig | None = None,
    point_corr: float = 0.0,
) -> ProposalSet:
    """The ``k`` runs that most lower the target's pi95 width per FLOP (module docstring); ``point`` fixes
    the target's (N, D) instead of the compute-optimal one; ``covariance``: Σ of x̂ from the fitted runs'
    Gauss-Newton information ("gauss-newton", self-consistent with sigma²) or the fit's bootstrap;
    ``points``: runs may give several rows (module docstring, step 3), whose noise about the law has
    correlation ``point_corr`` within a run (0: independent rows, as the law engine fits them)."""
    from windtunnel.orchestrator.expand import trial_flops

    tf = fit_target(runs, target_compute, bootstrap, seed, point)
    g = design.log_loss_jacobian(tf.x_hat, [tf.n_t], [tf.d_t])[0]
    notes = [
        f"target: N = {tf.n_t:.4g}, D = {tf.d_t:.4g} "
        + ("(given)" if point else f"(compute-optimal under the fitted law, C = {tf.k_flops:.3g}*N*D)")
    ]
    rule = hparam_rule(tf.lawset, tf.runs, notes)
    cands = candidates(base, shape or shape_of(base), tf.runs, tf.n_t, tf.d_t, rule, points)
    if not cands:
        raise UserError("no candidate run: the experiment's model rule gives no size in range")
    J = [design.log_loss_jacobian(tf.x_hat, [c.params] * len(c.point_tokens), c.point_tokens) for c in cands]
    cost = np.array([trial_flops(c.cfg) for c in cands])
    sigma2 = max(tf.sigma_res, sigma_floor) ** 2
    if covariance == "gauss-newton":
        J_runs = design.log_loss_jacobian(tf.x_hat, tf.runs["params"], tf.runs["tokens"])
        Sigma = design.gauss_newton_covariance(J_runs, sigma2)
    else:
        Sigma = tf.Sigma
    scale = calibration(tf.value, tf.lo, tf.hi, design.target_variance(Sigma, g), tf.sigma_log)
    # Σ and sigma² both scaled by s: the same picks and variance ratios, variances in the law's scale
    d = design.greedy_design(scale * Sigma, g, J, cost, scale * sigma2, k, budget, rho=point_corr)
    out = ProposalSet(
        target_compute=float(target_compute),
        target_params=tf.n_t,
        target_tokens=tf.d_t,
        predicted=tf.value,
        pi95_law=(tf.lo, tf.hi),
        width_before=tf.width,
        notes=notes,
    )
    # the law's interval is asymmetric in loss; widths after keep its ratio to the symmetric linear form
    lin_before = design.pi95_width(tf.value, d.var_before, tf.sigma_log)
    asym = tf.width / lin_before if tf.width > 0 and lin_before > 0 else 1.0
    for i, var in zip(d.chosen, d.var_after, strict=True):
        c = cands[i]
        width = asym * design.pi95_width(tf.value, var, tf.sigma_log)
        pts = c.point_tokens if c.cfg.points is not None else ()
        out.proposals.append(Proposal(c.cfg, c.params, c.tokens, float(cost[i]), width, pts))
    notes.append(
        f"sigma(one run, log loss) = {math.sqrt(sigma2):.4f}; pi95 residual sigma = {tf.sigma_log:.4f} "
        f"(a floor the linearised design does not lower); linearised variance x {scale:.3g} to match the "
        f"law's interval; {len(cands)} candidates"
        + (f" (each run also with points at {points.at_fractions}, mode {points.mode})" if points else "")
    )
    if len(d.chosen) < k:
        notes.append(f"only {len(d.chosen)} of {k} runs fit in the budget {budget:.3g} FLOPs")
    return out


SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ffn")


def proposal_overrides(p: Proposal) -> dict[str, Any]:
    """The dotted overrides that turn the experiment's base into this proposal (shape, tokens, lr, batch;
    its points and schedule kind when it has points)."""
    m = p.cfg.model
    over: dict[str, Any] = {f"model.{f}": getattr(m, f) for f in SHAPE_FIELDS}
    if m.moe is not None:
        over["model.moe.d_expert"] = m.moe.d_expert
    over.update(
        {"optim.tokens": p.tokens, "optim.lr": p.cfg.optim.lr, "optim.batch_size": p.cfg.optim.batch_size}
    )
    if p.cfg.points is not None:
        over["schedule.kind"] = p.cfg.schedule.kind
        over["points"] = p.cfg.points.model_dump(mode="json", exclude_none=True)
    return over


def sweep_fragment(ps: ProposalSet, label: str = "proposed") -> dict[str, Any]:
    """A sweep YAML ``studies:`` block, one study per proposal (``proposal_overrides`` on the sweep's base;
    ``grid: {seed: [..]}`` keeps the base's seed)."""
    studies = [
        {"name": f"{label}_{j}", "overrides": proposal_overrides(p), "grid": {"seed": [p.cfg.seed]}}
        for j, p in enumerate(ps.proposals)
    ]
    return {"studies": studies}
