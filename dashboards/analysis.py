"""What the dashboard computes from runs and laws: every law value, interval, budget and recommendation comes
from the law engine (``windtunnel.laws``) and the recommender (``windtunnel.recommend``); this module only
arranges them for the figures.

- law values and 95 % intervals: ``LawSet.predict`` (bootstrap percentiles of the fitted law; laws without
  draws, such as the published ``ling`` set, have lo = hi = value);
- compute budgets: ``windtunnel.laws.base.budget_labels``; the near-optimal band: ``NEAR_OPTIMAL_BAND`` (Ling,
  arXiv 2507.17702, Sec. 3: runs within 0.25 % of the best loss at their budget);
- IsoFLOP profile at one budget (Porian et al. 2024, arXiv 2406.19146, Sec. 3, as the engine fits the
  allocation laws): the lower envelope of the runs, the Akima interpolant A_k of log L in u = ln N, the
  optimum N* = exp(argmin_u A_k(u)) with the 95 % interval of its noise draws
  (``windtunnel.laws.profile``); where the law file's ``params_opt`` recorded the budget's optimum, that
  very optimum and interval are shown;
- the recommendation: ``windtunnel.recommend.policy.recommend_with_policy``, the function behind
  ``windtunnel recommend`` and the end-of-sweep summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.interpolate import Akima1DInterpolator

from windtunnel.errors import RecommendError
from windtunnel.laws import LawSet
from windtunnel.laws import load_laws as engine_load_laws
from windtunnel.laws.base import budget_labels, percentile_ci
from windtunnel.laws.hparam import NEAR_OPTIMAL_BAND
from windtunnel.laws.isoflop import lower_envelope
from windtunnel.laws.profile import budget_profiles, isoflop_optima, profile_curves
from windtunnel.recommend import Target
from windtunnel.recommend.policy import recommend_with_policy
from windtunnel.recommend.summary import summary_rows

ALLOCATION_LAWS = ("params_opt", "params_opt_dense")  # drawn on the IsoFLOP chart, one per family
NO_LAWS = "none"


def load_laws(path: str | Path | None) -> LawSet:
    """The law set of a laws.json, or the built-in ``ling`` set; an empty set named ``none`` without a path.
    Raises FileNotFoundError / ValueError (one line) for a missing or malformed file."""
    if path is None:
        return LawSet(name=NO_LAWS)
    try:
        return engine_load_laws(str(path))
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a laws file ({type(err).__name__}: {err})") from None


def budgets(runs: pd.DataFrame) -> pd.Series:
    """Each run's compute budget (the engine's grouping: within 0.05 dex of the group's first run), labelled
    by the group's geometric-mean compute; NaN where compute is missing."""
    c = runs["compute"].to_numpy(dtype=float)
    ok = np.isfinite(c) & (c > 0)
    out = pd.Series(np.nan, index=runs.index)
    if ok.any():
        labels, centers = budget_labels(c[ok])
        out[ok] = centers[labels]
    return out


def near_optimal(runs: pd.DataFrame, band: float = NEAR_OPTIMAL_BAND) -> pd.Series:
    """True where a finished run's loss is within ``band`` (relative) of the best loss at its budget."""
    df = runs.assign(budget=budgets(runs))
    finished = (df["state"] == "finished") & np.isfinite(df["loss"])
    best = df[finished].groupby("budget")["loss"].transform("min")
    out = pd.Series(False, index=runs.index)
    out[best.index] = df.loc[best.index, "loss"] <= best * (1 + band)
    return out


ISOFLOP_DRAWS = 200  # noise draws of the engine's estimator when the law file has no optima to show
OPTIMUM_MATCH_DEX = 0.05  # a law's recorded optimum belongs to the budget whose centre is this close


@dataclass
class IsoFlopProfile:
    """One compute budget's IsoFLOP profile as the law engine estimates it (``windtunnel.laws.profile``).

    ``curve_N``/``curve_L``: the Akima interpolant of the budget's lower envelope; ``n_opt``, ``(n_lo,
    n_hi)``: its argmin and the 95 % percentile interval over the noise draws; ``edge``: the observed minimum
    is the smallest or largest sampled size (not bracketed, left out of the fit); ``source``: the
    ``params_opt`` law whose recorded optima these are, or ``ENGINE_SOURCE`` when computed here."""

    budget: float
    runs: pd.DataFrame
    family: str  # "" when the runs hold one family
    law: str  # the allocation law of this family (params_opt, params_opt_dense)
    curve_N: np.ndarray
    curve_L: np.ndarray
    n_opt: float | None = None
    n_lo: float | None = None
    n_hi: float | None = None
    loss_opt: float | None = None
    edge: bool = False
    in_fit: bool | None = None
    source: str = ""

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, L) along the Akima interpolant over the budget's sampled sizes (empty below 3 sizes)."""
        return self.curve_N, self.curve_L


ENGINE_SOURCE = "engine estimator on the shown runs"


def _family_groups(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(family, allocation law, runs) split as the engine fits them (``LawSpec.subset``): with dense and
    MoE runs, params_opt on the MoE runs and params_opt_dense on the dense ones; else params_opt on all."""
    fam = df["family"].astype(str).str.lower()
    if {"dense", "moe"} <= set(fam):
        return [("moe", "params_opt", df[fam == "moe"]), ("dense", "params_opt_dense", df[fam == "dense"])]
    return [("", "params_opt", df)]


def _law_optimum(laws: LawSet, law: str, budget: float) -> dict[str, Any] | None:
    """The optimum the fitted ``law`` recorded for ``budget`` (its notes' ``optima``), or None."""
    if law not in laws.laws:
        return None
    for row in laws.laws[law].notes.get("optima") or []:
        if abs(np.log10(float(row["compute"]) / budget)) < OPTIMUM_MATCH_DEX and np.isfinite(row["opt"]):
            return row
    return None


def _group_profiles(family: str, law: str, grp: pd.DataFrame, laws: LawSet) -> list[IsoFlopProfile]:
    """The engine's per-budget optima (``isoflop_optima``: Akima argmin, noise draws for the interval)
    and interpolants (``profile_curves``) of one family; a budget's optimum and interval are the ones its
    law recorded when the law file has them."""
    env = lower_envelope(grp.reset_index(drop=True), "params")
    opt = isoflop_optima(env, "params", ISOFLOP_DRAWS, np.random.default_rng(0))
    _, shapes = budget_profiles(env, "params")
    curves = profile_curves(env, "params")
    run_budget = np.log10(grp["compute"].to_numpy(float))
    nearest = np.abs(run_budget[:, None] - np.log10(opt.centers_K)[None]).argmin(axis=1)
    out = []
    for k, C in enumerate(opt.centers_K):
        p = IsoFlopProfile(float(C), grp[nearest == k], family, law, *curves[k])
        recorded = _law_optimum(laws, law, float(C))
        if recorded is not None:
            p.n_opt = float(recorded["opt"])
            p.n_lo, p.n_hi = (np.nan if v is None else float(v) for v in recorded["ci95"])
            p.edge, p.in_fit, p.source = bool(recorded["edge"]), bool(recorded["in_fit"]), f"{law} law"
        elif np.isfinite(opt.xstar_RK[0, k]):
            p.n_opt, (p.n_lo, p.n_hi) = float(opt.xstar_RK[0, k]), percentile_ci(opt.xstar_RK[1:, k])
            p.edge, p.source = bool(opt.edge_K[k]), ENGINE_SOURCE
        u_J, y_J = shapes[k]
        if p.n_opt is not None and u_J.size >= 3 and u_J[0] <= np.log(p.n_opt) <= u_J[-1]:
            p.loss_opt = float(np.exp(Akima1DInterpolator(u_J, y_J)(np.log(p.n_opt))))
        out.append(p)
    return out


def isoflop_profiles(runs: pd.DataFrame, laws: LawSet | None = None) -> list[IsoFlopProfile]:
    """Per family and compute budget, the law engine's IsoFLOP optimum (module docstring): the optima and
    intervals the fitted params_opt law used when ``laws`` has it, else the engine's estimator on ``runs``."""
    laws = laws if laws is not None else LawSet(name=NO_LAWS)
    df = runs[(runs["state"] == "finished") & np.isfinite(runs["loss"]) & (runs["params"] > 0)]
    df = df[np.isfinite(df["compute"]) & (df["compute"] > 0)]
    out: list[IsoFlopProfile] = []
    for family, law, grp in _family_groups(df):
        if len(grp):
            out += _group_profiles(family, law, grp, laws)
    return out


def residuals(runs: pd.DataFrame, laws: LawSet) -> pd.DataFrame:
    """Backtest residuals of the parametric law: observed − predicted loss for finished runs, with
    ``in_fit`` (run was used to fit the law) so held-out runs can be told apart."""
    cols = ["run_id", "sweep", "family", "compute", "loss", "predicted", "residual", "in_fit"]
    if "parametric" not in laws.laws:
        return pd.DataFrame(columns=cols)
    df = runs[
        (runs["state"] == "finished")
        & np.isfinite(runs["loss"])
        & (runs["params"] > 0)
        & (runs["tokens"] > 0)
    ]
    N, D = df["params"].to_numpy(dtype=float), df["tokens"].to_numpy(dtype=float)
    pred = np.asarray(laws.predict("parametric", (N, D))[0], dtype=float)
    fit_ids = set(laws.laws["parametric"].run_ids)
    out = df.assign(predicted=pred, residual=df["loss"] - pred, in_fit=df["run_id"].isin(fit_ids))
    return out[cols]


def leverage_grid(laws: LawSet, compute: float) -> dict[str, Any]:
    """EL over activation ratio A (log grid 1%..100%) for G in {1, 2, 4, 8, 12, 16}, and over G for
    A in {1.6%, 3.1%, 7.8%, 25%}, both at ``compute`` (``LawSet.predict("leverage", (A, G, C))``)."""
    A_grid = np.logspace(-2, 0, 60)
    G_grid = np.logspace(0, np.log2(64), 60, base=2)
    by_A = {
        g: laws.predict("leverage", (A_grid, np.full_like(A_grid, g), np.full_like(A_grid, compute)))
        for g in (1, 2, 4, 8, 12, 16)
    }
    by_G = {
        a: laws.predict("leverage", (np.full_like(G_grid, a), G_grid, np.full_like(G_grid, compute)))
        for a in (0.016, 0.031, 0.078, 0.25)
    }
    return {"A": A_grid, "G": G_grid, "by_A": by_A, "by_G": by_G}


def law_predictions(laws: LawSet, compute: float) -> pd.DataFrame:
    """Each law of C alone (frontier and the power laws) at ``compute``: columns law, value, lo95, hi95."""
    rows = []
    for name in laws.laws:
        if name in ("parametric", "leverage") or name.startswith("steplaw"):
            continue
        v, lo, hi = (float(x) for x in laws.predict(name, float(compute)))
        rows.append({"law": name, "value": v, "lo95": lo, "hi95": hi})
    return pd.DataFrame(rows, columns=["law", "value", "lo95", "hi95"])


@dataclass
class RecommendationView:
    """What the page shows for the target compute: the recommender's table (``summary_rows``, as
    ``windtunnel recommend`` prints it), its notes, and the RunConfig YAML to download."""

    summary: pd.DataFrame  # columns item, value
    yaml_text: str
    filename: str
    note: str  # the policy's notes (where the laws came from; a refusal sentence), or why there is none
    ok: bool = True


def recommendation(laws: LawSet, compute: float) -> RecommendationView:
    """``recommend_with_policy(laws, Target(compute=compute))``: the same laws, completion and extrapolation
    limit as ``windtunnel recommend``."""
    empty = pd.DataFrame(columns=["item", "value"])
    if not laws.laws:
        return RecommendationView(empty, "", "", "no laws: start the dashboard with --laws", ok=False)
    try:
        result = recommend_with_policy(laws, Target(compute=float(compute)))
    except RecommendError as err:
        return RecommendationView(empty, "", "", f"no recommendation: {err}", ok=False)
    summary = result.summary
    rows = pd.DataFrame(summary_rows(summary), columns=["item", "value"])
    return RecommendationView(
        rows,
        result.recommendation.run_config.to_yaml(),
        f"recommended-{compute:.0e}.yaml",
        " ".join(f"note: {n}" for n in summary["notes"]),
    )
