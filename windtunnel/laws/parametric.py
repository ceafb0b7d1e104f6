"""Parametric loss law L(N, D) = E + A/N^alpha + B/D^beta, fitted with Epoch AI's method.

Source: Hoffmann et al. 2022 (Chinchilla, Approach 3, Eq. 2) and Besiroglu et al. 2024, "Chinchilla
Scaling: A replication attempt" (arXiv 2404.10102): in log space

    log L̂(N, D) = LSE(a − alpha·log N,  b − beta·log D,  e),   A = e^a, B = e^b, E = e^e,

minimise  Σ_i w_i · Huber_δ(log L̂_i − log L_i)  with δ = 1e-3, **summed** (not averaged), by L-BFGS from a
grid of starts (alpha, beta ∈ {0, .5, 1, 1.5, 2}, e ∈ {−1, −.5, 0, .5, 1}, a, b ∈ {0, 5, …, 25}) and keep
the lowest objective. Here all grid starts are run at once (``optim.batched_lbfgs``), the best few are
polished with scipy L-BFGS-B, and bootstrap refits reuse the same batched solver with resampling weights
w_i (multinomial counts), each started from the full-data optimum.
"""

from __future__ import annotations

import itertools

import numpy as np

from windtunnel.laws.forms import CANDIDATES, PLAIN, bootstrap_candidate
from windtunnel.laws.intervals import pi95_record, residual_scale
from windtunnel.laws.optim import batched_lbfgs, chunked_over_problems, huber, polish
from windtunnel.laws.selection import fit_form, frontier_e_resamples, select_form

HUBER_DELTA = 1e-3
# parameter vector order: (a, b, e, alpha, beta)
PARAM_NAMES = ("a", "b", "e", "alpha", "beta")


def epoch_grid() -> np.ndarray:
    """Epoch AI's grid as rows (a, b, e, alpha, beta): 5·5·5·6·6 = 4,500 starts from the listed values
    (alpha, beta ∈ {0, .5, 1, 1.5, 2}, e ∈ {−1, −.5, 0, .5, 1}, a, b ∈ {0, 5, …, 25};
    SOURCE.md quotes 3,750)."""
    alphas = betas = np.arange(0.0, 2.01, 0.5)
    es = np.arange(-1.0, 1.01, 0.5)
    abs_ = np.arange(0.0, 25.01, 5.0)
    return np.array(
        [(a, b, e, al, be) for al, be, e, a, b in itertools.product(alphas, betas, es, abs_, abs_)]
    )


def make_objective(
    logN: np.ndarray, logD: np.ndarray, logL: np.ndarray, weights_RN: np.ndarray, delta: float
):
    """Batched objective f_b(x) = Σ_i w_{r(b),i}·Huber_δ(LSE(a − α logN_i, b − β logD_i, e) − log L_i)
    and gradient.

    ``weights_RN`` holds one weight vector per problem row (grid starts share row 0 → pass a (1, N) array
    and rows of zeros; bootstrap problems pass their own row).
    """

    def fg(x_BP: np.ndarray, rows_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b, e, alpha, beta = (x_BP[:, k : k + 1] for k in range(5))
        t1_BN = a - alpha * logN[None, :]
        t2_BN = b - beta * logD[None, :]
        t3_BN = np.broadcast_to(e, t1_BN.shape)
        m_BN = np.maximum(np.maximum(t1_BN, t2_BN), t3_BN)
        e1, e2, e3 = np.exp(t1_BN - m_BN), np.exp(t2_BN - m_BN), np.exp(t3_BN - m_BN)
        tot = e1 + e2 + e3
        r_BN = m_BN + np.log(tot) - logL[None, :]
        h_BN, dh_BN = huber(r_BN, delta)
        w_BN = (
            weights_RN[np.minimum(rows_B, weights_RN.shape[0] - 1)] if weights_RN.shape[0] > 1 else weights_RN
        )
        f_B = (w_BN * h_BN).sum(axis=1)
        c_BN = w_BN * dh_BN / tot
        s1, s2, s3 = c_BN * e1, c_BN * e2, c_BN * e3
        g_BP = np.stack(
            [s1.sum(1), s2.sum(1), s3.sum(1), -(s1 * logN).sum(1), -(s2 * logD).sum(1)],
            axis=1,
        )
        return f_B, g_BP

    return chunked_over_problems(fg, logN.size)


def to_coefficients(x_P: np.ndarray) -> dict[str, float]:
    """(a, b, e, alpha, beta) → {E, A, B, alpha, beta}."""
    a, b, e, alpha, beta = (float(v) for v in x_P)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha, "beta": beta}


def fit_parametric(
    N: np.ndarray,
    D: np.ndarray,
    L: np.ndarray,
    grid: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
    n_polish: int = 8,
    strategy: str = "halving",
) -> tuple[dict[str, float], float, np.ndarray]:
    """Fit L = E + A/N^alpha + B/D^beta by Epoch's method; returns (coefficients, objective, x = (a,b,e,α,β)).

    ``strategy="full"`` runs every grid start for up to 100 batched L-BFGS iterations; ``"halving"``
    (default) runs all starts for 15 iterations on at most 256 of the points, keeps the best quarter, repeats
    until ≤ 64 remain and runs those on all points to convergence (successive halving: same optimum on the
    Epoch, Porian, Gadre and synthetic data; checked in tests and the benchmark).
    The best ``n_polish`` are then polished with scipy L-BFGS-B.
    """
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    grid = epoch_grid() if grid is None else np.atleast_2d(grid)
    fg = make_objective(logN, logD, logL, np.ones((1, len(logN))), delta)
    with np.errstate(over="ignore", invalid="ignore"):
        if strategy == "full":
            x_BP, f_B, _ = batched_lbfgs(fg, grid, max_iter=100, gtol=1e-10)
        elif strategy == "halving":
            x_BP = grid
            # screening rounds use at most 256 points (a fixed random subset) so their cost does not
            # grow with n
            sub = np.random.default_rng(0).permutation(len(logN))[:256]
            fg_sub = make_objective(logN[sub], logD[sub], logL[sub], np.ones((1, sub.size)), delta)
            while len(x_BP) > 64:
                x_BP, f_B, _ = batched_lbfgs(fg_sub, x_BP, max_iter=15, gtol=1e-10)
                keep = np.argsort(np.where(np.isfinite(f_B), f_B, np.inf))[: max(64, len(x_BP) // 4)]
                x_BP = x_BP[keep]
            x_BP, f_B, _ = batched_lbfgs(fg, x_BP, max_iter=300, gtol=1e-10)
        else:
            raise ValueError(f"strategy must be 'halving' or 'full', got {strategy!r}")
        order = np.argsort(np.where(np.isfinite(f_B), f_B, np.inf))
        best_x, best_f = x_BP[order[0]], float(f_B[order[0]])
        for k in order[:n_polish]:
            x, f = polish(fg, x_BP[k])
            if f < best_f:
                best_x, best_f = x, f
    return to_coefficients(best_x), best_f, best_x


def bootstrap_parametric(
    N: np.ndarray,
    D: np.ndarray,
    L: np.ndarray,
    x_hat: np.ndarray,
    weights_RN: np.ndarray,
    delta: float = HUBER_DELTA,
) -> np.ndarray:
    """Refit for each resample (row of multinomial ``weights_RN``), started at ``x_hat``; returns x_RP."""
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    fg = make_objective(logN, logD, logL, weights_RN, delta)
    x0 = np.repeat(x_hat[None, :], weights_RN.shape[0], axis=0)
    with np.errstate(over="ignore", invalid="ignore"):
        x_RP, _, _ = batched_lbfgs(fg, x0, max_iter=300, gtol=1e-10)
    return x_RP


def predict_parametric(x_P: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """L̂ = E + A/N^alpha + B/D^beta from the log-space vector x = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = x_P
    return np.exp(e) + np.exp(a - alpha * np.log(N)) + np.exp(b - beta * np.log(D))


def fit_parametric_law(
    runs, n_boot: int = 200, rng: np.random.Generator | None = None, backtest: bool = True
):
    """``parametric`` law from the run table's params, tokens, loss (and compute, for the frontier's E).

    The fit takes one row per (params, tokens) cell, its best-tuned hyper-parameter setting with the loss
    averaged over seeds (``base.best_tuned``): the runs of an LR search that are not the cell's best are not
    samples of L(N, D). The form is chosen among ``forms.CANDIDATES`` by a rollout backtest inside these runs
    (``selection.select_form``); the winner is refitted on all runs, bootstrapped (resampled runs, batched
    refits from the full-data optimum; for ``e_fixed`` E is refitted on each resample's frontier), and its
    95 % prediction interval combines the bootstrap with the residual scale (``intervals``). The entry's
    ``selection`` names the winner and every candidate's rollout error; ``pi95`` gives sigma.
    """
    from windtunnel.laws.base import Law, LawError, best_tuned, percentile_ci

    rng = np.random.default_rng(0) if rng is None else rng
    n_given = len(runs)
    runs = best_tuned(runs)
    N, D, L = (runs[c].to_numpy(float) for c in ("params", "tokens", "loss"))
    if len(runs) < 6:
        raise LawError(f"needs at least 6 usable runs for 5 coefficients; got {len(runs)}")
    if np.unique(N).size < 2 or np.unique(D).size < 2:
        raise LawError("needs 2 or more distinct params and tokens values")
    C = _compute(runs, N, D)
    sel = select_form(N, D, L, C)
    cand = next(c for c in CANDIDATES if c.name == sel.chosen)
    _, _, x_plain = fit_parametric(N, D, L)
    x_hat, _ = (x_plain, 0.0) if cand is PLAIN else fit_form(cand, N, D, L, C, warm=x_plain)
    if not np.all(np.isfinite(x_hat)):  # a candidate that cannot be refitted on all runs: the plain form
        cand, x_hat = PLAIN, x_plain
    law = Law(
        name="parametric",
        form=f"loss = E + A / params^alpha + B / tokens^beta  [{cand.name}: {cand.describe()}]",
        coefficients=to_coefficients(x_hat),
        n_runs=int(len(runs)),
        run_ids=[str(r) for r in runs["run_id"]],
    )
    with np.errstate(all="ignore"):
        sigma_res = residual_scale(np.log(predict_parametric(x_hat, N, D)) - np.log(L))
    if len(runs) < n_given:
        law.notes["best_tuned"] = f"{len(runs)} (params, tokens) cells from {n_given} runs"
    law.extra = {
        "selection": {**sel.to_dict(), "chosen": cand.name},
        "pi95": pi95_record(sigma_res, residual_scale(np.array(sel.rollout_log_residuals))),
    }
    if n_boot:
        x = bootstrap_chosen(cand, N, D, L, C, x_hat, n_boot, rng)
        samples = {
            "E": np.exp(x[:, 2]),
            "A": np.exp(x[:, 0]),
            "B": np.exp(x[:, 1]),
            "alpha": x[:, 3],
            "beta": x[:, 4],
        }
        law.ci95 = {k: percentile_ci(v) for k, v in samples.items()}
        law.samples = {k: v.tolist() for k, v in samples.items()}
    if backtest:
        law.backtest = _top_budget_backtest(cand, N, D, L, C, x_hat)
    return law


def bootstrap_chosen(
    cand, N, D, L, C, x_hat: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """x_RP of ``n_boot`` resamples of the runs (multinomial counts, ``base.bootstrap_resample_blocks``),
    each refitted with the chosen candidate from x_hat; for ``e_fixed``, log E is refitted on each
    resample's frontier. Works block by block: memory O(block) whatever n_boot and the number of runs, the
    same draws and refits as one (n_boot, N) weight matrix (each resample's refit is independent)."""
    from windtunnel.laws.base import bootstrap_resample_blocks

    x_blocks = []
    for W_RN in bootstrap_resample_blocks(len(L), n_boot, rng):
        e_R = frontier_e_resamples(C, L, W_RN) if cand.fix_e else 0.0
        x_blocks.append(bootstrap_candidate(cand, N, D, L, x_hat, W_RN, e_fixed=e_R))
    return np.concatenate(x_blocks)


def _compute(runs, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """The runs' compute, 6·N·D where a row lacks it."""
    C = runs["compute"].to_numpy(float) if "compute" in runs else np.full(len(N), np.nan)
    return np.where(np.isfinite(C) & (C > 0), C, 6.0 * N * D)


def _top_budget_backtest(cand, N, D, L, C, x_hat) -> dict:
    """Refit the chosen form below the top compute budget and predict it: {cut_compute, mean/max_rel_err over
    its runs, frontier_rel_err at its best run (the compute-optimal point)}."""
    from windtunnel.laws.base import budget_labels, relative_errors

    labels, centers = budget_labels(C)
    if len(centers) < 3:
        return {"skipped": "needs 3 or more compute budgets"}
    low = labels < len(centers) - 1
    try:
        x_low, _ = fit_form(cand, N[low], D[low], L[low], C[low], warm=x_hat)
        if not np.all(np.isfinite(x_low)):
            return {"skipped": f"{cand.name} could not be fitted below the top budget"}
        pred = predict_parametric(x_low, N[~low], D[~low])
        best = int(np.argmin(L[~low]))  # the top budget's best run: the point a frontier law predicts
        frontier = relative_errors(pred[best : best + 1], L[~low][best : best + 1])["mean_rel_err"]
        return {
            "cut_compute": float(centers[-1] / 10**0.05),
            **relative_errors(pred, L[~low]),
            "frontier_rel_err": frontier,
        }
    except Exception as err:  # noqa: BLE001 - a failed backtest must not lose the law
        return {"skipped": f"backtest fit failed: {err}"}
