"""Per-budget IsoFLOP optima: Akima interpolation of each profile, with a bootstrap over the points' noise.

Source: Porian et al. 2024, "Resolving Discrepancies in Compute-Optimal Scaling of Language Models" (arXiv
2406.19146, Sec. 3 and App. C; repo formll/resolving-scaling-law-discrepancies, ``analysis.py``). At compute
budget k the IsoFLOP profile is the set of points (u_j, y_j) = (log X_j, log L_j), X = N, M or D, sorted by u.
The optimum is the minimiser of the Akima interpolant A_k(u) through the points,

    u*_k = argmin_{u in [u_1, u_J]} A_k(u),     X*_k = exp(u*_k),

which follows a wide, asymmetric profile where one parabola through every point does not. A budget whose
observed minimum is its smallest or largest sampled size is an *edge* budget: its optimum is not bracketed.

Uncertainty: draws r = 1..R perturb every point's log loss, y_rj = y_j + sigma·eps_rj (eps ~ N(0, 1)), and
re-take the Akima argmin. sigma is the points' noise, estimated from the data as the pooled residual standard
deviation of least-squares parabolas through the ``WINDOW_POINTS`` points nearest (in rank) to each budget's
observed minimum: sigma² = Σ_k Σ_j r_kj² / Σ_k (n_k − 3).

Sizes closer than ``MERGE_LOG_GAP`` in u (1 %: e.g. 510,983 / 513,344 / 515,342 parameters from one shape
rule with different vocabularies) are first merged into one point (mean u, mean y): an interpolant through
near-coincident points with different losses swings far outside the data between them. A profile with
more than ``MAX_PROFILE_POINTS`` sizes (a dense sweep, neighbouring points closer than
the noise) is first condensed into that many equal-width bins in u (mean u, mean y per bin) — a smoothing step
that leaves a sparse profile unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.interpolate import Akima1DInterpolator

from windtunnel.laws.base import budget_labels

MAX_PROFILE_POINTS = 24
MERGE_LOG_GAP = 0.01
WINDOW_POINTS = 5
GRID_POINTS = 1001


@dataclass
class Optima:
    """Per-budget optima: ``xstar_RK`` row 0 from the data, rows 1..R from noise draws; NaN where skipped."""

    centers_K: np.ndarray
    xstar_RK: np.ndarray
    edge_K: np.ndarray
    sigma: float
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def std_log_K(self) -> np.ndarray:
        """Bootstrap standard deviation of log X*_k (NaN without draws)."""
        if self.xstar_RK.shape[0] < 3:
            return np.full(len(self.centers_K), np.nan)
        with np.errstate(invalid="ignore"):
            return np.nanstd(np.log(self.xstar_RK[1:]), axis=0)


def merge_close(u_J: np.ndarray, y_J: np.ndarray, gap: float = MERGE_LOG_GAP):
    """Sorted (u, y) with every run of sizes whose u lies within ``gap`` of its group's first replaced by
    the group's mean u and mean y."""
    order = np.argsort(u_J)
    u_J, y_J = u_J[order], y_J[order]
    group_J = np.zeros(len(u_J), dtype=int)
    start = u_J[0] if len(u_J) else 0.0
    for j in range(1, len(u_J)):
        new_group = u_J[j] - start >= gap
        group_J[j] = group_J[j - 1] + int(new_group)
        start = u_J[j] if new_group else start
    count_G = np.bincount(group_J)
    return np.bincount(group_J, weights=u_J) / count_G, np.bincount(group_J, weights=y_J) / count_G


def condense(u_J: np.ndarray, y_J: np.ndarray, max_points: int = MAX_PROFILE_POINTS):
    """(u, y) sorted by u, near-coincident sizes merged (``merge_close``); with more than ``max_points``
    distinct sizes left, bin means over equal-width u bins."""
    if len(u_J) == 0:
        return u_J, y_J
    u_J, y_J = merge_close(u_J, y_J)
    if len(u_J) <= max_points:
        return u_J, y_J
    edges = np.linspace(u_J[0], u_J[-1], max_points + 1)
    bin_J = np.clip(np.searchsorted(edges, u_J, side="right") - 1, 0, max_points - 1)
    count_B = np.bincount(bin_J, minlength=max_points)
    keep = count_B > 0
    u_B = np.bincount(bin_J, weights=u_J, minlength=max_points)[keep] / count_B[keep]
    y_B = np.bincount(bin_J, weights=y_J, minlength=max_points)[keep] / count_B[keep]
    return u_B, y_B


def budget_profiles(
    runs: pd.DataFrame, column: str
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """(centres_K, [(u_J, y_J) per budget]): condensed log-size / log-loss profiles of each compute budget."""
    labels, centers = budget_labels(runs["compute"].to_numpy(float))
    u_N = np.log(runs[column].to_numpy(float))
    y_N = np.log(runs["loss"].to_numpy(float))
    return centers, [condense(u_N[labels == k], y_N[labels == k]) for k in range(len(centers))]


def noise_scale(profiles: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Pooled residual std of parabolas through the WINDOW_POINTS points around each observed minimum."""
    ssr, dof = 0.0, 0
    for u_J, y_J in profiles:
        if len(u_J) <= 3:
            continue
        j = int(np.argmin(y_J))
        lo = int(np.clip(j - WINDOW_POINTS // 2, 0, max(len(u_J) - WINDOW_POINTS, 0)))
        u_W, y_W = u_J[lo : lo + WINDOW_POINTS], y_J[lo : lo + WINDOW_POINTS]
        coef = np.polyfit(u_W, y_W, 2)
        ssr += float(((np.polyval(coef, u_W) - y_W) ** 2).sum())
        dof += len(u_W) - 3
    return float(np.sqrt(ssr / dof)) if dof > 0 else 0.0


def akima_argmin(u_J: np.ndarray, y_JR: np.ndarray) -> np.ndarray:
    """u*_r = argmin of the Akima interpolant of column r of y_JR over [u_1, u_J], on a GRID_POINTS grid."""
    grid_G = np.linspace(u_J[0], u_J[-1], GRID_POINTS)
    vals_GR = Akima1DInterpolator(u_J, y_JR, axis=0)(grid_G)
    return grid_G[np.argmin(vals_GR, axis=0)]


def isoflop_optima(runs: pd.DataFrame, column: str, n_boot: int, rng: np.random.Generator) -> Optima:
    """Per-budget optima of ``column`` (one row per (budget, size): see ``isoflop.lower_envelope``)."""
    centers, profiles = budget_profiles(runs, column)
    sigma = noise_scale(profiles)
    K = len(centers)
    xstar_RK = np.full((n_boot + 1, K), np.nan)
    edge_K = np.zeros(K, dtype=bool)
    reasons: dict[int, str] = {}
    for k, (u_J, y_J) in enumerate(profiles):
        if np.unique(u_J).size < 3:
            reasons[k] = f"fewer than 3 distinct sizes ({np.unique(u_J).size})"
            continue
        j = int(np.argmin(y_J))
        edge_K[k] = j in (0, len(u_J) - 1)
        y_JR = y_J[:, None] + sigma * rng.standard_normal((len(y_J), n_boot + 1))
        y_JR[:, 0] = y_J
        xstar_RK[:, k] = np.exp(akima_argmin(u_J, y_JR))
    return Optima(centers_K=centers, xstar_RK=xstar_RK, edge_K=edge_K, sigma=sigma, reasons=reasons)


def profile_curves(
    runs: pd.DataFrame, column: str, n_points: int = 60
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per budget, the Akima interpolant the optima are taken from, as (X_G, loss_G) on ``n_points`` sizes
    spanning the sampled range (empty arrays where a budget has fewer than 3 sizes): for figures."""
    _, profiles = budget_profiles(runs, column)
    curves = []
    for u_J, y_J in profiles:
        if u_J.size < 3:
            curves.append((np.array([]), np.array([])))
            continue
        grid_G = np.linspace(u_J[0], u_J[-1], n_points)
        curves.append((np.exp(grid_G), np.exp(Akima1DInterpolator(u_J, y_J)(grid_G))))
    return curves
