"""What the dashboard computes from runs and laws: every law value, interval, budget and recommendation comes
from the law engine (``windtunnel.laws``) and the recommender (``windtunnel.recommend``); this module only
arranges them for the figures.

- law values and 95 % intervals: ``LawSet.predict`` (bootstrap percentiles of the fitted law; laws without
  draws, such as the published ``ling`` set, have lo = hi = value);
- compute budgets: ``windtunnel.laws.base.budget_labels``; the near-optimal band: ``NEAR_OPTIMAL_BAND`` (Ling,
  arXiv 2507.17702, Sec. 3: runs within 0.25 % of the best loss at their budget);
- IsoFLOP profile at one budget (Hoffmann et al. 2022, approach 2, as the engine fits it): the lower envelope
  of the runs, and log L = c0 + c1·u + c2·u², u = ln N − ū, optimum N* = exp(ū − c1 / (2·c2)) when c2 > 0
  (``windtunnel.laws.isoflop.fit_parabolas``);
- the recommendation: ``windtunnel.recommend.policy.recommend_with_policy``, the function behind
  ``windtunnel recommend`` and the end-of-sweep summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from windtunnel.errors import RecommendError
from windtunnel.laws import LawSet
from windtunnel.laws import load_laws as engine_load_laws
from windtunnel.laws.base import budget_labels
from windtunnel.laws.hparam import NEAR_OPTIMAL_BAND
from windtunnel.laws.isoflop import fit_parabolas, lower_envelope
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


@dataclass
class IsoFlopProfile:
    budget: float
    runs: pd.DataFrame
    coeffs: tuple[float, float, float, float] | None  # (c0, c1, c2, ū): log L = c0 + c1·u + c2·u², u = ln N−ū
    n_opt: float | None
    loss_opt: float | None

    def curve(self, points: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """(N, L) along the fitted parabola over the runs' sizes."""
        assert self.coeffs is not None
        c0, c1, c2, centre = self.coeffs
        x = np.linspace(np.log(self.runs["params"].min()), np.log(self.runs["params"].max()), points)
        u = x - centre
        return np.exp(x), np.exp(c0 + c1 * u + c2 * u**2)


def _profile(budget: float, grp: pd.DataFrame, min_points: int) -> IsoFlopProfile:
    env = lower_envelope(grp.reset_index(drop=True), "params")
    logx = np.log(env["params"].to_numpy(dtype=float))
    if len(env) < min_points or np.unique(logx).size < 3:
        return IsoFlopProfile(budget, grp, None, None, None)
    centre = float(logx.mean())
    u_KJ = (logx - centre)[None]
    logL_KJ = np.log(env["loss"].to_numpy(dtype=float))[None]
    c0, c1, c2 = (float(v) for v in fit_parabolas(u_KJ, logL_KJ, np.ones((1, 1, len(env))))[0, 0])
    if not np.isfinite([c0, c1, c2]).all():
        return IsoFlopProfile(budget, grp, None, None, None)
    n_opt = loss_opt = None
    if c2 > 0:
        u_opt = -c1 / (2 * c2)
        n_opt = float(np.exp(u_opt + centre))
        loss_opt = float(np.exp(c0 + c1 * u_opt + c2 * u_opt**2))
    return IsoFlopProfile(budget, grp, (c0, c1, c2, centre), n_opt, loss_opt)


def isoflop_profiles(runs: pd.DataFrame, min_points: int = 3) -> list[IsoFlopProfile]:
    """Per compute budget, the engine's IsoFLOP parabola through the finished runs (module docstring)."""
    df = runs[(runs["state"] == "finished") & np.isfinite(runs["loss"]) & (runs["params"] > 0)]
    df = df.assign(budget=budgets(df))
    return [_profile(float(b), grp, min_points) for b, grp in df.groupby("budget")]


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
