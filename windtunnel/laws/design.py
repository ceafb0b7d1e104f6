"""Adaptive run design: which next runs most shrink the 95 % interval of the predicted loss at a target.

Linearised (local) optimal experimental design for the parametric law in log space (Atkinson, Donev &
Tobias 2007, "Optimum Experimental Designs, with SAS", ch. 9 (locally optimal designs for non-linear
models) and ch. 10.2 (c-optimality: the variance of one linear combination cᵀx)):

    log L̂(N, D; x) = LSE(a − alpha·log N,  b − beta·log D,  e),   x = (a, b, e, alpha, beta),

the Jacobian row of a run at (N, D) is j = ∂ log L̂ / ∂x = (p1, p2, p3, −p1·log N, −p2·log D) with p the
softmax weights of the three terms. With Σ the covariance of x̂ (Gauss-Newton, sigma²·(J_runsᵀJ_runs)⁻¹
over the fitted runs, or the bootstrap of the current fit) and sigma² the variance of one run's log loss
about the law, adding runs with rows J updates

    Σ_new⁻¹ = Σ⁻¹ + JᵀJ / sigma²,   i.e. (Woodbury; no inverse of Σ, so a singular Σ from a constrained
    Σ_new = Σ − Σ Jᵀ (sigma² I + J Σ Jᵀ)⁻¹ J Σ          form such as alpha = beta is handled)

and the variance of log L̂ at the target is g ᵀ Σ g, g = j(N_t, D_t). One run j lowers it by
(gᵀΣj)² / (sigma² + jᵀΣj) (the rank-one case); the greedy design picks, k times, the candidate with the
largest lowering per FLOP among those within the remaining budget and updates Σ (sequential c-optimal
design, Atkinson et al. 2007 §11.2); with a finite budget, the better of that and the plain greedy
(``greedy_design``).

Many points per run (``trainer.points``): a candidate run is a block of rows J_G (one per point (N, D_k) it
yields, all of one cost: the run's FLOPs once, plus its WSD branches), observed with noise covariance
R = sigma²·((1 − rho)·I + rho·11ᵀ) (rho: the correlation of one run's points about the law; 0 treats them
as independent rows, as the law engine's fit does). Its lowering of the target variance is the block form
of the rank-one case, (J_G Σ g)ᵀ (R + J_G Σ J_Gᵀ)⁻¹ (J_G Σ g), and the update
Σ_new = Σ − Σ J_Gᵀ (R + J_G Σ J_Gᵀ)⁻¹ J_G Σ (Atkinson et al. 2007 §11.2 with correlated errors), so a long
run with four points competes with four short runs on information per FLOP.

The 95 % interval width is formed as the law engine forms it (``intervals.widen``): the parameter part and
the residual scale sigma_log added in quadrature in log loss, half-width h = z·sqrt(gᵀΣg + sigma_log²),
width = L̂·(e^h − e^−h). Pure numpy: no Ray, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from windtunnel.laws.intervals import Z95


def log_loss_jacobian(x_P: np.ndarray, N_K: np.ndarray, D_K: np.ndarray) -> np.ndarray:
    """J_KP = ∂ log L̂(N_k, D_k) / ∂x for x = (a, b, e, alpha, beta) (module docstring)."""
    a, b, e, alpha, beta = (float(v) for v in x_P)
    logN, logD = np.log(np.asarray(N_K, float)), np.log(np.asarray(D_K, float))
    t_K3 = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)], axis=1)
    p_K3 = np.exp(t_K3 - t_K3.max(axis=1, keepdims=True))
    p_K3 /= p_K3.sum(axis=1, keepdims=True)
    return np.stack([p_K3[:, 0], p_K3[:, 1], p_K3[:, 2], -p_K3[:, 0] * logN, -p_K3[:, 1] * logD], axis=1)


def frontier_log_jacobian(x_P: np.ndarray, C_K: np.ndarray) -> np.ndarray:
    """J_KP = ∂ log L*(C_k) / ∂x of the loss frontier L*(C) = E + A·C^(−alpha) (``powerlaw.fit_frontier_law``)
    in its fit's coordinates x = (log A, log E, alpha): log L* = LSE(log A − alpha·log C, log E), so with p
    the softmax weights of the two terms j = (p1, p2, −p1·log C) (the module docstring's form, one term
    fewer)."""
    logA, logE, alpha = (float(v) for v in x_P)
    logC = np.log(np.asarray(C_K, float))
    t_K2 = np.stack([logA - alpha * logC, np.full_like(logC, logE)], axis=1)
    p_K2 = np.exp(t_K2 - t_K2.max(axis=1, keepdims=True))
    p_K2 /= p_K2.sum(axis=1, keepdims=True)
    return np.stack([p_K2[:, 0], p_K2[:, 1], -p_K2[:, 0] * logC], axis=1)


def compute_optimal_point(x_P: np.ndarray, compute: float, flops_per_param: float) -> tuple[float, float]:
    """(N_opt, D_opt) minimising L̂(N, D) under C = k·N·D, k = ``flops_per_param`` (6 in Chinchilla's
    accounting): N_opt = (alpha·A / (beta·B))^(1/(alpha+beta)) · (C/k)^(beta/(alpha+beta)) (Hoffmann et al.
    2022, Eq. 4, with 6 replaced by k), D_opt = C / (k·N_opt)."""
    a, b, _, alpha, beta = (float(v) for v in x_P)
    log_g = (np.log(alpha / beta) + a - b) / (alpha + beta)
    n_opt = float(np.exp(log_g + beta / (alpha + beta) * np.log(compute / flops_per_param)))
    return n_opt, float(compute / (flops_per_param * n_opt))


def bootstrap_covariance(x_RP: np.ndarray, max_mad: float = 8.0) -> np.ndarray:
    """Σ_PP of bootstrap refits x_RP: rows with a non-finite value, or a coordinate further than
    ``max_mad`` scaled median absolute deviations from its median (refits that ran off), are left out."""
    x = np.asarray(x_RP, float)
    x = x[np.all(np.isfinite(x), axis=1)]
    if len(x) < 2:
        raise ValueError("needs 2 or more finite bootstrap refits for a covariance")
    med = np.median(x, axis=0)
    mad = 1.4826 * np.median(np.abs(x - med), axis=0)
    keep = np.all(np.abs(x - med) <= max_mad * np.where(mad > 0, mad, np.inf), axis=1)
    kept = x[keep] if keep.sum() >= 2 else x
    return np.atleast_2d(np.cov(kept, rowvar=False))


def gauss_newton_covariance(J_NP: np.ndarray, sigma2: float, rel_ridge: float = 1e-10) -> np.ndarray:
    """Σ = sigma²·(JᵀJ)⁻¹ of least squares in log loss at x̂ (the Gauss-Newton Hessian of the fit's
    objective; Seber & Wild 1989, "Nonlinear Regression", §2.1), J the fitted runs' Jacobian rows; a ridge
    of ``rel_ridge``·trace/P keeps a direction the runs do not inform finite but large."""
    H_PP = J_NP.T @ J_NP
    ridge = rel_ridge * max(float(np.trace(H_PP)) / H_PP.shape[0], 1e-300)
    return sigma2 * np.linalg.inv(H_PP + ridge * np.eye(H_PP.shape[0]))


def posterior_covariance(
    Sigma_PP: np.ndarray, J_KP: np.ndarray, sigma2: float, R_KK: np.ndarray | None = None
) -> np.ndarray:
    """Σ_new = Σ − Σ Jᵀ (R + J Σ Jᵀ)⁻¹ J Σ: Σ after K more rows J with noise covariance R (default sigma² I;
    one run's correlated points: ``point_noise``) (module docstring)."""
    J = np.atleast_2d(J_KP)
    SJt_PK = Sigma_PP @ J.T
    R = sigma2 * np.eye(J.shape[0]) if R_KK is None else R_KK
    return Sigma_PP - SJt_PK @ np.linalg.solve(R + J @ SJt_PK, SJt_PK.T)


def target_variance(Sigma_PP: np.ndarray, g_P: np.ndarray) -> float:
    """Var(log L̂ at the target) = gᵀ Σ g."""
    return float(g_P @ Sigma_PP @ g_P)


def pi95_width(value: float, var_param: float, sigma_log: float, z: float = Z95) -> float:
    """Width of the 95 % interval of a loss ``value``: h = z·sqrt(var_param + sigma_log²) in log loss,
    width = value·(e^h − e^−h) (``intervals.widen`` with a symmetric parameter part)."""
    h = z * np.sqrt(max(var_param, 0.0) + sigma_log**2)
    return float(value * (np.exp(h) - np.exp(-h)))


@dataclass
class Design:
    """A greedy design: the chosen candidate indices in order, the target variance before and after each
    pick, and each pick's cost."""

    chosen: list[int] = field(default_factory=list)
    var_before: float = 0.0
    var_after: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)

    @property
    def total_cost(self) -> float:
        return float(sum(self.cost))


def point_noise(n_rows: int, sigma2: float, rho: float = 0.0) -> np.ndarray:
    """R = sigma²·((1 − rho)·I + rho·11ᵀ): the noise covariance of one run's ``n_rows`` points."""
    lower = -1.0 / (n_rows - 1) if n_rows > 1 else -np.inf
    if not lower < rho < 1.0:
        raise ValueError(f"rho must be in (-1/(n-1), 1) for a positive definite R, got {rho}")
    return sigma2 * ((1.0 - rho) * np.eye(n_rows) + rho * np.ones((n_rows, n_rows)))


def block_gain(Sigma_PP: np.ndarray, g_P: np.ndarray, J_GP: np.ndarray, R_GG: np.ndarray) -> float:
    """Lowering of gᵀΣg by one run with point rows J_G and noise R: u = J_G Σ g, uᵀ (R + J_G Σ J_Gᵀ)⁻¹ u."""
    SJt_PG = Sigma_PP @ J_GP.T
    u_G = SJt_PG.T @ g_P
    return float(u_G @ np.linalg.solve(R_GG + J_GP @ SJt_PG, u_G))


def as_blocks(J: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    """Candidates as row blocks: an array J_KP is K one-row candidates; a list holds one (n_k, P) block
    per candidate run (its points)."""
    if isinstance(J, np.ndarray) and J.ndim == 2:
        return [J[i : i + 1] for i in range(len(J))]
    return [np.atleast_2d(np.asarray(b, float)) for b in J]


def greedy_design(
    Sigma_PP: np.ndarray,
    g_P: np.ndarray,
    J_KP: np.ndarray | list[np.ndarray],
    cost_K: np.ndarray,
    sigma2: float,
    k: int,
    budget: float = float("inf"),
    rho: float = 0.0,
) -> Design:
    """Up to ``k`` distinct candidates (rows of J_KP, or one row block per candidate run with several
    points, see ``as_blocks``; costs cost_K in FLOPs, a run's once) within ``budget``.

    Cost-benefit greedy picks, each time, the largest target-variance reduction (``block_gain``; one row:
    (gᵀΣj)² / (sigma² + jᵀΣj)) per FLOP; alone it can spend a finite budget on cheap runs of little use, so
    with a finite budget the plain greedy (largest reduction, cost ignored but within the budget) is run too
    and the design with the lower final variance is kept (Leskovec et al. 2007, "Cost-effective outbreak
    detection in networks", KDD, §3: the better of the two greedy solutions is within a constant factor of
    the optimum for submodular objectives). Σ is updated after each pick (``posterior_covariance``, block
    form with the run's noise R, ``point_noise``)."""
    if not sigma2 > 0:
        raise ValueError(f"sigma2 must be > 0, got {sigma2}")
    blocks = as_blocks(J_KP)
    ratio = _greedy(Sigma_PP, g_P, blocks, cost_K, sigma2, k, budget, rho, per_flop=True)
    if not np.isfinite(budget):
        return ratio
    plain = _greedy(Sigma_PP, g_P, blocks, cost_K, sigma2, k, budget, rho, per_flop=False)
    final = lambda d: d.var_after[-1] if d.var_after else d.var_before  # noqa: E731
    return plain if final(plain) < final(ratio) else ratio


def _greedy(
    Sigma_PP: np.ndarray,
    g_P: np.ndarray,
    blocks: list[np.ndarray],
    cost_K: np.ndarray,
    sigma2: float,
    k: int,
    budget: float,
    rho: float,
    per_flop: bool,
) -> Design:
    cost = np.asarray(cost_K, float)
    S = np.array(Sigma_PP, float)
    noise = [point_noise(len(b), sigma2, rho) for b in blocks]
    design = Design(var_before=target_variance(S, g_P))
    free = np.ones(len(blocks), dtype=bool)
    left = float(budget)
    for _ in range(k):
        ok = free & (cost <= left) & (cost > 0)
        if not ok.any():
            break
        gain_K = np.array(
            [block_gain(S, g_P, b, R) if o else 0.0 for b, R, o in zip(blocks, noise, ok, strict=True)]
        )
        value_K = gain_K / np.where(cost > 0, cost, 1.0) if per_flop else gain_K
        i = int(np.argmax(np.where(ok, value_K, -np.inf)))
        S = posterior_covariance(S, blocks[i], sigma2, noise[i])
        free[i] = False
        left -= cost[i]
        design.chosen.append(i)
        design.cost.append(float(cost[i]))
        design.var_after.append(target_variance(S, g_P))
    return design
