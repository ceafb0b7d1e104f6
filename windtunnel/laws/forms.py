"""Candidate forms and fitting choices for the loss law L(N, D), all as constrained versions of

    L(N, D) = E + A/N^alpha + B/D^beta,   x = (a, b, e, alpha, beta),  A = e^a, B = e^b, E = e^e

(Hoffmann et al. 2022, Eq. 2). Each candidate fixes a parameterisation and an objective:

- ``chinchilla5``: five free coefficients, Σ Huber_δ(log L̂ − log L) with δ = 1e-3 (Besiroglu et al. 2024,
  arXiv 2404.10102: Epoch AI's refit);
- ``chinchilla5_delta0.1``: the same with δ = 0.1 (residuals up to 10 % count quadratically);
- ``chinchilla5_linear``: least squares on the loss itself, Σ (L̂ − L)²;
- ``tied``: alpha = beta (Gadre et al. 2024, arXiv 2403.08540, Eq. 4 rests on this), log-space Huber 1e-3;
- ``gadre_cm``: Gadre et al.'s scaling law in compute and token multiplier,
  L(C, M) = E + (a·M^η + b·M^(−η))·C^(−η), C = 6·N·D, M = D/N. Substituting gives
  alpha = beta = 2η, A = a·6^(−η), B = b·6^(−η): the tied form, fitted as the authors do (scipy
  ``curve_fit``: least squares on raw loss, repo mlfoundations/scaling ``scaling/laws.py``);
- ``e_fixed``: E fixed from a separate fit (the loss frontier L(C) = E + A·C^(−alpha) on the lowest loss per
  compute budget, ``powerlaw.fit_frontier``), the other four coefficients free, log-space Huber 1e-3.

Every candidate's optimum is stored as (E, A, B, alpha, beta), so one evaluation serves all forms.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from windtunnel.laws.optim import batched_lbfgs, chunked_over_problems, huber, polish

LSQ = float("inf")  # Huber δ = inf: plain least squares


@dataclass(frozen=True)
class Candidate:
    """A form (which coefficients are free) and an objective (space of the residual, Huber δ)."""

    name: str
    tied: bool = False
    fix_e: bool = False
    space: str = "log"  # "log": r = log L̂ − log L;  "linear": r = L̂ − L
    delta: float = 1e-3

    def describe(self) -> str:
        coefs = "E, A, B, alpha = beta" if self.tied else "E, A, B, alpha, beta"
        if self.fix_e:
            coefs += " (E fixed from the loss frontier)"
        loss = "least squares" if not np.isfinite(self.delta) else f"Huber {self.delta:g}"
        return f"{coefs}; {loss} on {'log loss' if self.space == 'log' else 'loss'}"


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("chinchilla5"),
    Candidate("chinchilla5_delta0.1", delta=0.1),
    Candidate("chinchilla5_linear", space="linear", delta=LSQ),
    Candidate("tied", tied=True),
    Candidate("gadre_cm", tied=True, space="linear", delta=LSQ),
    Candidate("e_fixed", fix_e=True),
)
PLAIN = CANDIDATES[0]


def projection(cand: Candidate, e_fixed: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(P, x0) with x = θ·Pᵀ + x0 mapping free parameters θ to x = (a, b, e, alpha, beta)."""
    cols = []
    for k in (0, 1, 2, 3, 4):
        if (cand.fix_e and k == 2) or (cand.tied and k == 4):
            continue
        col = np.zeros(5)
        col[k] = 1.0
        if cand.tied and k == 3:
            col[4] = 1.0
        cols.append(col)
    x0 = np.zeros(5)
    if cand.fix_e:
        x0[2] = e_fixed
    return np.stack(cols, axis=1), x0


def objective(cand: Candidate, logN, logD, L, W_RN: np.ndarray, e_fixed: float | np.ndarray = 0.0):
    """Batched f(θ) = Σ_i w_i·Huber_δ(r_i(θ)) and its gradient in the free parameters θ; ``e_fixed`` may
    hold one log E per weight row (a bootstrap that re-estimates E in every resample)."""
    P, x0 = projection(cand, 0.0)
    x0_R5 = np.zeros((np.size(e_fixed), 5))
    if cand.fix_e:
        x0_R5[:, 2] = e_fixed
    logL = np.log(L)
    delta = cand.delta if np.isfinite(cand.delta) else 1e30

    def fg(th_BP: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = th_BP @ P.T + (x0_R5[rows] if x0_R5.shape[0] > 1 else x0_R5)
        t1 = x[:, 0:1] - x[:, 3:4] * logN[None, :]
        t2 = x[:, 1:2] - x[:, 4:5] * logD[None, :]
        t3 = np.broadcast_to(x[:, 2:3], t1.shape)
        m = np.maximum(np.maximum(t1, t2), t3)
        e1, e2, e3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(t3 - m)
        tot = e1 + e2 + e3
        logLhat = m + np.log(tot)
        if cand.space == "log":
            r, scale = logLhat - logL[None, :], 1.0 / tot  # ∂r/∂t_k = e_k / tot
        else:
            Lhat = np.exp(logLhat)
            r, scale = Lhat - L[None, :], Lhat / tot  # ∂r/∂t_k = exp(t_k) = L̂·e_k / tot
        h, dh = huber(r, delta) if np.isfinite(cand.delta) else (0.5 * r * r, r)
        w = W_RN[rows] if W_RN.shape[0] > 1 else W_RN
        c = w * dh * scale
        s1, s2, s3 = c * e1, c * e2, c * e3
        g_x = np.stack([s1.sum(1), s2.sum(1), s3.sum(1), -(s1 * logN).sum(1), -(s2 * logD).sum(1)], 1)
        return (w * h).sum(1), g_x @ P

    return chunked_over_problems(fg, logN.size), P, x0_R5[0]


def grid_starts(cand: Candidate, e_fixed: float = 0.0) -> np.ndarray:
    """Free-parameter starts from Epoch AI's grid (alpha, beta ∈ {.25, .5, 1, 1.5}, e ∈ {−1, 0, .5, 1},
    a, b ∈ {0, 5, …, 25}), projected onto the candidate's free parameters and de-duplicated."""
    exps = (0.25, 0.5, 1.0, 1.5)
    rows = [
        (a, b, e, al, al if cand.tied else be)
        for al, be, e, a, b in itertools.product(
            exps, exps, (-1.0, 0.0, 0.5, 1.0), range(0, 26, 5), range(0, 26, 5)
        )
    ]
    P, x0 = projection(cand, e_fixed)
    th = (np.array(rows, dtype=float) - x0) @ P  # P has orthogonal 0/1 columns: least-squares inverse
    th = th / (P * P).sum(0)
    return np.unique(th, axis=0)


def fit_candidate(
    cand: Candidate,
    N: np.ndarray,
    D: np.ndarray,
    L: np.ndarray,
    e_fixed: float = 0.0,
    warm: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Fit one candidate from its grid (successive halving: 15 batched L-BFGS steps on ≤ 256 points, keep
    the best quarter until ≤ 64 remain, then all points to convergence, best 4 polished with scipy
    L-BFGS-B); ``warm`` (an x = (a, b, e, alpha, beta)) is added as a start. Returns (x, objective)."""
    logN, logD = np.log(N), np.log(D)
    P, x0 = projection(cand, e_fixed)
    starts = grid_starts(cand, e_fixed)
    if warm is not None and np.all(np.isfinite(warm)):
        starts = np.vstack([starts, ((warm - x0) @ P) / (P * P).sum(0)])
    sub = np.random.default_rng(0).permutation(len(L))[:256]
    fg_sub, _, _ = objective(cand, logN[sub], logD[sub], L[sub], np.ones((1, sub.size)), e_fixed)
    fg, _, _ = objective(cand, logN, logD, L, np.ones((1, len(L))), e_fixed)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        th = starts
        while len(th) > 64:
            th, f, _ = batched_lbfgs(fg_sub, th, max_iter=15, gtol=1e-10)
            th = th[np.argsort(np.where(np.isfinite(f), f, np.inf))[: max(64, len(th) // 4)]]
        th, f, _ = batched_lbfgs(fg, th, max_iter=300, gtol=1e-10)
        order = np.argsort(np.where(np.isfinite(f), f, np.inf))
        best, best_f = th[order[0]], float(f[order[0]])
        for k in order[:4]:
            t, fk = polish(fg, th[k])
            if fk < best_f:
                best, best_f = t, fk
    return best @ P.T + x0, best_f


def bootstrap_candidate(
    cand: Candidate, N, D, L, x_hat: np.ndarray, W_RN: np.ndarray, e_fixed: float | np.ndarray = 0.0
) -> np.ndarray:
    """Refit the candidate for every weight row (resample), started at x_hat; returns x_RP. For ``fix_e``,
    ``e_fixed`` is log E per row (or one value for all)."""
    fg, P, _ = objective(cand, np.log(N), np.log(D), L, W_RN, e_fixed)
    th0 = np.repeat(((x_hat @ P) / (P * P).sum(0))[None], W_RN.shape[0], 0)  # P has no column for a fixed e
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        th, _, _ = batched_lbfgs(fg, th0, max_iter=300, gtol=1e-10)
    x = th @ P.T
    x[:, 2] = np.broadcast_to(e_fixed, W_RN.shape[0]) if cand.fix_e else x[:, 2]
    return x


def predict_x(x_P: np.ndarray, N, D) -> np.ndarray:
    """L̂ = E + A/N^alpha + B/D^beta from x = (a, b, e, alpha, beta), evaluated as a log-sum-exp."""
    a, b, e, alpha, beta = x_P
    lN, lD = np.log(np.asarray(N, float)), np.log(np.asarray(D, float))
    return np.exp(np.logaddexp(np.logaddexp(a - alpha * lN, b - beta * lD), e))
