"""Optimal learning rate and batch size versus compute: lr_opt = a·C^b, batch_opt = a·C^b.

Source: Ling "Towards Greater Leverage" (arXiv 2507.17702, Sec. 2.2; η_opt = 1.1576·C^−0.1529,
B_opt = 0.0694·C^0.3644) and DeepSeek LLM (arXiv 2401.02954, Sec. 3.1): at every compute budget take the runs
whose loss is within a near-optimal band, L ≤ (1 + band)·L_best (band = 0.25 %), and fit a power law in C to
**all the band's runs** (as Ling does: every near-optimal (C, η) pair is one point), with the robust Huber
fit of ``powerlaw.fit_powerlaw_batched``. Bootstrap: runs are resampled; the best loss and the band are
recomputed inside every resample.

Backtest: fit on budgets below the cut, compare the prediction at each held-out budget with the observed
optimum there (geometric mean of the band's values).

95 % prediction interval (``pi95``, ``intervals.optimum_pi95``): the bootstrap widened by the scatter of the
per-budget observed optima around the law (2 fitted coefficients) and the backtest's log error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from windtunnel.laws.base import (
    Law,
    LawError,
    bootstrap_weight_blocks,
    budget_labels,
    percentile_ci,
    relative_errors,
)
from windtunnel.laws.intervals import log_errors, optimum_pi95
from windtunnel.laws.powerlaw import fit_powerlaw_batched
from windtunnel.laws.registry import FitOptions, LawSpec, power_value, register

NEAR_OPTIMAL_BAND = 0.0025


def band_mask(loss_N: np.ndarray, budget_N: np.ndarray, W_RN: np.ndarray, band: float) -> np.ndarray:
    """mask_RN: run i is in resample r's near-optimal band of its budget (weight > 0, loss ≤
    (1+band)·best)."""
    present = W_RN > 0
    masked = np.where(present, loss_N[None, :], np.inf)
    best_RN = np.empty_like(masked)
    for k in np.unique(budget_N):
        cols = budget_N == k
        best_RN[:, cols] = masked[:, cols].min(axis=1, keepdims=True)
    return present & (loss_N[None, :] <= (1.0 + band) * best_RN)


def observed_optima(runs: pd.DataFrame, column: str, band: float) -> tuple[np.ndarray, np.ndarray]:
    """Per budget: (compute, geometric mean of ``column`` over the near-optimal band)."""
    labels, centers = budget_labels(runs["compute"].to_numpy())
    mask = band_mask(runs["loss"].to_numpy(), labels, np.ones((1, len(runs))), band)[0]
    vals = np.log(runs[column].to_numpy())
    opt = np.array([np.exp(vals[mask & (labels == k)].mean()) for k in range(len(centers))])
    return centers, opt


def fit_hparam_law(
    runs: pd.DataFrame,
    name: str,
    column: str,
    n_boot: int = 200,
    rng: np.random.Generator | None = None,
    band: float = NEAR_OPTIMAL_BAND,
    backtest: bool = True,
) -> Law:
    """Fit ``column`` (lr or batch_tokens) = a·C^b on each budget's near-optimal band; see the module
    docstring."""
    rng = np.random.default_rng(0) if rng is None else rng
    if len(runs) < 3:
        raise LawError(f"needs at least 3 usable runs with compute, {column}, loss; got {len(runs)}")
    C = runs["compute"].to_numpy(float)
    y = runs[column].to_numpy(float)
    L = runs["loss"].to_numpy(float)
    labels, centers = budget_labels(C)
    if len(centers) < 2:
        raise LawError(f"needs runs at 2 or more compute budgets; all {len(runs)} runs share one budget")
    coef_blocks, mask0 = [], None
    for W in bootstrap_weight_blocks(len(runs), n_boot, rng):  # bounded memory on large tables
        mask = band_mask(L, labels, W, band)
        mask0 = mask[0] if mask0 is None else mask0
        coef_blocks.append(fit_powerlaw_batched(C, y, W * mask))
    coef_R2 = np.concatenate(coef_blocks)
    if not np.isfinite(coef_R2[0]).all():
        raise LawError(f"the near-optimal band has a single distinct compute value for {column}")
    a_R, b_R = coef_R2[1:, 0], coef_R2[1:, 1]
    band_ids = runs["run_id"].to_numpy()[mask0]
    law = Law(
        name=name,
        form=f"{column} = a * C^b  (runs within {band:.2%} of the best loss per budget)",
        coefficients={"a": float(coef_R2[0, 0]), "b": float(coef_R2[0, 1])},
        ci95={"a": percentile_ci(a_R), "b": percentile_ci(b_R)},
        n_runs=int(len(runs)),
        run_ids=[str(r) for r in band_ids],
        samples={"a": a_R.tolist(), "b": b_R.tolist()} if n_boot else {},
        notes={"band": band, "n_band_runs": int(mask0.sum()), "n_budgets": int(len(centers))},
    )
    if backtest:
        law.backtest = backtest_hparam(runs, name, column, band)
    c_obs, y_obs = observed_optima(runs, column, band)
    fit_res = np.log(y_obs) - np.log(law.coefficients["a"] * c_obs ** law.coefficients["b"])
    law.extra["pi95"] = optimum_pi95(fit_res, 2, law.backtest)
    return law


def backtest_hparam(runs: pd.DataFrame, name: str, column: str, band: float) -> dict:
    """Fit on all budgets but the top one; relative error of the predicted optimum at the top budget."""
    labels, centers = budget_labels(runs["compute"].to_numpy(float))
    if len(centers) < 3:
        return {"skipped": "needs 3 or more compute budgets"}
    cut = centers[-1] / 10**0.05
    low, high = runs[labels < len(centers) - 1], runs[labels == len(centers) - 1]
    try:
        law = fit_hparam_law(low, name, column, n_boot=0, band=band, backtest=False)
    except LawError as err:
        return {"skipped": str(err)}
    c_obs, y_obs = observed_optima(high, column, band)
    pred = law.coefficients["a"] * c_obs ** law.coefficients["b"]
    return {"cut_compute": float(cut), **relative_errors(pred, y_obs), "log_errors": log_errors(pred, y_obs)}


def fit_steplaw(runs: pd.DataFrame, band: float = NEAR_OPTIMAL_BAND) -> dict[str, float]:
    """StepFun's form (Li et al. 2025, "Predictable Scale", arXiv 2503.04715, Eq. 1–2):

        lr(N, D) = a · N^alpha · D^beta,    batch_tokens(D) = c · D^gamma,

    fitted as the authors' ``fit_tool.py`` does: per (N, D) cell keep the runs within ``band`` of the cell's
    best loss, then ordinary least squares of ln lr on (1, ln N, ln D) and of ln batch on (1, ln D) over all
    kept runs. Returns {a, alpha, beta, c, gamma, n_cells, n_band_runs}. (Plain point estimate; the laws.json
    laws ``steplaw_lr``/``steplaw_batch`` with ci95 and backtest are in ``windtunnel.laws.steplaw``.)
    """
    cells = runs.groupby(["params", "tokens"])["loss"].transform("min")
    keep = runs["loss"] <= (1.0 + band) * cells
    sel = runs[keep]
    if sel[["params", "tokens"]].drop_duplicates().shape[0] < 3:
        raise LawError("the StepFun form needs 3 or more (params, tokens) cells")
    lnN, lnD = np.log(sel["params"].to_numpy(float)), np.log(sel["tokens"].to_numpy(float))
    X = np.stack([np.ones_like(lnN), lnN, lnD], axis=1)
    lr_coef = np.linalg.lstsq(X, np.log(sel["lr"].to_numpy(float)), rcond=None)[0]
    bs_coef = np.linalg.lstsq(X[:, [0, 2]], np.log(sel["batch_tokens"].to_numpy(float)), rcond=None)[0]
    return {
        "a": float(np.exp(lr_coef[0])),
        "alpha": float(lr_coef[1]),
        "beta": float(lr_coef[2]),
        "c": float(np.exp(bs_coef[0])),
        "gamma": float(bs_coef[1]),
        "n_cells": int(sel[["params", "tokens"]].drop_duplicates().shape[0]),
        "n_band_runs": int(len(sel)),
    }


def _hparam_spec(name: str, column: str, rank: int) -> LawSpec:
    def fit(runs: pd.DataFrame, opts: FitOptions) -> Law:
        return fit_hparam_law(runs, name, column, n_boot=opts.n_boot, rng=opts.rng, band=opts.band)

    return LawSpec(
        name=name,
        columns=("compute", column, "loss"),
        subset="primary",
        fit=fit,
        evaluate=power_value,
        rank=rank,
        signs=(("a", 1),),
    )


register(_hparam_spec("lr_opt", "lr", 10))
register(_hparam_spec("batch_opt", "batch_tokens", 11))
