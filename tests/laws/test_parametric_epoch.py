"""Epoch AI's Chinchilla refit (arXiv 2404.10102) is recovered from the digitised data."""

from __future__ import annotations

import numpy as np

from windtunnel.laws.anchors import load_epoch_chinchilla
from windtunnel.laws.optim import batched_lbfgs, polish
from windtunnel.laws.parametric import epoch_grid, fit_parametric, make_objective


def test_epoch_chinchilla_refit(anchors) -> None:
    runs = load_epoch_chinchilla(drop_outliers=True, root=anchors)
    assert len(runs) == 240
    coef, objective, _ = fit_parametric(*(runs[c].to_numpy(float) for c in ("params", "tokens", "loss")))
    assert abs(coef["E"] / 1.8172 - 1) < 0.01
    assert abs(coef["alpha"] / 0.3473 - 1) < 0.01
    assert abs(coef["beta"] / 0.3672 - 1) < 0.01
    assert abs(coef["A"] / 477.84 - 1) < 0.03
    assert abs(coef["B"] / 2143.86 - 1) < 0.03
    assert abs(objective / 1.01827e-3 - 1) < 1e-3


def test_batched_objective_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    logN, logD = rng.uniform(16, 22, 30), rng.uniform(20, 26, 30)
    logL = np.log(1.8 + np.exp(6 - 0.34 * logN) + np.exp(7.6 - 0.37 * logD))
    fg = make_objective(logN, logD, logL + 0.01 * rng.standard_normal(30), np.ones((1, 30)), 1e-3)
    x = epoch_grid()[rng.choice(4500, 5)] * 0.3 + 0.1
    f, g = fg(x, np.zeros(5, int))
    eps = 1e-6
    for k in range(5):
        dx = np.zeros_like(x)
        dx[:, k] = eps
        num = (fg(x + dx, np.zeros(5, int))[0] - fg(x - dx, np.zeros(5, int))[0]) / (2 * eps)
        np.testing.assert_allclose(g[:, k], num, rtol=1e-4, atol=1e-7)


def test_batched_lbfgs_matches_scipy_per_start() -> None:
    rng = np.random.default_rng(1)
    logN, logD = rng.uniform(16, 22, 40), rng.uniform(20, 26, 40)
    logL = np.log(1.8 + np.exp(6 - 0.34 * logN) + np.exp(7.6 - 0.37 * logD)) + 0.005 * rng.standard_normal(40)
    fg = make_objective(logN, logD, logL, np.ones((1, 40)), 1e-3)
    starts = np.array([[5.0, 5.0, 0.5, 0.5, 0.5], [10.0, 5.0, 0.0, 0.5, 0.5]])
    x_b, f_b, _ = batched_lbfgs(fg, starts, max_iter=500, gtol=1e-12)
    for k in range(2):
        _, f_s = polish(fg, starts[k])
        assert f_b[k] <= f_s * (1 + 1e-3) + 1e-9
