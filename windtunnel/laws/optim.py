"""Batched smooth minimisation: many independent small problems solved at once in numpy.

Every law in this package is fitted many times: from a grid of starts (Epoch AI's method, arXiv 2404.10102)
and once per bootstrap resample. Instead of a Python loop over ``scipy.optimize.minimize`` calls, the
objective and its analytic gradient are evaluated for all B problems in one vectorised call, and a
batched L-BFGS (Nocedal & Wright 2006, Alg. 7.4 two-loop recursion, memory ``m``) with a per-problem
backtracking Armijo line search moves every problem independently. Converged problems are frozen.

The Huber loss used throughout (Huber 1964):  h_δ(r) = r²/2 for |r| ≤ δ, δ·(|r| − δ/2) otherwise;
h'_δ(r) = clip(r, −δ, δ).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize

# fg(x_BP, rows_B) -> (f_B, g_BP): objective and gradient of problems `rows_B` at points x_BP
BatchedObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# elements (problems × points) per objective evaluation: ``chunked_over_problems`` splits larger batches, so
# an objective's B × N temporaries stay near 16 MB each on any run table
OBJECTIVE_CHUNK_ELEMENTS = 2_000_000


def chunked_over_problems(fg: BatchedObjective, n_points: int, max_elements: int | None = None):
    """``fg`` evaluated on chunks of at most max(1, max_elements // n_points) problems at a time (default
    ``OBJECTIVE_CHUNK_ELEMENTS``): the same values (every problem's row is computed independently), memory
    bounded by the chunk instead of B × N."""
    rows_per = max(1, (max_elements or OBJECTIVE_CHUNK_ELEMENTS) // max(n_points, 1))

    def fg_chunked(x_BP: np.ndarray, rows_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(x_BP) <= rows_per:
            return fg(x_BP, rows_B)
        parts = [fg(x_BP[i : i + rows_per], rows_B[i : i + rows_per]) for i in range(0, len(x_BP), rows_per)]
        return np.concatenate([f for f, _ in parts]), np.concatenate([g for _, g in parts])

    return fg_chunked


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss h_δ(r) and its derivative h'_δ(r) = clip(r, −δ, δ), element-wise."""
    abs_r = np.abs(r)
    value = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))
    return value, np.clip(r, -delta, delta)


def batched_lbfgs(
    fg: BatchedObjective,
    x0_BP: np.ndarray,
    max_iter: int = 500,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    memory: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise B independent problems from starts ``x0_BP``; returns (x_BP, f_B, n_iter_B).

    Problem b stops when its gradient max-norm < ``gtol`` or its relative decrease < ``ftol``.
    """
    x_BP = np.array(x0_BP, dtype=float, copy=True)
    B, P = x_BP.shape
    rows_all = np.arange(B)
    f_B, g_BP = fg(x_BP, rows_all)
    f_B = np.where(np.isfinite(f_B), f_B, np.inf)
    S_BMP = np.zeros((B, memory, P))
    Y_BMP = np.zeros((B, memory, P))
    rho_BM = np.zeros((B, memory))
    n_mem_B = np.zeros(B, dtype=int)
    n_iter_B = np.zeros(B, dtype=int)
    active_B = np.isfinite(f_B) & (np.abs(g_BP).max(axis=1) > gtol)
    for _ in range(max_iter):
        rows = np.flatnonzero(active_B)
        if rows.size == 0:
            break
        g = g_BP[rows]
        # two-loop recursion over the stored pairs (newest last), vectorised over rows
        q = g.copy()
        alpha_M = np.zeros((rows.size, memory))
        for j in range(memory - 1, -1, -1):
            s, y, rho = S_BMP[rows, j], Y_BMP[rows, j], rho_BM[rows, j]
            a = rho * np.einsum("bp,bp->b", s, q)
            alpha_M[:, j] = a
            q -= a[:, None] * y
        s_new, y_new = S_BMP[rows, -1], Y_BMP[rows, -1]
        yy = np.einsum("bp,bp->b", y_new, y_new)
        gamma = np.where(
            (n_mem_B[rows] > 0) & (yy > 0), np.einsum("bp,bp->b", s_new, y_new) / np.maximum(yy, 1e-300), 0.0
        )
        # first step: a small steepest-descent step scaled to the gradient
        first = gamma <= 0
        gamma = np.where(first, 1e-3 / np.maximum(np.abs(g).max(axis=1), 1e-12), gamma)
        r = gamma[:, None] * q
        for j in range(memory):
            s, y, rho = S_BMP[rows, j], Y_BMP[rows, j], rho_BM[rows, j]
            b_ = rho * np.einsum("bp,bp->b", y, r)
            r += s * (alpha_M[:, j] - b_)[:, None]
        d = -r
        slope = np.einsum("bp,bp->b", g, d)
        bad = ~(slope < 0)  # not a descent direction: restart with steepest descent
        if bad.any():
            d[bad] = -g[bad] * (1e-3 / np.maximum(np.abs(g[bad]).max(axis=1), 1e-12))[:, None]
            slope[bad] = np.einsum("bp,bp->b", g[bad], d[bad])
            n_mem_B[rows[bad]] = 0
            S_BMP[rows[bad]] = 0
            Y_BMP[rows[bad]] = 0
            rho_BM[rows[bad]] = 0
        # backtracking Armijo line search, per row
        t = np.ones(rows.size)
        f0 = f_B[rows]
        x_new = x_BP[rows] + d
        f_new, g_new = fg(x_new, rows)
        for _ls in range(30):
            ok = np.isfinite(f_new) & (f_new <= f0 + 1e-4 * t * slope)
            if ok.all():
                break
            redo = np.flatnonzero(~ok)
            t[redo] *= 0.3
            x_new[redo] = x_BP[rows[redo]] + t[redo, None] * d[redo]
            f_r, g_r = fg(x_new[redo], rows[redo])
            f_new[redo], g_new[redo] = f_r, g_r
        ok = np.isfinite(f_new) & (f_new <= f0 + 1e-4 * t * slope)
        s_step = x_new - x_BP[rows]
        y_step = g_new - g
        sy = np.einsum("bp,bp->b", s_step, y_step)
        upd = ok & (sy > 1e-300)
        # shift memory and store the new pair
        u = rows[upd]
        S_BMP[u] = np.roll(S_BMP[u], -1, axis=1)
        Y_BMP[u] = np.roll(Y_BMP[u], -1, axis=1)
        rho_BM[u] = np.roll(rho_BM[u], -1, axis=1)
        S_BMP[u, -1] = s_step[upd]
        Y_BMP[u, -1] = y_step[upd]
        rho_BM[u, -1] = 1.0 / sy[upd]
        n_mem_B[u] = np.minimum(n_mem_B[u] + 1, memory)
        acc = rows[ok]
        x_BP[acc] = x_new[ok]
        f_B[acc] = f_new[ok]
        g_BP[acc] = g_new[ok]
        n_iter_B[rows] += 1
        rel = np.abs(f0 - f_new) / np.maximum(np.abs(f0), 1e-300)
        done = ~ok | (np.abs(g_new).max(axis=1) <= gtol) | (ok & (rel < ftol))
        active_B[rows[done]] = False
    return x_BP, f_B, n_iter_B


def polish(fg: BatchedObjective, x0_P: np.ndarray, row: int = 0) -> tuple[np.ndarray, float]:
    """Refine one problem with scipy's L-BFGS-B (tight tolerances, analytic gradient)."""

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = fg(x[None, :], np.array([row]))
        return float(f[0]), g[0]

    res = minimize(
        fun, x0_P, jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000}
    )
    return res.x, float(res.fun)
