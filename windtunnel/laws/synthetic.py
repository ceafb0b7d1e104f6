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
