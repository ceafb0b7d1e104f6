"""IsoFLOP allocation laws (Chinchilla Approach 2): m_opt, params_opt, d_opt = a·C^b.

Source: Hoffmann et al. 2022 (arXiv 2203.15556, Sec. 3.2, Approach 2) with the per-budget optima and the fit
of Porian et al. 2024 (arXiv 2406.19146, Sec. 3): at every compute budget C_k the optimum X*_k (X = M, N or D)
is the argmin of the Akima interpolant of the IsoFLOP profile, with a bootstrap over the points' noise
(``windtunnel.laws.profile``). Budgets whose observed minimum is at the edge of their sampled sizes are left
out of the exponent fit and named (``EdgeOptimumWarning``, notes ``edge_warning``). The law is the weighted
least-squares fit in log space over the remaining budgets,

    log X*_k = log a + b·log C_k,   weights w_k = 1 / max(s_k, S_MIN)²,

with s_k the bootstrap standard deviation of log X*_k (Porian et al.'s "weighted" fit; equal weights without a
bootstrap). Every noise draw is refitted with the same weights; the ci95 of (a, b) are the draws' 2.5/97.5
percentiles. The 95 % prediction interval of X*(C) (``pi95``, ``intervals.optimum_pi95``) widens that
bootstrap by the scatter of the in-fit optima around the law and the backtest's log error. Used by Ling
"Towards Greater Leverage" (arXiv 2507.17702, Sec. 3: M_opt = 0.1915·C^0.5095).

``fit_parabolas`` gives robust per-budget parabolas (a local curvature summary for the dashboards).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from windtunnel.laws.base import Law, LawError, budget_labels, percentile_ci, relative_errors, seed_mean
from windtunnel.laws.intervals import log_errors, optimum_pi95
from windtunnel.laws.optim import batched_lbfgs, huber
from windtunnel.laws.profile import Optima, isoflop_optima
from windtunnel.laws.registry import FitOptions, LawSpec, power_value, register

PARABOLA_DELTA = 0.01
S_MIN = 1e-3  # floor on a budget's bootstrap std of log X* (in the weights): no budget dominates the fit


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


def lower_envelope(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Keep the best-loss setting per (budget, size): an IsoFLOP point is a size's best-tuned setting at that
    budget (a hyper-parameter sweep at one size then contributes its optimum, not its mistuned runs), its
    loss the mean over seeds (``base.seed_mean``), not the luckiest seed."""
    runs = seed_mean(runs)
    labels, _ = budget_labels(runs["compute"].to_numpy(float))
    keyed = runs.assign(_budget=labels, _size=np.round(np.log(runs[column].to_numpy(float)), 6))
    best = keyed.sort_values("loss").drop_duplicates(["_budget", "_size"]).sort_index()
    return best.drop(columns=["_budget", "_size"]).reset_index(drop=True)


def weighted_loglog_fit(C_K: np.ndarray, xstar_RK: np.ndarray, w_K: np.ndarray) -> np.ndarray:
    """Closed-form weighted least squares of log X*_rk = log a + b·log C_k per row; (R, 2) [a, b]."""
    x_K = np.log(C_K)
    logy_RK = np.log(xstar_RK)
    ok_RK = np.isfinite(logy_RK)
    W_RK = np.where(ok_RK, w_K[None, :], 0.0)
    logy_RK = np.where(ok_RK, logy_RK, 0.0)
    sw = W_RK.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = (W_RK * x_K).sum(1) / sw
        ym = (W_RK * logy_RK).sum(1) / sw
        dx_RK = x_K[None, :] - xm[:, None]
        b = (W_RK * dx_RK * (logy_RK - ym[:, None])).sum(1) / (W_RK * dx_RK**2).sum(1)
    a = np.exp(ym - b * xm)
    out = np.stack([a, b], axis=1)
    out[(W_RK > 0).sum(1) < 2] = np.nan
    return out


def _fit_weights(opt: Optima, use_K: np.ndarray) -> np.ndarray:
    s_K = opt.std_log_K
    if not np.isfinite(s_K[use_K]).all():
        return use_K.astype(float)
    return np.where(use_K, 1.0 / np.maximum(s_K, S_MIN) ** 2, 0.0)


def _optima_notes(opt: Optima, use_K: np.ndarray, w_K: np.ndarray) -> list[dict]:
    rows = []
    for k, C in enumerate(opt.centers_K):
        lo, hi = percentile_ci(opt.xstar_RK[1:, k])
        rows.append(
            {
                "compute": float(C),
                "opt": float(opt.xstar_RK[0, k]),
                "ci95": [lo, hi],
                "std_log": float(opt.std_log_K[k]),
                "weight": float(w_K[k]),
                "edge": bool(opt.edge_K[k]),
                "in_fit": bool(use_K[k]),
                "skipped": opt.reasons.get(k),
            }
        )
    return rows


def fit_isoflop_law(
    runs: pd.DataFrame,
    name: str,
    column: str,
    n_boot: int = 200,
    rng: np.random.Generator | None = None,
    backtest: bool = True,
) -> Law:
    """Fit ``column``_opt = a·C^b from per-budget Akima optima; see the module docstring."""
    rng = np.random.default_rng(0) if rng is None else rng
    runs = lower_envelope(runs, column)
    if len(runs) < 6:
        raise LawError(
            f"needs at least 6 usable (budget, size) points (3 sizes at 2 budgets); got {len(runs)}"
        )
    opt = isoflop_optima(runs, column, n_boot, rng)
    edge_budgets = [float(c) for c in opt.centers_K[opt.edge_K]]
    if edge_budgets:
        warnings.warn(
            f"{name}: IsoFLOP optimum at the edge of the sampled sizes for budgets "
            f"{', '.join(f'{c:.3g}' for c in edge_budgets)}; left out of the exponent fit",
            EdgeOptimumWarning,
            stacklevel=2,
        )
    use_K = np.isfinite(opt.xstar_RK[0]) & ~opt.edge_K
    if use_K.sum() < 2:
        detail = "; ".join(f"budget {opt.centers_K[k]:.3g}: {r}" for k, r in opt.reasons.items())
        detail += "; " * bool(detail and edge_budgets) + (
            f"edge optimum at {', '.join(f'{c:.3g}' for c in edge_budgets)}" if edge_budgets else ""
        )
        raise LawError(
            f"needs bracketed IsoFLOP optima at 2 or more compute budgets; got {int(use_K.sum())} "
            f"of {len(opt.centers_K)} ({detail or 'one budget'})"
        )
    w_K = _fit_weights(opt, use_K)
    coef = weighted_loglog_fit(opt.centers_K, opt.xstar_RK, w_K)
    law = Law(
        name=name,
        form=f"{column}_opt = a * C^b  (Akima IsoFLOP optima in log {column}, weighted log-log fit)",
        coefficients={"a": float(coef[0, 0]), "b": float(coef[0, 1])},
        ci95={"a": percentile_ci(coef[1:, 0]), "b": percentile_ci(coef[1:, 1])},
        n_runs=int(len(runs)),
        run_ids=[str(r) for r in runs["run_id"]],
        samples={"a": coef[1:, 0].tolist(), "b": coef[1:, 1].tolist()} if n_boot else {},
        notes={
            "optima": _optima_notes(opt, use_K, w_K),
            "edge_warning": edge_budgets,
            "size_column": column,
            "noise_sigma_log_loss": opt.sigma,
        },
    )
    if backtest:
        law.backtest = backtest_isoflop(runs, name, column)
    C_in = opt.centers_K[use_K]
    fit_res = np.log(opt.xstar_RK[0, use_K]) - np.log(law.coefficients["a"] * C_in ** law.coefficients["b"])
    law.extra["pi95"] = optimum_pi95(fit_res, 2, law.backtest)
    return law


def backtest_isoflop(runs: pd.DataFrame, name: str, column: str) -> dict:
    """Fit on all budgets but the top; relative error of the predicted optimum vs the top budget's own
    Akima optimum (skipped when that optimum is at the edge of its sizes)."""
    labels, centers = budget_labels(runs["compute"].to_numpy(float))
    if len(centers) < 3:
        return {"skipped": "needs 3 or more compute budgets"}
    low = runs[labels < len(centers) - 1]
    high = lower_envelope(runs[labels == len(centers) - 1].reset_index(drop=True), column)
    top = isoflop_optima(high, column, 0, np.random.default_rng(0))
    if not np.isfinite(top.xstar_RK[0, 0]) or top.edge_K[0]:
        return {"skipped": "the top budget has no bracketed optimum"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EdgeOptimumWarning)
            law = fit_isoflop_law(low.reset_index(drop=True), name, column, n_boot=0, backtest=False)
    except LawError as err:
        return {"skipped": str(err)}
    pred = law.coefficients["a"] * top.centers_K ** law.coefficients["b"]
    return {
        "cut_compute": float(centers[-1] / 10**0.05),
        **relative_errors(pred, top.xstar_RK[0]),
        "log_errors": log_errors(pred, top.xstar_RK[0]),
    }


def _isoflop_spec(name: str, column: str, subset: str, rank: int) -> LawSpec:
    def fit(runs: pd.DataFrame, opts: FitOptions) -> Law:
        return fit_isoflop_law(runs, name, column, n_boot=opts.n_boot, rng=opts.rng)

    return LawSpec(
        name=name,
        columns=("compute", column, "loss"),
        subset=subset,
        fit=fit,
        evaluate=power_value,
        rank=rank,
        signs=(("a", 1), ("b", 1)),  # a larger budget never buys a smaller optimal model or dataset
    )


for _rank, (_base, _column) in enumerate((("m_opt", "m"), ("params_opt", "params"), ("d_opt", "tokens"))):
    register(_isoflop_spec(_base, _column, "primary", 20 + _rank))
    register(_isoflop_spec(f"{_base}_dense", _column, "dense", 23 + _rank))
