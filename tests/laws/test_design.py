"""The run-design math (windtunnel/laws/design.py): the Bayesian update against hand computation, and
greedy proposals on a law with known truth against random proposers of the same cost."""

from __future__ import annotations

import numpy as np
import pytest

from windtunnel.laws.design import (
    block_gain,
    bootstrap_covariance,
    compute_optimal_point,
    gauss_newton_covariance,
    greedy_design,
    log_loss_jacobian,
    pi95_width,
    point_noise,
    posterior_covariance,
    target_variance,
)
from windtunnel.laws.synthetic import TRUE, optimal_params

X_TRUE = np.array([np.log(TRUE["A"]), np.log(TRUE["B"]), np.log(TRUE["E"]), TRUE["alpha"], TRUE["beta"]])


def test_one_parameter_update_by_hand():
    # prior variance s2, one run with derivative j, noise sigma2, target derivative g:
    # Var_new = g² s2 sigma2 / (sigma2 + j² s2)  (1/Var_x = 1/s2 + j²/sigma2)
    s2, j, g, sigma2 = 0.04, 2.0, 3.0, 0.01
    post = posterior_covariance(np.array([[s2]]), np.array([[j]]), sigma2)
    assert post[0, 0] == pytest.approx(s2 * sigma2 / (sigma2 + j * j * s2), rel=1e-12)
    d = greedy_design(
        np.array([[s2]]), np.array([g]), np.array([[j], [0.5]]), np.array([1.0, 1.0]), sigma2, 1
    )
    assert d.chosen == [0]  # the more informative run at equal cost
    assert d.var_before == pytest.approx(g * g * s2)
    assert d.var_after[0] == pytest.approx(g * g * s2 * sigma2 / (sigma2 + j * j * s2), rel=1e-12)


def test_budgeted_design_does_not_waste_the_budget_on_cheap_runs():
    # 1 parameter, budget 10: a cheap run (cost 1, j = 0.5) has the best reduction per FLOP, but taking it
    # leaves no room for the decisive one (cost 10, j = 5); per-FLOP greedy alone would take the cheap run
    s2, g, sigma2 = 1.0, 1.0, 0.1
    J, cost = np.array([[0.5], [5.0]]), np.array([1.0, 10.0])
    d = greedy_design(np.array([[s2]]), np.array([g]), J, cost, sigma2, k=2, budget=10.0)
    assert d.chosen == [1]
    assert d.var_after[-1] == pytest.approx(s2 * sigma2 / (sigma2 + 25.0 * s2))
    assert greedy_design(np.array([[s2]]), np.array([g]), J, cost, sigma2, k=2).chosen == [0, 1]  # no budget


def test_update_equals_information_form():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(5, 5))
    Sigma = A @ A.T + 0.1 * np.eye(5)
    J = rng.normal(size=(3, 5))
    sigma2 = 0.3
    expected = np.linalg.inv(np.linalg.inv(Sigma) + J.T @ J / sigma2)
    np.testing.assert_allclose(posterior_covariance(Sigma, J, sigma2), expected, rtol=1e-9, atol=1e-12)
    # sequential rank-one picks give the same result as the batch update
    d = greedy_design(Sigma, J[0], J, np.ones(3), sigma2, 3)
    assert d.var_after[-1] == pytest.approx(target_variance(expected, J[0]), rel=1e-9)


def test_gauss_newton_covariance_is_least_squares_covariance():
    # 1 parameter: y_i = x·j_i + noise → Var(x̂) = sigma² / Σ j_i²
    J = np.array([[1.0], [2.0], [3.0]])
    assert gauss_newton_covariance(J, 0.04)[0, 0] == pytest.approx(0.04 / 14.0, rel=1e-8)
    # adding runs to a Gauss-Newton Σ with the same sigma² equals Gauss-Newton over all runs
    rng = np.random.default_rng(2)
    J0, J1 = rng.normal(size=(8, 5)), rng.normal(size=(2, 5))
    both = gauss_newton_covariance(np.vstack([J0, J1]), 0.01)
    np.testing.assert_allclose(
        posterior_covariance(gauss_newton_covariance(J0, 0.01), J1, 0.01), both, rtol=1e-6
    )


def test_jacobian_matches_finite_differences():
    N, D = np.array([1e6, 3e7]), np.array([2e8, 5e9])
    J = log_loss_jacobian(X_TRUE, N, D)

    def logL(x):
        a, b, e, al, be = x
        return np.log(np.exp(e) + np.exp(a - al * np.log(N)) + np.exp(b - be * np.log(D)))

    for p in range(5):
        dx = np.zeros(5)
        dx[p] = 1e-6
        np.testing.assert_allclose(J[:, p], (logL(X_TRUE + dx) - logL(X_TRUE - dx)) / 2e-6, rtol=1e-5)


def test_compute_optimal_point_minimises_the_law():
    C, k = 1e21, 6.0
    n_opt, d_opt = compute_optimal_point(X_TRUE, C, k)
    assert n_opt == pytest.approx(float(optimal_params(C)), rel=1e-9)  # the synthetic law's own formula
    Ns = n_opt * np.exp(np.linspace(-0.5, 0.5, 101))
    a, b, e, al, be = X_TRUE
    L = np.exp(e) + np.exp(a) / Ns**al + np.exp(b) / (C / (k * Ns)) ** be
    assert abs(np.log(Ns[np.argmin(L)] / n_opt)) < 0.011
    assert d_opt == pytest.approx(C / (k * n_opt))


def test_pi95_width_and_robust_covariance():
    assert pi95_width(2.0, 0.0, 0.0) == 0.0
    h = 1.959964 * np.sqrt(0.01**2 + 0.02**2)
    assert pi95_width(2.0, 0.01**2, 0.02) == pytest.approx(2.0 * (np.exp(h) - np.exp(-h)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)) * [0.1, 0.2]
    x[0] = [50.0, 0.0]  # a refit that ran off must not dominate the covariance
    cov = bootstrap_covariance(x)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), [0.1, 0.2], rtol=0.15)


def _existing_design() -> tuple[np.ndarray, np.ndarray]:
    """IsoFLOP runs at three small budgets (5 sizes each around N_opt), C = 6ND."""
    N, D = [], []
    for C in (1e17, 4e17, 1.6e18):
        n_opt = float(optimal_params(C))
        for f in np.exp(np.linspace(-1.0, 1.0, 5)):
            N.append(n_opt * f)
            D.append(C / (6 * n_opt * f))
    return np.array(N), np.array(D)


def test_greedy_beats_random_proposers_of_the_same_cost():
    """Known truth: Σ = sigma²(JᵀJ)⁻¹ of the existing runs at the true law; the target is the
    compute-optimal run 100x beyond the largest budget. The greedy design must lower the target's variance
    more than the median random set of candidates costing no more than it (a random proposer fails this
    about half the time) and come within 10 % of the best of 200 such sets."""
    sigma2 = 0.005**2
    N0, D0 = _existing_design()
    J0 = log_loss_jacobian(X_TRUE, N0, D0)
    Sigma = sigma2 * np.linalg.inv(J0.T @ J0)
    n_t, d_t = compute_optimal_point(X_TRUE, 1.6e20, 6.0)
    g = log_loss_jacobian(X_TRUE, [n_t], [d_t])[0]
    Nc, Dc = np.meshgrid(np.geomspace(N0.min(), 4 * N0.max(), 9), np.geomspace(D0.min(), 8 * D0.max(), 9))
    Nc, Dc = Nc.ravel(), Dc.ravel()
    Jc, cost = log_loss_jacobian(X_TRUE, Nc, Dc), 6 * Nc * Dc
    k = 4
    d = greedy_design(Sigma, g, Jc, cost, sigma2, k, budget=4 * 1.6e18)
    assert len(d.chosen) == k and d.total_cost <= 4 * 1.6e18
    greedy_drop = d.var_before - d.var_after[-1]
    rng = np.random.default_rng(0)
    drops = []
    while len(drops) < 200:
        pick = rng.choice(len(Nc), size=k, replace=False)
        if cost[pick].sum() <= d.total_cost:
            drops.append(d.var_before - target_variance(posterior_covariance(Sigma, Jc[pick], sigma2), g))
    assert greedy_drop > np.median(drops)
    assert greedy_drop >= np.max(drops) * 0.9  # close to the best of 200 random sets, not just the median


# ---- many points per run: a candidate run is a block of rows, its FLOPs counted once ------------------

FRACTIONS = (0.25, 0.5, 1.0)


def _prior() -> tuple[np.ndarray, np.ndarray, float]:
    """(Σ of the existing IsoFLOP runs at the true law, g at the compute-optimal target, sigma²)."""
    sigma2 = 0.005**2
    N0, D0 = _existing_design()
    J0 = log_loss_jacobian(X_TRUE, N0, D0)
    n_t, d_t = compute_optimal_point(X_TRUE, 1.6e20, 6.0)
    return sigma2 * np.linalg.inv(J0.T @ J0), log_loss_jacobian(X_TRUE, [n_t], [d_t])[0], sigma2


def _run_blocks(N: np.ndarray, D: np.ndarray, fractions=FRACTIONS) -> list[np.ndarray]:
    """One block per run (N, D): the rows of its points (N, f·D)."""
    return [
        log_loss_jacobian(X_TRUE, [n] * len(fractions), [f * d for f in fractions])
        for n, d in zip(N, D, strict=True)
    ]


def test_block_gain_is_the_rank_one_gain_and_the_block_update():
    Sigma, g, sigma2 = _prior()
    j = log_loss_jacobian(X_TRUE, [3e8], [6e9])
    one = float((g @ Sigma @ j[0]) ** 2 / (sigma2 + j[0] @ Sigma @ j[0]))
    assert block_gain(Sigma, g, j, point_noise(1, sigma2)) == pytest.approx(one, rel=1e-10)
    J = _run_blocks(np.array([3e8]), np.array([6e9]))[0]
    for rho in (0.0, 0.6):
        R = point_noise(3, sigma2, rho)
        post = np.linalg.inv(np.linalg.inv(Sigma) + J.T @ np.linalg.solve(R, J))  # information form, GLS
        drop = target_variance(Sigma, g) - target_variance(post, g)
        assert block_gain(Sigma, g, J, R) == pytest.approx(drop, rel=1e-6)
        d = greedy_design(Sigma, g, [J], np.array([1.0]), sigma2, 1, rho=rho)
        assert d.var_after[0] == pytest.approx(target_variance(post, g), rel=1e-6)
    with pytest.raises(ValueError, match="rho"):
        point_noise(3, sigma2, -0.6)


def test_a_run_with_points_gives_more_information_per_flop_than_the_same_run_without():
    """Same (N, D), same FLOPs (WSM merges cost no training): the run's points (N, D/4), (N, D/2), (N, D)
    lower the target variance more than its one final row, for independent and for correlated points."""
    Sigma, g, sigma2 = _prior()
    N, D = np.geomspace(3e7, 3e9, 5), np.geomspace(1e9, 1e11, 5)
    for n in N:
        for d in D:
            plain = block_gain(Sigma, g, log_loss_jacobian(X_TRUE, [n], [d]), point_noise(1, sigma2))
            J = _run_blocks(np.array([n]), np.array([d]))[0]
            for rho in (0.0, 0.5):
                assert block_gain(Sigma, g, J, point_noise(3, sigma2, rho)) > plain
    # offered both at the same cost, the greedy takes the variant with points
    n, d = 3e8, 3e10
    blocks = [log_loss_jacobian(X_TRUE, [n], [d]), _run_blocks(np.array([n]), np.array([d]))[0]]
    assert greedy_design(Sigma, g, blocks, np.array([6 * n * d] * 2), sigma2, 1).chosen == [1]


def test_design_with_points_beats_random_run_sets_and_the_design_without_points():
    """Candidate runs on a grid, each yielding points at D/4, D/2, D: greedy within a budget lowers the
    target variance more than the median random set of runs of no greater cost (a random proposer fails
    this about half the time), and more than the greedy design of the same runs without points."""
    Sigma, g, sigma2 = _prior()
    N0, D0 = _existing_design()
    Nc, Dc = np.meshgrid(np.geomspace(N0.min(), 4 * N0.max(), 9), np.geomspace(D0.min(), 8 * D0.max(), 9))
    Nc, Dc = Nc.ravel(), Dc.ravel()
    blocks, cost = _run_blocks(Nc, Dc), 6 * Nc * Dc
    k, budget = 4, 4 * 1.6e18
    d = greedy_design(Sigma, g, blocks, cost, sigma2, k, budget=budget)
    assert 0 < len(d.chosen) <= k and d.total_cost <= budget
    drop = d.var_before - d.var_after[-1]
    plain = greedy_design(Sigma, g, log_loss_jacobian(X_TRUE, Nc, Dc), cost, sigma2, k, budget=budget)
    assert drop > plain.var_before - plain.var_after[-1]
    rng = np.random.default_rng(0)
    drops = []
    while len(drops) < 200:
        pick = rng.choice(len(Nc), size=k, replace=False)
        if cost[pick].sum() <= d.total_cost:
            S = Sigma
            for i in pick:
                S = posterior_covariance(S, blocks[i], sigma2)
            drops.append(d.var_before - target_variance(S, g))
    assert drop > np.median(drops)
    assert drop >= np.max(drops) * 0.9
