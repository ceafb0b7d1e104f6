"""StepFun's joint learning-rate / batch-size law ("Step Law") as two laws.json laws.

Source: Li et al. 2025, "Predictable Scale: Part I" (arXiv 2503.04715, Eq. 1–2), published fit
lr = 1.79·N^−0.713·D^0.307, batch_tokens = 0.58·D^0.571 (N non-embedding parameters, D tokens):

    steplaw_lr:     lr(N, D)           = a · N^alpha · D^beta
    steplaw_batch:  batch_tokens(N, D) = a · D^b          (no N dependence, as in the paper)

Fitted as the authors' ``code/fit_tool.py`` does: for every (N, D) cell keep the runs whose loss is within
``band`` (0.25 %) of the cell's best loss, then ordinary least squares of ln lr on (1, ln N, ln D) and of
ln batch on (1, ln D) over **all kept runs**. Only cells whose runs vary both lr and batch count (a cell
with a single lr or a single batch says nothing about the optimum); the lr law also needs cells that vary
N and D independently (cells on one line in (ln N, ln D), e.g. one size per compute budget in a Ling-style
sweep, leave alpha and beta unidentified).

Bootstrap (as for ``lr_opt``): runs are resampled with replacement, each cell's best loss and band are
recomputed inside every resample and the weighted least squares is redone (closed form, all resamples at
once). The point estimate is the full-data fit (the authors report the mean of their bootstrap fits).

Backtest: fit on all cells but those of the largest compute budget (C = the runs' ``compute``), predict the
optimum of each held-out cell and compare with its observed optimum (geometric mean of the band's values).

95 % prediction interval (``pi95``, ``intervals.optimum_pi95``): the bootstrap widened by the scatter of the
cells' observed optima around the law (3 or 2 fitted coefficients) and the backtest's log error.
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
from windtunnel.laws.hparam import NEAR_OPTIMAL_BAND, band_mask
from windtunnel.laws.intervals import log_errors, optimum_pi95
from windtunnel.laws.registry import FitOptions, LawSpec, register

STEPLAW_LAWS = ("steplaw_lr", "steplaw_batch")
STEPFUN_PUBLISHED = {
    "steplaw_lr": {"a": 1.79, "alpha": -0.713, "beta": 0.307},
    "steplaw_batch": {"a": 0.58, "b": 0.571},
}
_MIN_SPREAD = 0.01  # smallest singular value / sqrt(cells) of centred (ln N, ln D) for the lr law


def steplaw_cells(runs: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Cell label per run (−1: the cell does not vary lr and batch) and a table of the usable cells
    (params, tokens, compute = geometric mean of the cell's compute)."""
    keys = runs[["params", "tokens"]].round(6)
    grouped = runs.assign(_p=keys["params"], _t=keys["tokens"]).groupby(["_p", "_t"], sort=True)
    stats = grouped.agg(
        n_lr=("lr", "nunique"),
        n_bs=("batch_tokens", "nunique"),
        params=("params", "first"),
        tokens=("tokens", "first"),
        logc=("compute", lambda c: float(np.log(c).mean())),
    ).reset_index(drop=True)
    group_id = grouped.ngroup().to_numpy()
    usable = ((stats["n_lr"] >= 2) & (stats["n_bs"] >= 2)).to_numpy()
    new_id = np.cumsum(usable) - 1
    labels = np.where(usable[group_id], new_id[group_id], -1)
    cells = stats[usable].reset_index(drop=True)
    cells["compute"] = np.exp(cells.pop("logc"))
    return labels, cells[["params", "tokens", "compute"]]


def steplaw_problem(runs: pd.DataFrame, name: str) -> str | None:
    """Why ``name`` cannot be fitted to ``runs`` (None if it can)."""
    if len(runs) == 0:
        return "no usable runs"
    _, cells = steplaw_cells(runs)
    if len(cells) < 3:
        return f"needs 3 or more (params, tokens) cells that vary both lr and batch; got {len(cells)}"
    lnN, lnD = np.log(cells["params"].to_numpy()), np.log(cells["tokens"].to_numpy())
    if np.unique(np.round(lnD, 6)).size < 2:
        return "needs cells at 2 or more token counts"
    if name == "steplaw_lr":
        X = np.stack([lnN - lnN.mean(), lnD - lnD.mean()], axis=1)
        spread = np.linalg.svd(X, compute_uv=False).min() / np.sqrt(len(cells))
        if spread < _MIN_SPREAD:
            return (
                "needs cells that vary params and tokens independently (the cells lie on one line in "
                "log params / log tokens, so the N and D exponents are not identified)"
            )
    return None


def _weighted_ols_RP(X_NP: np.ndarray, y_N: np.ndarray, W_RN: np.ndarray) -> np.ndarray:
    """Weighted least squares of y on X for every weight row: solve (XᵀWX) θ = XᵀWy → θ_RP (NaN if
    singular)."""
    XtWX = np.einsum("np,rn,nq->rpq", X_NP, W_RN, X_NP)
    XtWy = np.einsum("np,rn,n->rp", X_NP, W_RN, y_N)
    out = np.full((W_RN.shape[0], X_NP.shape[1]), np.nan)
    ok = np.linalg.cond(XtWX) < 1e12
    if ok.any():
        out[ok] = np.linalg.solve(XtWX[ok], XtWy[ok][:, :, None])[:, :, 0]
    return out


def _design(runs: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    lnN, lnD = np.log(runs["params"].to_numpy(float)), np.log(runs["tokens"].to_numpy(float))
    one = np.ones_like(lnN)
    if name == "steplaw_lr":
        return np.stack([one, lnN, lnD], 1), np.log(runs["lr"].to_numpy(float)), ["a", "alpha", "beta"]
    return np.stack([one, lnD], 1), np.log(runs["batch_tokens"].to_numpy(float)), ["a", "b"]


def _to_coefficients(theta_RP: np.ndarray, keys: list[str]) -> dict[str, np.ndarray]:
    """(ln a, exponents...) → {a, ...}."""
    out = {keys[0]: np.exp(theta_RP[:, 0])}
    out.update({k: theta_RP[:, j + 1] for j, k in enumerate(keys[1:])})
    return out


def steplaw_value(name: str, coef: dict, N, D):
    """lr or batch_tokens of law ``name`` at (N, D); broadcasts."""
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    if name == "steplaw_lr":
        return coef["a"] * N ** coef["alpha"] * D ** coef["beta"]
    return coef["a"] * D ** coef["b"] * np.ones_like(N)


def fit_steplaw_law(
    runs: pd.DataFrame,
    name: str,
    n_boot: int = 200,
    rng: np.random.Generator | None = None,
    band: float = NEAR_OPTIMAL_BAND,
    backtest: bool = True,
) -> Law:
    """``steplaw_lr`` or ``steplaw_batch`` (module docstring) from runs with params, tokens, lr,
    batch_tokens, loss."""
    if name not in STEPLAW_LAWS:
        raise LawError(f"unknown StepFun law {name!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    problem = steplaw_problem(runs, name)
    if problem:
        raise LawError(problem)
    labels, cells = steplaw_cells(runs)
    keep = labels >= 0
    sub = runs[keep].reset_index(drop=True)
    lab = labels[keep]
    X, y, keys = _design(sub, name)
    theta_blocks, mask0 = [], None
    for W in bootstrap_weight_blocks(len(sub), n_boot, rng):  # bounded memory on large tables
        mask = band_mask(sub["loss"].to_numpy(float), lab, W, band)
        mask0 = mask[0] if mask0 is None else mask0
        theta_blocks.append(_weighted_ols_RP(X, y, W * mask))
    theta = np.concatenate(theta_blocks)
    if not np.isfinite(theta[0]).all():
        raise LawError("the near-optimal runs do not determine the law (singular least squares)")
    coefs = _to_coefficients(theta, keys)
    column = "lr" if name == "steplaw_lr" else "batch_tokens"
    form = (
        "lr = a * params^alpha * tokens^beta" if name == "steplaw_lr" else "batch_tokens = a * tokens^b"
    ) + f"  (StepFun Step Law; runs within {band:.2%} of the best loss per (params, tokens) cell)"
    law = Law(
        name=name,
        form=form,
        coefficients={k: float(v[0]) for k, v in coefs.items()},
        n_runs=int(len(runs)),
        run_ids=[str(r) for r in sub["run_id"].to_numpy()[mask0]],
        notes={
            "band": band,
            "n_cells": int(len(cells)),
            "n_band_runs": int(mask0.sum()),
            "cells_without_lr_batch_variation": int(
                runs.loc[~keep, ["params", "tokens"]].drop_duplicates().shape[0]
            ),
            "predict_x": "(params, tokens)",
            "published_stepfun": STEPFUN_PUBLISHED[name],
        },
    )
    if n_boot:
        draws = {k: v[1:] for k, v in coefs.items()}
        law.ci95 = {k: percentile_ci(v) for k, v in draws.items()}
        law.samples = {k: v.tolist() for k, v in draws.items()}
    if backtest:
        law.backtest = backtest_steplaw(sub, lab, cells, name, column, band)
    obs = cell_optima(sub, lab, column, band)
    pred = steplaw_value(name, law.coefficients, cells["params"].to_numpy(), cells["tokens"].to_numpy())
    law.extra["pi95"] = optimum_pi95(np.log(obs / pred), len(keys), law.backtest)
    return law


def cell_optima(runs: pd.DataFrame, labels: np.ndarray, column: str, band: float) -> np.ndarray:
    """Observed optimum per cell: geometric mean of ``column`` over the cell's near-optimal band."""
    mask = band_mask(runs["loss"].to_numpy(float), labels, np.ones((1, len(runs))), band)[0]
    vals = np.log(runs[column].to_numpy(float))
    return np.array([np.exp(vals[mask & (labels == k)].mean()) for k in range(labels.max() + 1)])


def backtest_steplaw(
    runs: pd.DataFrame, labels: np.ndarray, cells: pd.DataFrame, name: str, column: str, band: float
) -> dict:
    """Fit without the cells of the largest compute budget; relative error of their predicted optimum."""
    cell_budget, centers = budget_labels(cells["compute"].to_numpy(float))
    if len(centers) < 3:
        return {"skipped": "needs cells at 3 or more compute budgets"}
    top = np.flatnonzero(cell_budget == len(centers) - 1)
    low = ~np.isin(labels, top)
    try:
        law = fit_steplaw_law(runs[low].reset_index(drop=True), name, n_boot=0, band=band, backtest=False)
    except LawError as err:
        return {"skipped": f"fit without the top budget failed: {err}"}
    held = np.isin(labels, top)
    remap = {old: new for new, old in enumerate(top)}
    held_labels = np.array([remap[v] for v in labels[held]])
    obs = cell_optima(runs[held].reset_index(drop=True), held_labels, column, band)
    pred = steplaw_value(
        name, law.coefficients, cells["params"].to_numpy()[top], cells["tokens"].to_numpy()[top]
    )
    return {
        "cut_compute": float(centers[-1] / 10**0.05),
        **relative_errors(pred, obs),
        "log_errors": log_errors(pred, obs),
    }


def _steplaw_spec(name: str, rank: int) -> LawSpec:
    def fit(runs: pd.DataFrame, opts: FitOptions) -> Law:
        return fit_steplaw_law(runs, name, n_boot=opts.n_boot, rng=opts.rng, band=opts.band)

    def evaluate(coef: dict, x) -> np.ndarray:
        N, D = x
        return steplaw_value(name, coef, N, D)

    def by_default(runs: pd.DataFrame, both_families: bool) -> bool:
        return steplaw_problem(runs, "steplaw_lr") is None  # only on grids that vary lr, batch, N and D

    return LawSpec(
        name=name,
        columns=("params", "tokens", "lr", "batch_tokens", "loss"),
        subset="primary",
        fit=fit,
        evaluate=evaluate,
        rank=rank,
        signs=(("a", 1),),
        fit_by_default=by_default,
    )


for _rank, _name in enumerate(STEPLAW_LAWS):
    register(_steplaw_spec(_name, 50 + _rank))
