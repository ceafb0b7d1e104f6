"""Choosing the loss law's form by a rollout backtest inside the fit set.

For each candidate of ``forms.CANDIDATES`` and each rollout fold, the candidate is fitted on the fit set's
smaller models and predicts its largest ones; its rollout error is the mean over folds of the mean
|log L̂ − log L| on the held-out runs (≈ relative error). The candidate with the lowest rollout error wins and
is refitted on the whole fit set. Points the caller later asks the law to predict are never part of the fit
set, so they cannot influence the choice (a forward-chaining backtest: Tashman 2000, "Out-of-sample tests of
forecasting accuracy", rolling origin).

Folds: fold f holds out the runs of the top ⌈K·f⌉ of the K distinct model sizes N for f ∈
``HOLDOUT_FRACTIONS``; a fold needs ``MIN_TRAIN`` runs and 2 distinct N and D below the cut. The rollout is
ordered by N because a loss law is asked to extrapolate to larger models (the wind tunnel's target, a
recommended 1T config, every held-out point of ``benchmarks/laws_heldout.py``). On the four anchor fit sets
of that benchmark, a rollout by compute budget chose forms with larger held-out error on three, and folds of
both kinds on one (equal on two); the comparison is in benchmarks/RESULTS.md, "Rollout folds", and the rule
was chosen after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from windtunnel.laws.base import budget_labels
from windtunnel.laws.forms import CANDIDATES, PLAIN, Candidate, fit_candidate, predict_x
from windtunnel.laws.powerlaw import bootstrap_frontier_resamples, fit_frontier, frontier_points

HOLDOUT_FRACTIONS = (0.2, 0.35)
MIN_TRAIN = 8


@dataclass
class Selection:
    """Outcome of the rollout backtest: the winner, every candidate's rollout error, the folds used, and the
    winner's held-out log residuals (the scale of its extrapolation error)."""

    chosen: str
    errors: dict[str, float]
    folds: list[dict] = field(default_factory=list)
    rollout_log_residuals: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "chosen": self.chosen,
            "candidates": dict(self.errors),
            "holdout": {
                "rule": "per fold, the runs of the top ceil(K*f) of K model sizes, "
                f"f in {list(HOLDOUT_FRACTIONS)}",
                "folds": self.folds,
                "error": "mean over folds of mean |log L_pred - log L| on the held-out runs",
            },
        }


def frontier_e(C: np.ndarray, L: np.ndarray) -> float:
    """log E of the loss frontier L(C) = E + A·C^(−alpha) fitted on the lowest loss per budget (nan if fewer
    than 3 budgets or no finite fit)."""
    labels, centers = budget_labels(C)
    if len(centers) < 3:
        return float("nan")
    fp = frontier_points(C, L, labels)
    with np.errstate(all="ignore"):
        coefs, x = fit_frontier(C[fp], L[fp])
    return float(x[1]) if np.isfinite(x[1]) and coefs["E"] < L.min() else float("nan")


def frontier_e_resamples(C: np.ndarray, L: np.ndarray, W_RN: np.ndarray) -> np.ndarray:
    """log E of the loss frontier refitted in every resample (row of ``W_RN``), so that a form with E fixed
    from the frontier carries E's uncertainty into its bootstrap; a resample whose frontier gives no E
    below its best loss keeps the full-data value."""
    labels, _ = budget_labels(C)
    fp = frontier_points(C, L, labels)
    with np.errstate(all="ignore"):
        _, x_hat = fit_frontier(C[fp], L[fp])
        e_R = bootstrap_frontier_resamples(C, L, labels, W_RN, x_hat)[:, 1]
    best_R = np.where(W_RN > 0, L[None, :], np.inf).min(1)
    return np.where(np.isfinite(e_R) & (np.exp(e_R) < best_R), e_R, x_hat[1])


def fit_form(cand: Candidate, N, D, L, C, warm: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Fit one candidate (E from the frontier of the same runs for ``fix_e``); x is nan where it cannot be
    fitted."""
    e0 = 0.0
    if cand.fix_e:
        e0 = frontier_e(C, L)
        if not np.isfinite(e0):
            return np.full(5, np.nan), float("nan")
    return fit_candidate(cand, N, D, L, e_fixed=e0, warm=warm)


def rollout_folds(C: np.ndarray, N: np.ndarray, D: np.ndarray) -> list[np.ndarray]:
    """Boolean train masks, one per usable fold (see module docstring); ``C`` is accepted for a uniform
    signature with the other per-run helpers and is not used."""
    sizes = np.unique(N)
    K = sizes.size
    masks: list[np.ndarray] = []
    for f in HOLDOUT_FRACTIONS:
        k = int(np.ceil(K * f))
        if not 1 <= k < K:
            continue
        train = N < sizes[K - k]
        if (
            train.sum() >= MIN_TRAIN
            and np.unique(N[train]).size >= 2
            and np.unique(D[train]).size >= 2
            and not any(np.array_equal(train, m) for m in masks)
        ):
            masks.append(train)
    return masks


def select_form(
    N: np.ndarray, D: np.ndarray, L: np.ndarray, C: np.ndarray, candidates: tuple[Candidate, ...] = CANDIDATES
) -> Selection:
    """Rollout backtest of every candidate on the fit set (N, D, L, C); the lowest mean error wins.

    Without a usable fold (too few budgets or runs) the plain form wins and every error is nan."""
    masks = rollout_folds(C, N, D)
    if not masks:
        return Selection(PLAIN.name, {c.name: float("nan") for c in candidates})
    per_fold: dict[str, list[float]] = {c.name: [] for c in candidates}
    resid: dict[str, list[float]] = {c.name: [] for c in candidates}
    folds = []
    for train in masks:
        folds.append(
            {
                "n_train": int(train.sum()),
                "n_holdout": int((~train).sum()),
                "cut_compute": float(C[train].max()),
            }
        )
        warm, _ = fit_form(PLAIN, N[train], D[train], L[train], C[train])
        for cand in candidates:
            x = (
                warm
                if cand is PLAIN
                else fit_form(cand, N[train], D[train], L[train], C[train], warm=warm)[0]
            )
            with np.errstate(all="ignore"):
                r = np.log(predict_x(x, N[~train], D[~train])) - np.log(L[~train])
            err = float(np.mean(np.abs(r))) if np.all(np.isfinite(r)) else float("inf")
            per_fold[cand.name].append(err)
            resid[cand.name].extend(r.tolist())
    errors = {name: float(np.mean(v)) for name, v in per_fold.items()}
    chosen = min(candidates, key=lambda c: (errors[c.name], candidates.index(c))).name
    return Selection(chosen, errors, folds, resid[chosen])


def selection_lines(laws: dict) -> list[str]:
    """One line per law chosen among candidate forms, for ``windtunnel fit``'s output: the winner, then
    every candidate's rollout error (%), and sigma of its 95 % prediction interval where it has one."""
    lines = []
    for name, law in laws.items():
        sel = law.extra.get("selection") if hasattr(law, "extra") else None
        if not sel:
            continue
        errs = ", ".join(
            f"{k} {100 * v:.2f}%" if v is not None and np.isfinite(v) else f"{k} n/a"
            for k, v in sel.get("candidates", {}).items()
        )
        pi = law.extra.get("pi95", {})
        sigma = f"; pi95 sigma(log loss) {pi['sigma_log']:.4f}" if "sigma_log" in pi else ""
        lines.append(
            f"{name}: form chosen by rollout backtest: {sel['chosen']} (rollout errors: {errs}){sigma}"
        )
    return lines
