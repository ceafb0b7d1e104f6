"""Robust power laws y = a·x^b and the loss frontier L(C) = E + A·C^(−alpha), batched over resamples.

Power law (Kaplan et al. 2020; Ling "Towards Greater Leverage", arXiv 2507.17702, Eq. for η_opt, B_opt):
log y = log a + b·log x, fitted by minimising Σ_i w_i·Huber_δ(log a + b·log x_i − log y_i) (δ = 0.1 in
natural-log units by default: residuals beyond ~10 % count linearly), started from weighted least squares.
Every resample is one row of the weight matrix ``W_RN`` (multinomial bootstrap counts); all rows are solved
at once with ``optim.batched_lbfgs``.

Frontier (Ling, arXiv 2507.17702 Sec. 3; Hoffmann et al. 2022): L(C) = E + A·C^(−alpha) fitted in log space as
log L̂ = LSE(log A − alpha·log C, log E) with Huber δ = 1e-3 on log loss, summed (Epoch AI's objective,
arXiv 2404.10102), from a small grid of starts. Frontier points = the lowest loss at each compute budget.
Its 95 % prediction interval (``intervals``): bootstrap percentiles widened by the RMS log residual of the
frontier points and the log error of the top-budget backtest.
"""

from __future__ import annotations

import itertools

import numpy as np

from windtunnel.laws.intervals import pi95_record, residual_scale
from windtunnel.laws.optim import batched_lbfgs, huber, polish

POWERLAW_DELTA = 0.1
FRONTIER_DELTA = 1e-3


def weighted_ols_RN(logx_N: np.ndarray, logy_N: np.ndarray, W_RN: np.ndarray) -> np.ndarray:
    """Closed-form weighted least squares of logy on (1, logx) for each row of W_RN → (R, 2) [log a, b]."""
    sw = W_RN.sum(1)
    sx = W_RN @ logx_N
    logy_RN = np.broadcast_to(logy_N, W_RN.shape)
    sy = (W_RN * logy_RN).sum(1)
    sxx = W_RN @ (logx_N * logx_N)
    sxy = (W_RN * logy_RN * logx_N[None, :]).sum(1)
    den = sw * sxx - sx * sx
    safe = np.abs(den) > 1e-12 * np.maximum(sw * sxx, 1e-300)
    b = np.where(safe, (sw * sxy - sx * sy) / np.where(safe, den, 1.0), 0.0)
    loga = np.where(sw > 0, (sy - b * sx) / np.maximum(sw, 1e-300), np.nan)
    return np.stack([loga, b], axis=1)


def fit_powerlaw_batched(
    x_N: np.ndarray, y_N: np.ndarray, W_RN: np.ndarray, delta: float = POWERLAW_DELTA
) -> np.ndarray:
    """Robust fits of y = a·x^b for each weight row; returns (R, 2) rows [a, b] (NaN where a row is
    degenerate).

    ``y_N`` may also be (R, N): one set of targets per row (e.g. per-resample IsoFLOP optima); entries with
    zero weight may be NaN.
    """
    logx = np.log(x_N)
    logy_full = np.log(np.broadcast_to(y_N, W_RN.shape))
    W_RN = np.where(np.isfinite(logy_full), W_RN, 0.0)
    logy_full = np.where(np.isfinite(logy_full), logy_full, 0.0)
    xc = logx.mean()  # centre log x: keeps the problem well conditioned
    lx = logx - xc
    x0 = weighted_ols_RN(lx, logy_full, W_RN)
    _, group_N = np.unique(lx, return_inverse=True)
    ok = np.isfinite(x0).all(1) & (distinct_weighted_groups(group_N.reshape(-1), W_RN) >= 2)

    out = np.full((W_RN.shape[0], 2), np.nan)
    if ok.any():
        rows = np.flatnonzero(ok)
        sub_W = W_RN[rows]
        sub_y = logy_full[rows]

        def fg_sub(p_BP: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            r_BN = p_BP[:, :1] + p_BP[:, 1:2] * lx[None, :] - sub_y[r]
            h, dh = huber(r_BN, delta)
            w = sub_W[r]
            wdh = w * dh
            return (w * h).sum(1), np.stack([wdh.sum(1), (wdh * lx).sum(1)], axis=1)

        p, _, _ = batched_lbfgs(fg_sub, x0[rows], max_iter=200, gtol=1e-12)
        out[rows, 0] = np.exp(p[:, 0] - p[:, 1] * xc)
        out[rows, 1] = p[:, 1]
    return out


def distinct_weighted_groups(group_N: np.ndarray, W_RN: np.ndarray) -> np.ndarray:
    """Per weight row r, the number of distinct groups g holding a run with positive weight:
    |{group_N[i] : W_RN[r, i] > 0}|, the row count of nonzero columns of W_RN·onehot(group_N).

    A grouped reduction over the (row, group) keys of the positive entries (sort-unique, then a bincount
    per row): O(R·N) memory, where the dense W_RN·onehot(group_N) takes R·U + N·U for U distinct groups
    (U ≈ N on run tables whose runs all have their own compute)."""
    R = W_RN.shape[0]
    U = int(group_N.max()) + 1 if group_N.size else 1
    row_R, col = np.nonzero(W_RN > 0)
    keys = np.unique(row_R.astype(np.int64) * U + group_N[col])
    return np.bincount(keys // U, minlength=R)


def frontier_points(compute_N: np.ndarray, loss_N: np.ndarray, budget_N: np.ndarray) -> np.ndarray:
    """Indices of the lowest-loss run at each budget label."""
    idx = []
    for b in np.unique(budget_N):
        members = np.flatnonzero(budget_N == b)
        idx.append(members[np.argmin(loss_N[members])])
    return np.array(idx, dtype=int)


def _frontier_objective(logC: np.ndarray, logL: np.ndarray, W_RN: np.ndarray, delta: float):
    """f(x) = Σ w_i Huber_δ(LSE(a − alpha·log C_i, e) − log L_i), x = (a, e, alpha); analytic gradient."""

    def fg(x_BP: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t1 = x_BP[:, :1] - x_BP[:, 2:3] * logC[None, :]
        t2 = np.broadcast_to(x_BP[:, 1:2], t1.shape)
        m = np.maximum(t1, t2)
        e1, e2 = np.exp(t1 - m), np.exp(t2 - m)
        tot = e1 + e2
        r = m + np.log(tot) - logL[None, :]
        h, dh = huber(r, delta)
        w = W_RN[rows] if W_RN.shape[0] > 1 else W_RN
        c = w * dh / tot
        s1, s2 = c * e1, c * e2
        return (w * h).sum(1), np.stack([s1.sum(1), s2.sum(1), -(s1 * logC).sum(1)], axis=1)

    return fg


def fit_frontier(
    C_N: np.ndarray, L_N: np.ndarray, delta: float = FRONTIER_DELTA
) -> tuple[dict[str, float], np.ndarray]:
    """Fit L = E + A·C^(−alpha) to frontier points; returns ({E, A, alpha}, x = (log A, log E, alpha))."""
    logC, logL = np.log(C_N), np.log(L_N)
    lmin = float(logL.min())
    # grid of starts: alpha, E below the lowest loss, A chosen so the curve passes the first point
    starts = []
    for alpha, frac in itertools.product([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8], [0.0, 0.3, 0.6, 0.85, 0.95]):
        e = np.log(max(frac * np.exp(lmin), 1e-6))
        rest = max(np.exp(logL[0]) - np.exp(e), 1e-6)
        starts.append((np.log(rest) + alpha * logC[0], e, alpha))
    fg = _frontier_objective(logC, logL, np.ones((1, logC.size)), delta)
    x, f, _ = batched_lbfgs(fg, np.array(starts), max_iter=400, gtol=1e-12)
    best = int(np.nanargmin(np.where(np.isfinite(f), f, np.inf)))
    xb, _ = polish(fg, x[best])
    return frontier_coefficients(xb), xb


def bootstrap_frontier(
    C_N: np.ndarray, L_N: np.ndarray, x_hat: np.ndarray, W_RN: np.ndarray, delta: float = FRONTIER_DELTA
) -> np.ndarray:
    """Refit the frontier for each weight row (resample), started at x_hat; returns x_RP."""
    fg = _frontier_objective(np.log(C_N), np.log(L_N), W_RN, delta)
    x, _, _ = batched_lbfgs(fg, np.repeat(x_hat[None], W_RN.shape[0], 0), max_iter=600, gtol=1e-12)
    return x


def frontier_coefficients(x_P: np.ndarray) -> dict[str, float]:
    """(log A, log E, alpha) → {E, A, alpha} (an unidentified fit may overflow A to inf: no warning)."""
    with np.errstate(over="ignore"):
        return {"E": float(np.exp(x_P[1])), "A": float(np.exp(x_P[0])), "alpha": float(x_P[2])}


def frontier_value(E: float | np.ndarray, A: float | np.ndarray, alpha: float | np.ndarray, C: np.ndarray):
    """L(C) = E + A·C^(−alpha) (inf·0 of an overflowed fit gives nan, silently: callers check finiteness)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return E + A * np.power(C, -alpha)


def frontier_value_log(x_P: np.ndarray, C: np.ndarray) -> np.ndarray:
    """L(C) from x = (log A, log E, alpha) as exp(LSE(log A − alpha·log C, log E)): finite where A = e^(log A)
    overflows (a steep fit on few points), unlike ``frontier_value`` on the exponentiated coefficients."""
    return np.exp(np.logaddexp(x_P[0] - x_P[2] * np.log(C), x_P[1]))


def fit_frontier_law(runs, n_boot: int = 200, rng: np.random.Generator | None = None, backtest: bool = True):
    """``frontier`` law: L(C) = E + A·C^(−alpha) on the best loss per budget; bootstrap resamples runs.

    Runs that differ only in seed count as one setting with their mean loss (``base.seed_mean``): the
    frontier is the best *expected* loss per budget, what one run at the target is compared with, not the
    luckiest seed. In each resample the frontier point of a budget is the best loss among the drawn settings
    (vectorised as a masked minimum), and the fit is redone from the full-data optimum.
    """
    from windtunnel.laws.base import (
        Law,
        LawError,
        bootstrap_resample_blocks,
        budget_labels,
        percentile_ci,
        relative_errors,
        seed_mean,
    )

    rng = np.random.default_rng(0) if rng is None else rng
    n_given = len(runs)
    runs = seed_mean(runs)
    C = runs["compute"].to_numpy(float)
    L = runs["loss"].to_numpy(float)
    labels, centers = budget_labels(C)
    if len(centers) < 3:
        raise LawError(f"needs runs at 3 or more compute budgets for E, A, alpha; got {len(centers)}")
    fp = frontier_points(C, L, labels)
    coefs, x_hat = fit_frontier(C[fp], L[fp])
    law = Law(
        name="frontier",
        form="loss = E + A * C^(-alpha)  (best loss per compute budget)",
        coefficients=coefs,
        n_runs=int(n_given),
        run_ids=[str(r) for r in runs["run_id"].to_numpy()[fp]],
        notes={"points": [[float(C[i]), float(L[i])] for i in fp]},
    )
    if n_boot:
        points = [
            frontier_resample_points(C, L, labels, W)
            for W in bootstrap_resample_blocks(len(runs), n_boot, rng)
        ]
        logC_RK, logL_RK = (np.concatenate(p) for p in zip(*points, strict=True))
        x = bootstrap_frontier_rows(logC_RK, logL_RK, x_hat)
        with np.errstate(over="ignore"):
            samples = {"E": np.exp(x[:, 1]), "A": np.exp(x[:, 0]), "alpha": x[:, 2]}
        law.ci95 = {k: percentile_ci(v) for k, v in samples.items()}
        law.samples = {k: v.tolist() for k, v in samples.items()}
    if coefs["E"] < 1e-6 * float(L[fp].min()):
        law.notes["E_at_bound"] = (
            f"E = {coefs['E']:.3g}: the budgets identify no irreducible loss, so the law is a pure power law "
            "A*C^(-alpha); a floor E > 0 beyond the ladder would make it predict too low far out"
        )
    sigma_res = residual_scale(np.log(frontier_value_log(x_hat, C[fp])) - np.log(L[fp]))
    law.extra["pi95"] = pi95_record(sigma_res, 0.0)
    if backtest:
        if len(centers) < 4:
            law.backtest = {"skipped": "needs 4 or more compute budgets"}
        else:
            low = runs[labels < len(centers) - 1]
            fpl = frontier_points(
                low["compute"].to_numpy(float), low["loss"].to_numpy(float), labels[labels < len(centers) - 1]
            )
            c_low, x_low = fit_frontier(low["compute"].to_numpy(float)[fpl], low["loss"].to_numpy(float)[fpl])
            top = fp[-1]
            pred = frontier_value_log(x_low, C[[top]])
            cut = float(centers[-1] / 10**0.05)
            if np.all(np.isfinite(pred)):
                law.backtest = {"cut_compute": cut, **relative_errors(pred, L[[top]])}
                law.extra["pi95"] = pi95_record(sigma_res, float(np.abs(np.log(pred[0] / L[top]))))
            else:  # e.g. 3 points for 3 coefficients, bending so fast that A overflows: say so, not nan
                law.backtest = {
                    "cut_compute": cut,
                    "skipped": f"the frontier fitted on the {len(fpl)} budgets below the cut is not"
                    f" identified (alpha={c_low['alpha']:.3g}): no finite prediction at the top budget",
                }
    return law


def bootstrap_frontier_resamples(
    C: np.ndarray, L: np.ndarray, labels: np.ndarray, W_RN: np.ndarray, x_hat: np.ndarray
) -> np.ndarray:
    """Frontier refits, one per resample (row of multinomial ``W_RN`` over runs), started at x_hat; returns
    x_RP = (log A, log E, alpha). In each resample a budget's frontier point is the best loss among its drawn
    runs (``frontier_resample_points``)."""
    return bootstrap_frontier_rows(*frontier_resample_points(C, L, labels, W_RN), x_hat)


def frontier_resample_points(
    C: np.ndarray, L: np.ndarray, labels: np.ndarray, W_RN: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(log C, log L) of each resample's frontier points, (R, K) each for K budget labels: a budget's point is
    its lowest-loss run among those drawn (weight > 0; a masked minimum), log L = +inf where none was drawn.
    Memory O(R·N): callers pass blocks of resamples (``base.bootstrap_resample_blocks``)."""
    K = int(labels.max()) + 1
    Lm_RN = np.where(W_RN > 0, L[None, :], np.inf)
    bestL_RK = np.empty((W_RN.shape[0], K))
    argbest_RK = np.empty((W_RN.shape[0], K), dtype=int)
    for k in range(K):
        members = np.flatnonzero(labels == k)
        Lk = Lm_RN[:, members]
        argbest_RK[:, k] = members[np.argmin(Lk, 1)]
        bestL_RK[:, k] = Lk.min(1)
    with np.errstate(divide="ignore"):
        return np.log(C[argbest_RK]), np.log(bestL_RK)


def bootstrap_frontier_rows(logC_RK: np.ndarray, logL_RK: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """Frontier refits where each row has its own points (logC_RK, logL_RK); started at x_hat.

    A budget none of whose runs was drawn in a resample (best loss +inf) gets weight 0 in that row.
    """
    w_RK = np.isfinite(logL_RK).astype(float)
    logL_RK = np.where(w_RK > 0, logL_RK, 0.0)
    logC_RK = np.where(w_RK > 0, logC_RK, 0.0)

    def fg(x_BP: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lc, ll = logC_RK[rows], logL_RK[rows]
        t1 = x_BP[:, :1] - x_BP[:, 2:3] * lc
        t2 = np.broadcast_to(x_BP[:, 1:2], t1.shape)
        m = np.maximum(t1, t2)
        e1, e2 = np.exp(t1 - m), np.exp(t2 - m)
        tot = e1 + e2
        h, dh = huber(m + np.log(tot) - ll, FRONTIER_DELTA)
        w = w_RK[rows]
        h = w * h
        c = w * dh / tot
        s1, s2 = c * e1, c * e2
        return h.sum(1), np.stack([s1.sum(1), s2.sum(1), -(s1 * lc).sum(1)], axis=1)

    x, _, _ = batched_lbfgs(fg, np.repeat(x_hat[None], logC_RK.shape[0], 0), max_iter=600, gtol=1e-12)
    return x
