"""Which rollout folds choose the loss law's form best: by model size (the engine's rule), by compute budget,
or both, on the four loss fit sets of ``benchmarks/laws_heldout.py``; plus Muennighoff et al.'s
effective-data form on the data-constrained runs.

For each rule the form is chosen by ``selection.select_form`` on the fit set only, refitted on it, and scored
by its mean relative error on the held-out runs (never used by any rule). The data-constrained runs are also
scored with D replaced by Muennighoff et al.'s effective data (arXiv 2305.16264, Eq. 5),

    D' = U + U·R*·(1 − exp(−R/R*)),  R = D/U − 1 repetitions,  R* = 15.39,

in both the fit and the held-out runs.

    python benchmarks/rollout_folds.py

Prints a table; the figures are in benchmarks/RESULTS.md, "Rollout folds".
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from laws_heldout import loss_splits  # noqa: E402

import windtunnel.laws.selection as selection  # noqa: E402
from windtunnel.laws.anchors import anchors_dir  # noqa: E402
from windtunnel.laws.base import budget_labels  # noqa: E402
from windtunnel.laws.forms import CANDIDATES, PLAIN, predict_x  # noqa: E402

R_STAR = 15.39  # Muennighoff et al. 2023, the fitted R_D*


def _usable(train: np.ndarray, N: np.ndarray, D: np.ndarray, masks: list[np.ndarray]) -> bool:
    return (
        selection.MIN_TRAIN <= train.sum() < train.size
        and np.unique(N[train]).size >= 2
        and np.unique(D[train]).size >= 2
        and not any(np.array_equal(train, m) for m in masks)
    )


def folds_by_compute(C: np.ndarray, N: np.ndarray, D: np.ndarray) -> list[np.ndarray]:
    """Fold f holds out the top ⌈K·f⌉ of the K compute budgets."""
    labels, centers = budget_labels(C)
    K, masks = len(centers), []
    for f in selection.HOLDOUT_FRACTIONS:
        train = labels < K - int(np.ceil(K * f))
        if _usable(train, N, D, masks):
            masks.append(train)
    return masks


def folds_both(C: np.ndarray, N: np.ndarray, D: np.ndarray) -> list[np.ndarray]:
    masks = list(SIZE_RULE(C, N, D))
    return masks + [m for m in folds_by_compute(C, N, D) if not any(np.array_equal(m, k) for k in masks)]


SIZE_RULE = selection.rollout_folds
RULES: dict[str, Callable] = {"compute": folds_by_compute, "model size": SIZE_RULE, "both": folds_both}


def chosen_error(fit: pd.DataFrame, out: pd.DataFrame, rule: Callable) -> tuple[str, float]:
    """(form chosen under ``rule``, its mean relative error on ``out``)."""
    N, D, L, C = (fit[c].to_numpy(float) for c in ("params", "tokens", "loss", "compute"))
    selection.rollout_folds = rule
    try:
        sel = selection.select_form(N, D, L, C)
    finally:
        selection.rollout_folds = SIZE_RULE
    cand = next(c for c in CANDIDATES if c.name == sel.chosen)
    x, _ = selection.fit_form(cand, N, D, L, C)
    pred = predict_x(x, out["params"].to_numpy(float), out["tokens"].to_numpy(float))
    return sel.chosen, float(np.mean(np.abs(pred / out["loss"].to_numpy(float) - 1)))


def plain_error(fit: pd.DataFrame, out: pd.DataFrame) -> float:
    N, D, L, C = (fit[c].to_numpy(float) for c in ("params", "tokens", "loss", "compute"))
    x, _ = selection.fit_form(PLAIN, N, D, L, C)
    pred = predict_x(x, out["params"].to_numpy(float), out["tokens"].to_numpy(float))
    return float(np.mean(np.abs(pred / out["loss"].to_numpy(float) - 1)))


def effective_data(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The same runs with ``tokens`` = D' (Eq. 5 above), U read from the run names' parsed table."""
    raw = pd.read_csv(root / "hitchhiker_colpret" / "DERIVED_datablations_contour_parsed.csv")
    raw = raw.set_index("name")
    U = raw.loc[df["run_id"], "U_unique_tokens_from_name"].to_numpy(float)
    R = df["tokens"].to_numpy(float) / U - 1
    return df.assign(tokens=U + U * R_STAR * (1 - np.exp(-R / R_STAR)))


def main() -> int:
    warnings.simplefilter("ignore")
    root = anchors_dir()
    splits = loss_splits(root)
    print(f"{'fit set':<22} " + " ".join(f"{r:>28}" for r in RULES) + f" {'plain':>8}")
    for name, (fit, out) in splits.items():
        cells = [chosen_error(fit, out, rule) for rule in RULES.values()]
        row = " ".join(f"{form:>20} {100 * e:6.2f}%" for form, e in cells)
        print(f"{name:<22} {row} {100 * plain_error(fit, out):7.2f}%")
    fit, out = splits["datablations_le4ep"]
    fit_e, out_e = effective_data(fit, root), effective_data(out, root)
    for rule in ("compute", "model size"):
        form, e = chosen_error(fit_e, out_e, RULES[rule])
        print(f"data-constrained, D' (R* = {R_STAR}), {rule} rollout: {form} {100 * e:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
