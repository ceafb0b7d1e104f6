"""Synthetic run tables from known laws, for calibration tests and the benchmark.

Loss model (Chinchilla form, Hoffmann et al. 2022 Eq. 2, plus quadratic penalties in log lr and log batch
around the power-law optima, as in DeepSeek LLM arXiv 2401.02954 Fig. 3):

    L = [E + A/N^alpha + B/D^beta + k_lr·log²(lr / lr*(C)) + k_b·log²(bs / bs*(C))] · exp(σ·ε),  ε ~ N(0, 1),
    lr*(C) = a_lr·C^b_lr,  bs*(C) = a_bs·C^b_bs,  C = 6·N·D.

Two sweeps per compute budget: an IsoFLOP sweep (sizes around the budget's optimal N at lr*, bs*) and a
hyper-parameter sweep (the optimal size, an lr × batch grid).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from windtunnel.runtable import validate_run_table

TRUE = {
    "E": 1.8,
    "A": 480.0,
    "B": 2100.0,
    "alpha": 0.35,
    "beta": 0.37,
    "lr_a": 1.1576,
    "lr_b": -0.1529,
    "bs_a": 0.0694,
    "bs_b": 0.3644,
    "k_lr": 0.01,
    "k_bs": 0.004,
}


def optimal_params(C: np.ndarray, t: dict[str, float] = TRUE) -> np.ndarray:
    """N_opt(C) of the parametric law under C = 6ND (Hoffmann et al. 2022 Eq. 4):
    G = (alpha·A/(beta·B))^(1/(alpha+beta)), N_opt = G·(C/6)^(beta/(alpha+beta))."""
    g = (t["alpha"] * t["A"] / (t["beta"] * t["B"])) ** (1.0 / (t["alpha"] + t["beta"]))
    return g * (np.asarray(C) / 6.0) ** (t["beta"] / (t["alpha"] + t["beta"]))


def synthetic_runs(
    n_runs: int = 1000,
    budgets: tuple[float, ...] = (1e17, 4e17, 1.6e18, 6.4e18, 2.56e19, 1e20),
    sigma: float = 0.003,
    seed: int = 0,
    t: dict[str, float] = TRUE,
) -> pd.DataFrame:
    """About ``n_runs`` runs split evenly over budgets; half IsoFLOP sweep, half lr × batch sweep."""
    rng = np.random.default_rng(seed)
    per_budget = max(n_runs // len(budgets), 10)
    rows = []
    for C in budgets:
        n_opt = float(optimal_params(C, t))
        lr_opt, bs_opt = t["lr_a"] * C ** t["lr_b"], t["bs_a"] * C ** t["bs_b"]
        n_iso = per_budget // 2
        sizes = n_opt * np.exp(np.linspace(-1.3, 1.3, n_iso))
        for N in sizes:
            rows.append((C, N, lr_opt, bs_opt, "isoflop"))
        n_hp = per_budget - n_iso
        lrs = lr_opt * np.exp(rng.uniform(-1.5, 1.5, n_hp))
        bss = bs_opt * np.exp(rng.uniform(-1.5, 1.5, n_hp))
        for lr, bs in zip(lrs, bss, strict=True):
            rows.append((C, n_opt, lr, bs, "hparam"))
    C, N, lr, bs, sweep = (np.array(col) for col in zip(*rows, strict=True))
    C, N, lr, bs = (x.astype(float) for x in (C, N, lr, bs))
    D = C / (6.0 * N)
    lr_star, bs_star = t["lr_a"] * C ** t["lr_b"], t["bs_a"] * C ** t["bs_b"]
    clean = (
        t["E"]
        + t["A"] / N ** t["alpha"]
        + t["B"] / D ** t["beta"]
        + t["k_lr"] * np.log(lr / lr_star) ** 2
        + t["k_bs"] * np.log(bs / bs_star) ** 2
    )
    loss = clean * np.exp(sigma * rng.standard_normal(len(clean)))
    runs = pd.DataFrame(
        {
            "run_id": [f"syn{seed}-{i}" for i in range(len(C))],
            "sweep": sweep,
            "family": "dense",
            "params": N,
            "n_total": N,
            "n_active": N,
            "m": 6.0 * N,
            "tokens": D,
            "compute": C,
            "lr": lr,
            "batch_tokens": bs,
            "loss": loss,
            "status": "finished",
        }
    )
    return validate_run_table(runs)


# Dense loss frontier of the synthetic leverage study: L_dense(C) = E + A·C^(−alpha).
LEVERAGE_DENSE = {"E": 1.7, "A": 60.0, "alpha": 0.1}


def synthetic_leverage_runs(
    coef: dict[str, float],
    sigma: float = 0.0,
    seed: int = 0,
    dense_budgets: np.ndarray | None = None,
    moe_budgets: np.ndarray | None = None,
    act_ratios: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3),
    granularities: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0),
    dense: dict[str, float] = LEVERAGE_DENSE,
) -> pd.DataFrame:
    """Dense and MoE runs whose efficiency leverage follows Ling's EL(A, G, C) law with ``coef``.

    Dense: one run per budget on the frontier L_dense(C) = E + A·C^(−alpha). MoE: one run per (A, G, budget)
    with L_moe(C) = L_dense(EL(A, G, C)·C), i.e. the MoE run reaches the dense loss of EL times its compute
    (the definition of EL, Ling arXiv 2507.17702 Sec. 4). Every loss is multiplied by exp(σ·ε), ε ~ N(0, 1).
    """
    from windtunnel.laws.leverage import leverage_value

    rng = np.random.default_rng(seed)
    dense_budgets = np.logspace(18, 21, 7) if dense_budgets is None else np.asarray(dense_budgets, float)
    moe_budgets = np.logspace(18, 21, 4) if moe_budgets is None else np.asarray(moe_budgets, float)

    def frontier(C: np.ndarray) -> np.ndarray:
        return dense["E"] + dense["A"] * np.asarray(C, float) ** -dense["alpha"]

    rows = [{"family": "dense", "compute": C, "loss": float(frontier(C))} for C in dense_budgets]
    for A in act_ratios:
        for G in granularities:
            for C in moe_budgets:
                el = float(leverage_value(coef, A, G, C))
                rows.append(
                    {
                        "family": "moe",
                        "compute": C,
                        "loss": float(frontier(el * C)),
                        "act_ratio": A,
                        "granularity": G,
                    }
                )
    runs = pd.DataFrame(rows)
    runs["loss"] *= np.exp(sigma * rng.standard_normal(len(runs)))
    runs["run_id"] = [f"lev{seed}-{i}" for i in range(len(runs))]
    return validate_run_table(runs)


def synthetic_steplaw_runs(
    lr_law: dict[str, float],
    batch_law: dict[str, float],
    params: tuple[float, ...] = (2e8, 5e8, 1.2e9),
    tokens_per_param: tuple[float, ...] = (20.0, 60.0, 200.0),
    n_lr: int = 7,
    n_bs: int = 5,
    sigma: float = 0.0005,
    seed: int = 0,
) -> pd.DataFrame:
    """A StepFun-style grid: every (N, D) cell (N in ``params``, D = N·tokens_per_param) has an lr × batch
    grid around the true optimum lr* = a·N^alpha·D^beta (``lr_law``), bs* = a·D^b (``batch_law``), with

        L = [E + A/N^alpha + B/D^beta + k_lr·log²(lr/lr*) + k_bs·log²(bs/bs*)] · exp(σ·ε),

    the Chinchilla terms and k_lr, k_bs taken from ``TRUE`` (a convex basin per cell, as StepFun observe).
    The grid steps are 2^0.5 in lr and 2^0.5 in batch; C = 6·N·D."""
    rng = np.random.default_rng(seed)
    t = TRUE
    rows = []
    for N in params:
        for tpp in tokens_per_param:
            D = N * tpp
            lr_star = lr_law["a"] * N ** lr_law["alpha"] * D ** lr_law["beta"]
            bs_star = batch_law["a"] * D ** batch_law["b"]
            offsets = rng.uniform(-0.25, 0.25, 2)  # the grid is not centred on the optimum
            for i in range(n_lr):
                for j in range(n_bs):
                    lr = lr_star * 2 ** (0.5 * (i - n_lr // 2) + offsets[0])
                    bs = bs_star * 2 ** (0.5 * (j - n_bs // 2) + offsets[1])
                    rows.append((N, D, lr, bs))
    N, D, lr, bs = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
    lr_star = lr_law["a"] * N ** lr_law["alpha"] * D ** lr_law["beta"]
    bs_star = batch_law["a"] * D ** batch_law["b"]
    clean = (
        t["E"]
        + t["A"] / N ** t["alpha"]
        + t["B"] / D ** t["beta"]
        + t["k_lr"] * np.log(lr / lr_star) ** 2
        + t["k_bs"] * np.log(bs / bs_star) ** 2
    )
    runs = pd.DataFrame(
        {
            "run_id": [f"step{seed}-{i}" for i in range(len(N))],
            "sweep": "steplaw_grid",
            "family": "dense",
            "params": N,
            "tokens": D,
            "compute": 6.0 * N * D,
            "lr": lr,
            "batch_tokens": bs,
            "loss": clean * np.exp(sigma * rng.standard_normal(len(N))),
        }
    )
    return validate_run_table(runs)
