"""IsoFLOP allocation laws (Chinchilla Approach 2): m_opt, params_opt, d_opt = a·C^b.

Source: Hoffmann et al. 2022 (arXiv 2203.15556, Sec. 3.2, Approach 2) as used by Ling "Towards Greater
Leverage" (arXiv 2507.17702, Sec. 3: M_opt = 0.1915·C^0.5095, D_opt = 5.2232·C^0.4905 for MoE). At each
compute
budget k fit a parabola in log size u = log X − ū_k (X = M, N or D):

    log L = c0 + c1·u + c2·u²,   u*_k = −c1 / (2·c2),   X*_k = exp(u*_k + ū_k),

robustly (Huber δ = 0.01 on log loss, from the least-squares parabola), then fit X*_k = a·C_k^b across budgets
with ``powerlaw.fit_powerlaw_batched``. Each budget's optimum gets a 95 % interval from the bootstrap
(resampling runs). A budget whose optimum lies at or beyond the edge of its sampled sizes (the best observed
run is the smallest or the largest size, or u* falls outside the sampled range) is flagged: its optimum is an
extrapolation. Budgets with fewer than 3 distinct sizes or no minimum (c2 ≤ 0) are skipped with a note.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from windtunnel.laws.base import (
    Law,
    LawError,
    bootstrap_weights,
    budget_labels,
    percentile_ci,
    relative_errors,
)
from windtunnel.laws.optim import batched_lbfgs, huber
from windtunnel.laws.powerlaw import fit_powerlaw_batched

PARABOLA_DELTA = 0.01


class EdgeOptimumWarning(UserWarning):
    """An IsoFLOP optimum sits at the edge of its budget's sampled sizes."""


def fit_parabolas(u_KJ: np.ndarray, logL_KJ: np.ndarray, W_RKJ: np.ndarray) -> np.ndarray:
    """Robust parabolas for every (resample r, budget k); returns c_RK3 (NaN where under-determined)."""
    R, K, J = W_RKJ.shape
    W = W_RKJ.reshape(R * K, J)
    u = np.broadcast_to(u_KJ[None], (R, K, J)).reshape(R * K, J)
    y = np.broadcast_to(logL_KJ[None], (R, K, J)).reshape(R * K, J)
    X = np.stack([np.ones_like(u), u, u * u], axis=2)  # (RK, J, 3)
    XtW = X.transpose(0, 2, 1) * W[:, None, :]
    A = XtW @ X
    rhs = (XtW @ y[:, :, None])[:, :, 0]
    distinct = np.array([np.unique(uu[w > 0]).size for uu, w in zip(u, W, strict=True)])
    ok = (distinct >= 3) & (np.abs(np.linalg.det(A)) > 1e-12)
    c = np.full((R * K, 3), np.nan)
    if ok.any():
        c0 = np.linalg.solve(A[ok], rhs[ok][:, :, None])[:, :, 0]
        rows = np.flatnonzero(ok)
        u_s, y_s, W_s = u[rows], y[rows], W[rows]

        def fg(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            uu = u_s[r]
            res = p[:, :1] + p[:, 1:2] * uu + p[:, 2:3] * uu * uu - y_s[r]
            h, dh = huber(res, PARABOLA_DELTA)
            wdh = W_s[r] * dh
            return (W_s[r] * h).sum(1), np.stack([wdh.sum(1), (wdh * uu).sum(1), (wdh * uu * uu).sum(1)], 1)

        c[rows], _, _ = batched_lbfgs(fg, c0, max_iter=200, gtol=1e-12)
    return c.reshape(R, K, 3)


def _padded(runs: pd.DataFrame, column: str, labels: np.ndarray, K: int):
    """Per-budget padded arrays: index_KJ (−1 = pad), u_KJ (centred log size), logL_KJ, centre_K."""
    groups = [np.flatnonzero(labels == k) for k in range(K)]
    J = max(len(g) for g in groups)
    idx = -np.ones((K, J), dtype=int)
    for k, g in enumerate(groups):
        idx[k, : len(g)] = g
    logx = np.log(runs[column].to_numpy(float))
    centre = np.array([logx[g].mean() for g in groups])
    safe = np.where(idx >= 0, idx, 0)
    u = np.where(idx >= 0, logx[safe] - centre[:, None], 0.0)
    logL = np.where(idx >= 0, np.log(runs["loss"].to_numpy(float))[safe], 0.0)
    return idx, u, logL, centre


def isoflop_optima(runs: pd.DataFrame, column: str, W_RN: np.ndarray):
    """Per-budget optima for every resample row: (xstar_RK, centers_K, edge_K, reasons) — see module
    docstring."""
    labels, centers = budget_labels(runs["compute"].to_numpy(float))
    K = len(centers)
    idx, u, logL, centre = _padded(runs, column, labels, K)
    W_RKJ = np.where(idx[None] >= 0, W_RN[:, np.where(idx >= 0, idx, 0)], 0.0)
    c = fit_parabolas(u, logL, W_RKJ)
    with np.errstate(divide="ignore", invalid="ignore"):
        ustar = np.where(c[:, :, 2] > 0, -c[:, :, 1] / (2 * c[:, :, 2]), np.nan)
    xstar = np.exp(ustar + centre[None, :])
    edge = np.zeros(K, dtype=bool)
    reasons: dict[int, str] = {}
    for k in range(K):
        members = idx[k][idx[k] >= 0]
        uk = u[k, : len(members)]
        if not np.isfinite(ustar[0, k]):
            reasons[k] = (
                "fewer than 3 distinct sizes"
                if np.unique(uk).size < 3
                else "no minimum (parabola opens down)"
            )
            continue
        best = np.argmin(logL[k, : len(members)])
        if uk[best] in (uk.min(), uk.max()) or not (uk.min() <= ustar[0, k] <= uk.max()):
            edge[k] = True
    return xstar, centers, edge, reasons


def lower_envelope(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Keep the best-loss run per (budget, size): an IsoFLOP point is a size's best-tuned run at that budget
    (a hyper-parameter sweep at one size then contributes its optimum, not its mistuned runs)."""
    labels, _ = budget_labels(runs["compute"].to_numpy(float))
    keyed = runs.assign(_budget=labels, _size=np.round(np.log(runs[column].to_numpy(float)), 6))
    best = keyed.sort_values("loss").drop_duplicates(["_budget", "_size"]).sort_index()
    return best.drop(columns=["_budget", "_size"]).reset_index(drop=True)


def fit_isoflop_law(
    runs: pd.DataFrame,
    name: str,
    column: str,
    n_boot: int = 200,
    rng: np.random.Generator | None = None,
    backtest: bool = True,
) -> Law:
    """Fit ``column``_opt = a·C^b from IsoFLOP parabolas; see the module docstring."""
    rng = np.random.default_rng(0) if rng is None else rng
    runs = lower_envelope(runs, column)
    if len(runs) < 6:
        raise LawError(
            f"needs at least 6 usable (budget, size) points (3 sizes at 2 budgets); got {len(runs)}"
        )
    W = bootstrap_weights(len(runs), n_boot, rng)
    xstar, centers, edge, reasons = isoflop_optima(runs, column, W)
    valid = np.isfinite(xstar[0])
    if valid.sum() < 2:
        detail = "; ".join(f"budget {centers[k]:.3g}: {r}" for k, r in reasons.items())
        raise LawError(
            f"needs IsoFLOP optima at 2 or more compute budgets; got {int(valid.sum())} "
            f"of {len(centers)} ({detail or 'one budget'})"
        )
    coef = fit_powerlaw_batched(centers[valid], xstar[:, valid], np.ones((W.shape[0], int(valid.sum()))))
    edge_budgets = [float(centers[k]) for k in np.flatnonzero(edge)]
    if edge_budgets:
        warnings.warn(
            f"{name}: IsoFLOP optimum at the edge of the sampled sizes for budgets {edge_budgets}",
            EdgeOptimumWarning,
            stacklevel=2,
        )
    optima = []
    for k in range(len(centers)):
        lo, hi = percentile_ci(xstar[1:, k]) if n_boot else (float("nan"), float("nan"))
        optima.append(
            {
                "compute": float(centers[k]),
                "opt": float(xstar[0, k]),
                "ci95": [lo, hi],
                "edge": bool(edge[k]),
                "skipped": reasons.get(k),
            }
        )
    law = Law(
        name=name,
        form=f"{column}_opt = a * C^b  (IsoFLOP parabolas in log {column}, Chinchilla Approach 2)",
        coefficients={"a": float(coef[0, 0]), "b": float(coef[0, 1])},
        ci95={"a": percentile_ci(coef[1:, 0]), "b": percentile_ci(coef[1:, 1])},
        n_runs=int(len(runs)),
        run_ids=[str(r) for r in runs["run_id"]],
        samples={"a": coef[1:, 0].tolist(), "b": coef[1:, 1].tolist()} if n_boot else {},
        notes={"optima": optima, "edge_warning": edge_budgets, "size_column": column},
    )
    if backtest:
        law.backtest = backtest_isoflop(runs, name, column)
    return law


def backtest_isoflop(runs: pd.DataFrame, name: str, column: str) -> dict:
    """Fit on all budgets but the top; relative error of the predicted optimum vs the top budget's
    parabola optimum."""
    labels, centers = budget_labels(runs["compute"].to_numpy(float))
    if len(centers) < 3:
        return {"skipped": "needs 3 or more compute budgets"}
    low = runs[labels < len(centers) - 1]
    high = lower_envelope(runs[labels == len(centers) - 1].reset_index(drop=True), column)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EdgeOptimumWarning)
            law = fit_isoflop_law(low.reset_index(drop=True), name, column, n_boot=0, backtest=False)
    except LawError as err:
        return {"skipped": str(err)}
    xstar, c_high, _, _ = isoflop_optima(high, column, np.ones((1, len(high))))
    pred = law.coefficients["a"] * c_high ** law.coefficients["b"]
    return {"cut_compute": float(centers[-1] / 10**0.05), **relative_errors(pred, xstar[0])}
