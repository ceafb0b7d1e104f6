"""MoE efficiency leverage: EL = C_dense / C_moe at equal loss, and Ling's EL(A, G, C) law.

Source: Ling "Towards Greater Leverage" (arXiv 2507.17702, Sec. 4, Eq. 9–11):

    EL(A, G, C) = Â^(alpha + gamma·(log2 G)² + beta·log2 G),   alpha = a + d·log10 C,
    1/Â = 1/(A + (1/A_start − 1/A_max)^−1) + 1/A_max,

A = activation ratio (E_a + E_s)/(E + E_s), G = granularity 2·d_model/d_expert. The log bases (log2 G,
log10 C) are inferred: with the published coefficients they give optimal G ≈ 12 and EL > 7 at A = 3.1 %,
G = 12, C = 1e22, as the paper states.

Observed EL: fit a frontier L(C) = E + A·C^−alpha to the dense runs and take, for each MoE (A, G)
configuration, its best loss at each of its budgets (a "cell"); at the MoE budget C,
EL = C_dense(L_moe(C)) / C with C_dense(L) = ((L − E_d)/A_d)^(−1/alpha_d).
Fitting the law's six coefficients needs ≥ 2 distinct A, ≥ 2 distinct G and ≥ 2 budgets; the fit minimises
squared error in log EL over (a, d, gamma, beta, log A_start, log A_max) with the batched L-BFGS from a grid;
A_start and A_max are kept in a plausible box by a quadratic penalty that is zero inside it (``LOG_BOUNDS``:
with noisy EL and no A near A_start, A_start otherwise drifts to 0 along a flat direction).

Uncertainty (same scheme as the other laws): a nonparametric bootstrap over runs. Each resample draws the
law's runs with replacement (multinomial counts); inside it the dense frontier points (best drawn loss per
dense budget) are refitted, every MoE cell's best drawn run gives its EL, and the six coefficients are
refitted from the full-data optimum — all resamples at once with the batched L-BFGS. ci95 = 2.5/97.5
percentiles of the draws; ``LawSet.predict`` turns the draws into a 95 % interval of EL at (A, G, C).
A_max is weakly identified when every sampled A ≪ A_max (1/A_max ≈ 0): its interval is then very wide.

Backtest (as for the other laws): hold out the largest MoE compute budget, fit the dense frontier and the EL
law on runs below it (dense runs above the cut are dropped too), predict EL at the held-out MoE cells and
compare with their EL observed against the full-data dense frontier; the predicted MoE loss
L_dense(EL·C) is compared with the observed loss as well.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from windtunnel.laws.base import (
    Law,
    LawError,
    bootstrap_resample_blocks,
    budget_labels,
    percentile_ci,
    relative_errors,
    seed_mean,
)
from windtunnel.laws.optim import batched_lbfgs, polish
from windtunnel.laws.powerlaw import bootstrap_frontier_rows, fit_frontier, frontier_points, frontier_value
from windtunnel.laws.registry import FitOptions, LawSpec, register

LEVERAGE_KEYS = ("a", "d", "gamma", "beta", "A_start", "A_max")
# Plausible ranges (natural log) of A_start and A_max: an activation ratio lies in (0, 1], so A_start far
# below 1e-5 or above 1 and A_max below 1 are meaningless; above 1e25 A_max no longer changes Â (1/A_max ≈ 0).
# Outside the box the objective adds BOX_WEIGHT/2 · (distance)²; inside it is the plain least squares.
LOG_BOUNDS = {"A_start": (float(np.log(1e-5)), 0.0), "A_max": (0.0, float(np.log(1e25)))}
BOX_WEIGHT = 10.0
LEVERAGE_FORM = (
    "EL = Ahat^(a + d*log10 C + gamma*(log2 G)^2 + beta*log2 G), "
    "1/Ahat = 1/(A + (1/A_start - 1/A_max)^-1) + 1/A_max"
)


def leverage_value(coef: dict[str, float], A, G, C):
    """EL(A, G, C) with Ling's formula (module docstring); broadcasts over numpy arrays."""
    A, G, C = (np.asarray(v, dtype=float) for v in (A, G, C))
    a_start, a_max = np.asarray(coef["A_start"], dtype=float), np.asarray(coef["A_max"], dtype=float)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv_a_hat = 1.0 / (A + 1.0 / (1.0 / a_start - 1.0 / a_max)) + 1.0 / a_max
    a_hat = 1.0 / inv_a_hat
    lg = np.log2(G)
    exponent = coef["a"] + coef["d"] * np.log10(C) + coef["gamma"] * lg**2 + coef["beta"] * lg
    return a_hat**exponent


def optimal_granularity(coef: dict[str, float]) -> float:
    """G maximising EL at fixed A, C (Â < 1): d/d(log2 G) of the exponent = 0 → log2 G* = −beta /
    (2·gamma)."""
    return float(2.0 ** (-coef["beta"] / (2.0 * coef["gamma"])))


@dataclass
class LeverageCells:
    """Where the EL observations come from: dense runs with their budget labels, and the MoE cells.

    ``dense_idx`` / ``dense_labels``: row positions (in the law's run table) of the dense runs and their
    budget label; ``cell_A``, ``cell_G``: activation ratio and granularity of each MoE cell (one (A, G)
    configuration at one of its budgets); ``cell_members``: row positions of the cell's runs.
    """

    dense_idx: np.ndarray
    dense_labels: np.ndarray
    n_dense_budgets: int
    cell_A: np.ndarray
    cell_G: np.ndarray
    cell_members: list[np.ndarray]


def leverage_cells(runs: pd.DataFrame) -> LeverageCells:
    """Split the runs into dense budgets and MoE (A, G, budget) cells (``runs`` indexed 0..n−1)."""
    fam = runs["family"].str.lower().to_numpy()
    A_all = runs["act_ratio"].to_numpy(float)
    G_all = runs["granularity"].to_numpy(float)
    dense_idx = np.flatnonzero(fam == "dense")
    moe_idx = np.flatnonzero((fam == "moe") & np.isfinite(A_all) & np.isfinite(G_all))
    if len(dense_idx) == 0 or len(moe_idx) == 0:
        raise LawError("needs dense runs and MoE runs with act_ratio and granularity")
    C_all = runs["compute"].to_numpy(float)
    dense_labels, centers = budget_labels(C_all[dense_idx])
    cell_A, cell_G, members = [], [], []
    moe = pd.DataFrame({"pos": moe_idx, "A": A_all[moe_idx], "G": G_all[moe_idx]})
    for (A, G), grp in moe.groupby(["A", "G"]):
        pos = grp["pos"].to_numpy()
        lab, _ = budget_labels(C_all[pos])
        for k in np.unique(lab):
            cell_A.append(float(A))
            cell_G.append(float(G))
            members.append(pos[lab == k])
    return LeverageCells(dense_idx, dense_labels, len(centers), np.array(cell_A), np.array(cell_G), members)


def _dense_frontier(runs: pd.DataFrame, cells: LeverageCells) -> tuple[dict[str, float], np.ndarray]:
    if cells.n_dense_budgets < 3:
        raise LawError(f"needs dense runs at 3 or more budgets; got {cells.n_dense_budgets}")
    C = runs["compute"].to_numpy(float)[cells.dense_idx]
    L = runs["loss"].to_numpy(float)[cells.dense_idx]
    fp = frontier_points(C, L, cells.dense_labels)
    return fit_frontier(C[fp], L[fp])


def _cell_observations(runs: pd.DataFrame, cells: LeverageCells, cd: dict[str, float]) -> pd.DataFrame:
    """One EL observation per MoE cell: its best run against the dense frontier ``cd`` (cells whose best
    loss is at or below the dense E are skipped). Column ``cell`` = the cell's position."""
    C_all, L_all = runs["compute"].to_numpy(float), runs["loss"].to_numpy(float)
    rows = []
    for j, mem in enumerate(cells.cell_members):
        i = mem[np.argmin(L_all[mem])]
        L_moe, C_moe = float(L_all[i]), float(C_all[i])
        if L_moe <= cd["E"]:
            continue
        C_dense = ((L_moe - cd["E"]) / cd["A"]) ** (-1.0 / cd["alpha"])
        rows.append(
            {
                "act_ratio": cells.cell_A[j],
                "granularity": cells.cell_G[j],
                "compute": C_moe,
                "EL": C_dense / C_moe,
                "loss": L_moe,
                "cell": j,
            }
        )
    return pd.DataFrame(rows, columns=["act_ratio", "granularity", "compute", "EL", "loss", "cell"])


def observed_leverage(runs: pd.DataFrame) -> pd.DataFrame:
    """EL observations (act_ratio, granularity, compute, EL) from matched dense and MoE frontiers (runs that
    differ only in seed averaged first, ``base.seed_mean``)."""
    runs = seed_mean(runs.reset_index(drop=True))
    cells = leverage_cells(runs)
    cd, _ = _dense_frontier(runs, cells)
    return _cell_observations(runs, cells, cd)[["act_ratio", "granularity", "compute", "EL"]]


def _leverage_objective(A_K: np.ndarray, lg_K: np.ndarray, lc_RK: np.ndarray, logEL_RK, w_RK: np.ndarray):
    """Batched f(x) = ½ Σ_k w_k (expo_k·log Â_k − log EL_k)², x = (a, d, gamma, beta, log A_start,
    log A_max), expo = a + d·log10 C + gamma·(log2 G)² + beta·log2 G; analytic gradient.

    ``lc_RK`` (log10 C), ``logEL_RK`` and ``w_RK`` have one row per data set (a single row is shared by
    every problem, e.g. the grid starts)."""

    def fg(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(all="ignore"):  # line-search trial points may overflow: f = inf rejects them
            return _fg(x, rows)

    def _fg(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r_idx = rows if lc_RK.shape[0] > 1 else np.zeros_like(rows)
        lc, logEL, w = lc_RK[r_idx], logEL_RK[r_idx], w_RK[r_idx]
        a, d, gam, bet, ls, lm = (x[:, k : k + 1] for k in range(6))
        s, mx = np.exp(ls), np.exp(lm)
        k_ = 1.0 / (1.0 / s - 1.0 / mx)
        u = A_K[None, :] + k_
        inv = 1.0 / u + 1.0 / mx
        log_ahat = -np.log(inv)
        expo = a + d * lc + gam * lg_K**2 + bet * lg_K
        r = expo * log_ahat - logEL
        wr = w * r
        # derivatives of log_ahat w.r.t. log A_start and log A_max
        dk_ds = k_**2 / s  # d k / d ls  (k = (1/s − 1/mx)^−1)
        dk_dm = -(k_**2) / mx
        dlog_dk = (1.0 / u**2) / inv
        dlog_ls = dlog_dk * dk_ds
        dlog_lm = dlog_dk * dk_dm + (1.0 / mx) / inv
        g = np.stack(
            [
                (wr * log_ahat).sum(1),
                (wr * log_ahat * lc).sum(1),
                (wr * log_ahat * lg_K**2).sum(1),
                (wr * log_ahat * lg_K).sum(1),
                (wr * expo * dlog_ls).sum(1),
                (wr * expo * dlog_lm).sum(1),
            ],
            axis=1,
        )
        # soft box on (log A_start, log A_max): zero inside, quadratic outside (see LOG_BOUNDS)
        f_box = np.zeros(x.shape[0])
        for col, (lo, hi) in ((4, LOG_BOUNDS["A_start"]), (5, LOG_BOUNDS["A_max"])):
            viol = np.minimum(x[:, col] - lo, 0.0) + np.maximum(x[:, col] - hi, 0.0)
            f_box += 0.5 * BOX_WEIGHT * viol**2
            g[:, col] += BOX_WEIGHT * viol
        return 0.5 * (wr * r).sum(1) + f_box, g

    return fg


def _to_coefficients(x: np.ndarray) -> dict[str, float]:
    return {
        "a": float(x[0]),
        "d": float(x[1]),
        "gamma": float(x[2]),
        "beta": float(x[3]),
        "A_start": float(np.exp(x[4])),
        "A_max": float(np.exp(x[5])),
    }


def _check_variety(obs: pd.DataFrame) -> None:
    if obs["act_ratio"].nunique() < 2 or obs["granularity"].nunique() < 2 or obs["compute"].nunique() < 2:
        raise LawError(
            "needs EL observations at 2+ activation ratios, 2+ granularities and 2+ budgets; got "
            f"{obs['act_ratio'].nunique()} A, {obs['granularity'].nunique()} G, {obs['compute'].nunique()} C"
        )


def _fit_leverage_x(obs: pd.DataFrame) -> np.ndarray:
    _check_variety(obs)
    A, G, C = (obs[c].to_numpy(float) for c in ("act_ratio", "granularity", "compute"))
    logEL = np.log(obs["EL"].to_numpy(float))
    fg = _leverage_objective(A, np.log2(G), np.log10(C)[None], logEL[None], np.ones((1, len(A))))
    starts = np.array(
        [
            (a, d, 0.02, b, np.log(s), np.log(1e3))
            for a, d, b, s in itertools.product([0.5, 1.0, 2.0], [-0.1, -0.05], [-0.2, -0.1], [0.005, 0.02])
        ]
    )
    x, f, _ = batched_lbfgs(fg, starts, max_iter=500, gtol=1e-12)
    best = int(np.nanargmin(np.where(np.isfinite(f), f, np.inf)))
    xb, _ = polish(fg, x[best])
    return xb


def fit_leverage_coefficients(obs: pd.DataFrame) -> dict[str, float]:
    """Least squares in log EL over the six coefficients (grid of starts, batched L-BFGS, polish the best)."""
    return _to_coefficients(_fit_leverage_x(obs))


def bootstrap_leverage(
    runs: pd.DataFrame, cells: LeverageCells, x_dense: np.ndarray, x_hat: np.ndarray, W_RN: np.ndarray
) -> np.ndarray:
    """Coefficient vectors x_RP (rows of NaN where a resample is degenerate); see the module docstring.

    ``x_dense``: full-data dense frontier (log A, log E, alpha); ``x_hat``: full-data EL optimum; ``W_RN``:
    multinomial counts over the rows of ``runs``.
    """
    C_all, L_all = runs["compute"].to_numpy(float), runs["loss"].to_numpy(float)
    R = W_RN.shape[0]

    def best_per_group(members: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(best drawn loss, its compute) per group and resample; +inf loss where nothing was drawn."""
        L_RK = np.full((R, len(members)), np.inf)
        C_RK = np.ones((R, len(members)))
        for k, mem in enumerate(members):
            Lm = np.where(W_RN[:, mem] > 0, L_all[mem][None, :], np.inf)
            j = np.argmin(Lm, axis=1)
            L_RK[:, k] = Lm[np.arange(R), j]
            C_RK[:, k] = C_all[mem][j]
        return L_RK, C_RK

    dense_groups = [cells.dense_idx[cells.dense_labels == k] for k in range(cells.n_dense_budgets)]
    Ld_RK, Cd_RK = best_per_group(dense_groups)
    ok_R = np.isfinite(Ld_RK).sum(1) >= 3
    with np.errstate(all="ignore"):
        xd = bootstrap_frontier_rows(np.log(Cd_RK), np.log(Ld_RK), x_dense)
        Ad, Ed, alphad = np.exp(xd[:, 0:1]), np.exp(xd[:, 1:2]), xd[:, 2:3]
        Lm_RK, Cm_RK = best_per_group(cells.cell_members)
        EL_RK = ((Lm_RK - Ed) / Ad) ** (-1.0 / alphad) / Cm_RK
    w_RK = (np.isfinite(Lm_RK) & (Lm_RK > Ed) & np.isfinite(EL_RK) & (EL_RK > 0)).astype(float)
    for r in np.flatnonzero(ok_R):  # a resample needs the variety the full fit needs
        used = w_RK[r] > 0
        ok_R[r] = (
            np.unique(cells.cell_A[used]).size >= 2
            and np.unique(cells.cell_G[used]).size >= 2
            and np.unique(np.round(np.log10(Cm_RK[r, used]), 3)).size >= 2
        )
    logEL = np.where(w_RK > 0, np.log(np.where(w_RK > 0, EL_RK, 1.0)), 0.0)
    lc = np.log10(Cm_RK)
    fg = _leverage_objective(cells.cell_A, np.log2(cells.cell_G), lc, logEL, w_RK)
    x, f, _ = batched_lbfgs(fg, np.repeat(x_hat[None], R, axis=0), max_iter=500, gtol=1e-12)
    x[~ok_R | ~np.isfinite(f)] = np.nan
    return x


LOG_BOUNDS_TEXT = "A_start in [1e-5, 1], A_max in [1, 1e25]"
PIN_TOL = 0.05  # in log units: a coefficient this close to a box edge counts as pinned there


def pinned_at_box(x_P: np.ndarray) -> list[str]:
    """Names (with values) of A_start / A_max that the fit left at an edge of ``LOG_BOUNDS``."""
    out = []
    for col, name in ((4, "A_start"), (5, "A_max")):
        lo, hi = LOG_BOUNDS[name]
        if x_P[col] <= lo + PIN_TOL or x_P[col] >= hi - PIN_TOL:
            out.append(f"{name}={np.exp(x_P[col]):.4g}")
    return out


def fit_leverage_law(
    runs: pd.DataFrame, n_boot: int = 200, rng: np.random.Generator | None = None, backtest: bool = True
) -> Law:
    """``leverage`` law from dense + MoE runs, with bootstrap ci95 and a top-budget backtest. Runs that differ
    only in seed count as one setting with their mean loss (``base.seed_mean``): a frontier of the best
    expected loss per budget, dense and MoE alike, not of the luckiest seeds."""
    rng = np.random.default_rng(0) if rng is None else rng
    n_given = len(runs)
    runs = seed_mean(runs.reset_index(drop=True))
    cells = leverage_cells(runs)
    cd, x_dense = _dense_frontier(runs, cells)
    obs = _cell_observations(runs, cells, cd)
    x_hat = _fit_leverage_x(obs)
    coef = _to_coefficients(x_hat)
    pred = leverage_value(coef, obs["act_ratio"], obs["granularity"], obs["compute"])
    rel = np.abs(pred - obs["EL"].to_numpy()) / obs["EL"].to_numpy()
    law = Law(
        name="leverage",
        form=LEVERAGE_FORM,
        coefficients=coef,
        n_runs=int(n_given),
        run_ids=[str(r) for r in runs["run_id"]],
        notes={
            "observations": obs[["act_ratio", "granularity", "compute", "EL"]].to_dict(orient="records"),
            "in_sample_mean_rel_err": float(rel.mean()),
            "dense_frontier": cd,
        },
    )
    pinned = pinned_at_box(x_hat)
    if pinned:  # e.g. EL that barely depends on A: the fit runs to the box, where the exponents blow up
        law.notes["degenerate"] = True
        law.notes["degenerate_reason"] = (
            f"{' and '.join(pinned)} at the edge of the box {LOG_BOUNDS_TEXT}: the activation-ratio term"
            " is not identified by these runs (their measured EL is in notes.observations)"
        )
    if n_boot:
        # block by block: the working set stays O(BOOTSTRAP_BLOCK_ELEMENTS) however many runs
        blocks = bootstrap_resample_blocks(len(runs), n_boot, rng)
        x = np.concatenate([bootstrap_leverage(runs, cells, x_dense, x_hat, W) for W in blocks])
        samples = {
            "a": x[:, 0],
            "d": x[:, 1],
            "gamma": x[:, 2],
            "beta": x[:, 3],
            "A_start": np.exp(x[:, 4]),
            "A_max": np.exp(x[:, 5]),
        }
        law.ci95 = {k: percentile_ci(v) for k, v in samples.items()}
        law.samples = {k: v.tolist() for k, v in samples.items()}
        law.notes["bootstrap_degenerate"] = int((~np.isfinite(x[:, 0])).sum())
    if backtest:
        law.backtest = backtest_leverage(runs, cells, cd)
    return law


def backtest_leverage(runs: pd.DataFrame, cells: LeverageCells, cd_full: dict[str, float]) -> dict:
    """Fit on runs below the largest MoE budget; relative error of EL (and of the MoE loss it implies) at
    the held-out MoE cells. Observed EL there uses the full-data dense frontier ``cd_full``."""
    fam = runs["family"].str.lower().to_numpy()
    C_all = runs["compute"].to_numpy(float)
    moe_pos = np.concatenate(cells.cell_members)
    _, centers = budget_labels(C_all[moe_pos])
    if len(centers) < 3:
        return {"skipped": "needs MoE runs at 3 or more compute budgets"}
    cut = float(centers[-1] / 10**0.05)
    low = runs[C_all < cut].reset_index(drop=True)
    try:
        low_cells = leverage_cells(low)
        cd_low, _ = _dense_frontier(low, low_cells)
        coef_low = _to_coefficients(_fit_leverage_x(_cell_observations(low, low_cells, cd_low)))
    except (LawError, ValueError, np.linalg.LinAlgError) as err:
        return {"skipped": f"fit below the top budget failed: {err}"}
    obs = _cell_observations(runs, cells, cd_full)
    held = obs[obs["compute"] >= cut]
    if held.empty or not (fam == "moe").any():
        return {"skipped": "no MoE observation at the top budget"}
    el_pred = leverage_value(coef_low, held["act_ratio"], held["granularity"], held["compute"])
    loss_pred = frontier_value(
        cd_low["E"], cd_low["A"], cd_low["alpha"], el_pred * held["compute"].to_numpy()
    )
    loss_err = relative_errors(loss_pred, held["loss"].to_numpy())
    return {
        "cut_compute": cut,
        **relative_errors(el_pred, held["EL"].to_numpy()),
        "loss_mean_rel_err": loss_err["mean_rel_err"],
        "loss_max_rel_err": loss_err["max_rel_err"],
    }


def _fit_registered(runs: pd.DataFrame, opts: FitOptions) -> Law:
    return fit_leverage_law(runs, n_boot=opts.n_boot, rng=opts.rng)


def _evaluate_registered(coef: dict, x):
    A, G, C = x
    return leverage_value(coef, A, G, C)


register(
    LawSpec(
        name="leverage",
        columns=("compute", "loss"),
        subset="all",
        fit=_fit_registered,
        evaluate=_evaluate_registered,
        rank=40,
        fit_by_default=lambda runs, both_families: both_families,  # EL compares MoE with dense runs
    )
)
