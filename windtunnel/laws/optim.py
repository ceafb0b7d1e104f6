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
from dataclasses import dataclass

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


def _two_loop_direction(
    g: np.ndarray, S_MP: np.ndarray, Y_MP: np.ndarray, rho_M: np.ndarray, has_mem: np.ndarray
) -> np.ndarray:
    """L-BFGS search direction d = -H·g for each row (Nocedal & Wright Alg. 7.4, stored pairs newest last);
    rows without memory take a small steepest-descent step scaled to the gradient."""
    memory = S_MP.shape[1]
    q = g.copy()
    alpha_M = np.zeros((g.shape[0], memory))
    for j in range(memory - 1, -1, -1):
        s, y, rho = S_MP[:, j], Y_MP[:, j], rho_M[:, j]
        a = rho * np.einsum("bp,bp->b", s, q)
        alpha_M[:, j] = a
        q -= a[:, None] * y
    s_new, y_new = S_MP[:, -1], Y_MP[:, -1]
    yy = np.einsum("bp,bp->b", y_new, y_new)
    gamma = np.where(has_mem & (yy > 0), np.einsum("bp,bp->b", s_new, y_new) / np.maximum(yy, 1e-300), 0.0)
    first = gamma <= 0
    gamma = np.where(first, 1e-3 / np.maximum(np.abs(g).max(axis=1), 1e-12), gamma)
    r = gamma[:, None] * q
    for j in range(memory):
        s, y, rho = S_MP[:, j], Y_MP[:, j], rho_M[:, j]
        b_ = rho * np.einsum("bp,bp->b", y, r)
        r += s * (alpha_M[:, j] - b_)[:, None]
    return -r


def _armijo_search(
    fg: BatchedObjective, x_RP: np.ndarray, d: np.ndarray, f0: np.ndarray, slope: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Backtracking Armijo line search per row (c1 = 1e-4, shrink 0.3, 30 tries); returns
    (t, x_new, f_new, g_new)."""
    t = np.ones(rows.size)
    x_new = x_RP + d
    f_new, g_new = fg(x_new, rows)
    for _ls in range(30):
        ok = np.isfinite(f_new) & (f_new <= f0 + 1e-4 * t * slope)
        if ok.all():
            break
        redo = np.flatnonzero(~ok)
        t[redo] *= 0.3
        x_new[redo] = x_RP[redo] + t[redo, None] * d[redo]
        f_r, g_r = fg(x_new[redo], rows[redo])
        f_new[redo], g_new[redo] = f_r, g_r
    return t, x_new, f_new, g_new


@dataclass
class _Memory:
    """The L-BFGS pairs (s, y, rho = 1/s·y) of B problems, newest last."""

    S_BMP: np.ndarray
    Y_BMP: np.ndarray
    rho_BM: np.ndarray
    n_mem_B: np.ndarray

    @classmethod
    def empty(cls, B: int, memory: int, P: int) -> _Memory:
        return cls(
            np.zeros((B, memory, P)), np.zeros((B, memory, P)), np.zeros((B, memory)), np.zeros(B, int)
        )

    def reset(self, rows: np.ndarray) -> None:
        self.n_mem_B[rows] = 0
        self.S_BMP[rows] = 0
        self.Y_BMP[rows] = 0
        self.rho_BM[rows] = 0

    def push(self, u: np.ndarray, s: np.ndarray, y: np.ndarray, sy: np.ndarray) -> None:
        """Shift rows ``u``'s memory and store the new pair."""
        self.S_BMP[u] = np.roll(self.S_BMP[u], -1, axis=1)
        self.Y_BMP[u] = np.roll(self.Y_BMP[u], -1, axis=1)
        self.rho_BM[u] = np.roll(self.rho_BM[u], -1, axis=1)
        self.S_BMP[u, -1] = s
        self.Y_BMP[u, -1] = y
        self.rho_BM[u, -1] = 1.0 / sy
        self.n_mem_B[u] = np.minimum(self.n_mem_B[u] + 1, self.S_BMP.shape[1])


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
    f_B, g_BP = fg(x_BP, np.arange(B))
    f_B = np.where(np.isfinite(f_B), f_B, np.inf)
    mem = _Memory.empty(B, memory, P)
    n_iter_B = np.zeros(B, dtype=int)
    active_B = np.isfinite(f_B) & (np.abs(g_BP).max(axis=1) > gtol)
    for _ in range(max_iter):
        rows = np.flatnonzero(active_B)
        if rows.size == 0:
            break
        g = g_BP[rows]
        d = _two_loop_direction(g, mem.S_BMP[rows], mem.Y_BMP[rows], mem.rho_BM[rows], mem.n_mem_B[rows] > 0)
        slope = np.einsum("bp,bp->b", g, d)
        bad = ~(slope < 0)  # not a descent direction: restart with steepest descent
        if bad.any():
            d[bad] = -g[bad] * (1e-3 / np.maximum(np.abs(g[bad]).max(axis=1), 1e-12))[:, None]
            slope[bad] = np.einsum("bp,bp->b", g[bad], d[bad])
            mem.reset(rows[bad])
        f0 = f_B[rows]
        t, x_new, f_new, g_new = _armijo_search(fg, x_BP[rows], d, f0, slope, rows)
        ok = np.isfinite(f_new) & (f_new <= f0 + 1e-4 * t * slope)
        s_step = x_new - x_BP[rows]
        y_step = g_new - g
        sy = np.einsum("bp,bp->b", s_step, y_step)
        upd = ok & (sy > 1e-300)
        mem.push(rows[upd], s_step[upd], y_step[upd], sy[upd])
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
