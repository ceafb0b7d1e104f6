"""Synthetic recovery: the bootstrap ci95 covers the true coefficients about 95 % of the time."""

from __future__ import annotations

import numpy as np

from windtunnel.laws.base import bootstrap_weights
from windtunnel.laws.parametric import bootstrap_parametric, fit_parametric
from windtunnel.laws.powerlaw import fit_powerlaw_batched


def test_powerlaw_ci95_coverage_over_100_seeds() -> None:
    a_true, b_true, sigma = 1.1576, -0.1529, 0.05
    n_seeds, n_boot = 100, 200
    C = np.repeat(np.logspace(17, 20, 8), 5)  # 8 budgets × 5 runs
    rng = np.random.default_rng(123)
    y_SN = a_true * C[None, :] ** b_true * np.exp(sigma * rng.standard_normal((n_seeds, C.size)))
    W_SRN = np.stack([bootstrap_weights(C.size, n_boot, rng) for _ in range(n_seeds)])
    rows_y = np.repeat(y_SN, n_boot + 1, axis=0)
    coef = fit_powerlaw_batched(C, rows_y, W_SRN.reshape(-1, C.size)).reshape(n_seeds, n_boot + 1, 2)
    lo = np.percentile(coef[:, 1:], 2.5, axis=1)
    hi = np.percentile(coef[:, 1:], 97.5, axis=1)
    cover_a = np.mean((lo[:, 0] <= a_true) & (a_true <= hi[:, 0]))
    cover_b = np.mean((lo[:, 1] <= b_true) & (b_true <= hi[:, 1]))
    assert 0.85 <= cover_a <= 0.99, cover_a
    assert 0.85 <= cover_b <= 0.99, cover_b
    # and the point estimates are unbiased to well within their spread
    assert abs(np.median(coef[:, 0, 1]) - b_true) < 0.01


def test_parametric_ci95_coverage() -> None:
    true = np.array([np.log(400.0), np.log(2000.0), np.log(1.8), 0.34, 0.36])  # (a, b, e, alpha, beta)
    N = np.repeat(np.logspace(7, 9, 6), 8)
    D = np.tile(np.logspace(9, 11, 8), 6)
    clean = np.exp(true[2]) + np.exp(true[0]) / N ** true[3] + np.exp(true[1]) / D ** true[4]
    rng = np.random.default_rng(7)
    n_seeds, hits = 40, np.zeros(5)
    for _ in range(n_seeds):
        L = clean * np.exp(0.01 * rng.standard_normal(N.size))
        _, _, x_hat = fit_parametric(N, D, L, grid=true[None, :], n_polish=1)
        x_RP = bootstrap_parametric(N, D, L, x_hat, bootstrap_weights(N.size, 100, rng)[1:])
        lo, hi = np.percentile(x_RP, [2.5, 97.5], axis=0)
        hits += (lo <= true) & (true <= hi)
    coverage = hits / n_seeds
    assert np.all(coverage >= 0.8), coverage
    assert np.all(coverage <= 1.0)
    assert coverage.mean() >= 0.85, coverage
