"""MoE efficiency leverage: EL = C_dense / C_moe at equal loss, and Ling's EL(A, G, C) law.

Source: Ling "Towards Greater Leverage" (arXiv 2507.17702, Sec. 4, Eq. 9–11):

    EL(A, G, C) = Â^(alpha + gamma·(log2 G)² + beta·log2 G),   alpha = a + d·log10 C,
    1/Â = 1/(A + (1/A_start − 1/A_max)^−1) + 1/A_max,

A = activation ratio (E_a + E_s)/(E + E_s), G = granularity 2·d_model/d_expert. The log bases (log2 G,
log10 C) are inferred: with the published coefficients they give optimal G ≈ 12 and EL > 7 at A = 3.1 %,
G = 12, C = 1e22, as the paper states.

Observed EL: fit a frontier L(C) = E + A·C^−alpha to the dense runs and to each MoE (A, G) configuration;
at the MoE budgets C, EL = C_dense(L_moe(C)) / C with C_dense(L) = ((L − E_d)/A_d)^(−1/alpha_d).
Fitting the law's six coefficients needs ≥ 2 distinct A, ≥ 2 distinct G and ≥ 2 budgets; the fit minimises
squared error in log EL over (a, d, gamma, beta, log A_start, log A_max) with the batched L-BFGS from a grid.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from windtunnel.laws.base import Law, LawError, budget_labels
from windtunnel.laws.optim import batched_lbfgs, polish
from windtunnel.laws.powerlaw import fit_frontier, frontier_points

LEVERAGE_KEYS = ("a", "d", "gamma", "beta", "A_start", "A_max")


def leverage_value(coef: dict[str, float], A, G, C):
    """EL(A, G, C) with Ling's formula (module docstring); broadcasts over numpy arrays."""
    A, G, C = (np.asarray(v, dtype=float) for v in (A, G, C))
    inv_a_hat = 1.0 / (A + 1.0 / (1.0 / coef["A_start"] - 1.0 / coef["A_max"])) + 1.0 / coef["A_max"]
    a_hat = 1.0 / inv_a_hat
    lg = np.log2(G)
    exponent = coef["a"] + coef["d"] * np.log10(C) + coef["gamma"] * lg**2 + coef["beta"] * lg
    return a_hat**exponent


def optimal_granularity(coef: dict[str, float]) -> float:
    """G maximising EL at fixed A, C (Â < 1): d/d(log2 G) of the exponent = 0 → log2 G* = −beta /
    (2·gamma)."""
    return float(2.0 ** (-coef["beta"] / (2.0 * coef["gamma"])))


def observed_leverage(runs: pd.DataFrame) -> pd.DataFrame:
    """EL observations (act_ratio, granularity, compute, EL) from matched dense and MoE frontiers."""
    dense = runs[runs["family"].str.lower() == "dense"]
    moe = runs[
        (runs["family"].str.lower() == "moe") & runs["act_ratio"].notna() & runs["granularity"].notna()
    ]
    if len(dense) == 0 or len(moe) == 0:
        raise LawError("needs dense runs and MoE runs with act_ratio and granularity")
    lab_d, cen_d = budget_labels(dense["compute"].to_numpy(float))
    if len(cen_d) < 3:
        raise LawError(f"needs dense runs at 3 or more budgets; got {len(cen_d)}")
    fp = frontier_points(dense["compute"].to_numpy(float), dense["loss"].to_numpy(float), lab_d)
    cd, _ = fit_frontier(dense["compute"].to_numpy(float)[fp], dense["loss"].to_numpy(float)[fp])
    rows = []
    for (A, G), grp in moe.groupby(["act_ratio", "granularity"]):
        lab, cen = budget_labels(grp["compute"].to_numpy(float))
        fpm = frontier_points(grp["compute"].to_numpy(float), grp["loss"].to_numpy(float), lab)
        for i in fpm:
            C_moe, L_moe = float(grp["compute"].iloc[i]), float(grp["loss"].iloc[i])
            if L_moe <= cd["E"]:
                continue
            C_dense = ((L_moe - cd["E"]) / cd["A"]) ** (-1.0 / cd["alpha"])
            rows.append({"act_ratio": A, "granularity": G, "compute": C_moe, "EL": C_dense / C_moe})
    return pd.DataFrame(rows, columns=["act_ratio", "granularity", "compute", "EL"])


def fit_leverage_coefficients(obs: pd.DataFrame) -> dict[str, float]:
    """Least squares in log EL over the six coefficients (grid of starts, batched L-BFGS, polish the best)."""
    if obs["act_ratio"].nunique() < 2 or obs["granularity"].nunique() < 2 or obs["compute"].nunique() < 2:
        raise LawError(
            "needs EL observations at 2+ activation ratios, 2+ granularities and 2+ budgets; got "
            f"{obs['act_ratio'].nunique()} A, {obs['granularity'].nunique()} G, {obs['compute'].nunique()} C"
        )
    A, G, C = (obs[c].to_numpy(float) for c in ("act_ratio", "granularity", "compute"))
    logEL = np.log(obs["EL"].to_numpy(float))
    lg, lc = np.log2(G), np.log10(C)

    def fg(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, d, gam, bet, ls, lm = (x[:, k : k + 1] for k in range(6))
        s, mx = np.exp(ls), np.exp(lm)
        k_ = 1.0 / (1.0 / s - 1.0 / mx)
        u = A[None, :] + k_
        inv = 1.0 / u + 1.0 / mx
        log_ahat = -np.log(inv)
        expo = a + d * lc + gam * lg**2 + bet * lg
        r = expo * log_ahat - logEL[None, :]
        # derivatives of log_ahat w.r.t. log A_start and log A_max
        dk_ds = k_**2 / s  # d k / d ls  (k = (1/s − 1/mx)^−1)
        dk_dm = -(k_**2) / mx
        dlog_dk = (1.0 / u**2) / inv
        dlog_ls = dlog_dk * dk_ds
        dlog_lm = dlog_dk * dk_dm + (1.0 / mx) / inv
        g = np.stack(
            [
                (r * log_ahat).sum(1),
                (r * log_ahat * lc).sum(1),
                (r * log_ahat * lg**2).sum(1),
                (r * log_ahat * lg).sum(1),
                (r * expo * dlog_ls).sum(1),
                (r * expo * dlog_lm).sum(1),
            ],
            axis=1,
        )
        return 0.5 * (r * r).sum(1), g

    starts = np.array(
        [
            (a, d, 0.02, b, np.log(s), np.log(1e3))
            for a, d, b, s in itertools.product([0.5, 1.0, 2.0], [-0.1, -0.05], [-0.2, -0.1], [0.005, 0.02])
        ]
    )
    x, f, _ = batched_lbfgs(fg, starts, max_iter=500, gtol=1e-12)
    best = int(np.nanargmin(np.where(np.isfinite(f), f, np.inf)))
    xb, _ = polish(fg, x[best])
    return {
        "a": float(xb[0]),
        "d": float(xb[1]),
        "gamma": float(xb[2]),
        "beta": float(xb[3]),
        "A_start": float(np.exp(xb[4])),
        "A_max": float(np.exp(xb[5])),
    }


def fit_leverage_law(runs: pd.DataFrame, n_boot: int = 0, rng: np.random.Generator | None = None) -> Law:
    """``leverage`` law from dense + MoE runs (no bootstrap: ci95 left empty; see the report)."""
    obs = observed_leverage(runs)
    coef = fit_leverage_coefficients(obs)
    pred = leverage_value(coef, obs["act_ratio"], obs["granularity"], obs["compute"])
    rel = np.abs(pred - obs["EL"].to_numpy()) / obs["EL"].to_numpy()
    return Law(
        name="leverage",
        form="EL = Ahat^(a + d*log10 C + gamma*(log2 G)^2 + beta*log2 G), "
        "1/Ahat = 1/(A + (1/A_start - 1/A_max)^-1) + 1/A_max",
        coefficients=coef,
        n_runs=int(len(runs)),
        run_ids=[str(r) for r in runs["run_id"]],
        notes={"observations": obs.to_dict(orient="records"), "in_sample_mean_rel_err": float(rel.mean())},
    )
