"""lr/batch band laws, IsoFLOP allocation, frontier and backtests on synthetic runs from known laws."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from windtunnel.laws import LawError, fit_laws
from windtunnel.laws.hparam import band_mask
from windtunnel.laws.isoflop import EdgeOptimumWarning, fit_isoflop_law
from windtunnel.laws.synthetic import TRUE, optimal_params, synthetic_runs
from windtunnel.runtable import validate_run_table

BUDGETS = (1e17, 4e17, 1.6e18, 6.4e18, 2.56e19)


@pytest.fixture(scope="module")
def fitted():
    runs = synthetic_runs(300, budgets=BUDGETS, sigma=0.001, seed=3)
    return runs, fit_laws(
        runs, laws=["lr_opt", "batch_opt", "params_opt", "d_opt", "frontier"], bootstrap=100
    )


def test_hparam_laws_recover_exponents(fitted) -> None:
    _, ls = fitted
    assert not ls.errors
    assert abs(ls.laws["lr_opt"].coefficients["b"] - TRUE["lr_b"]) < 0.04
    assert abs(ls.laws["batch_opt"].coefficients["b"] - TRUE["bs_b"]) < 0.05
    lo, hi = ls.laws["lr_opt"].ci95["b"]
    assert lo < ls.laws["lr_opt"].coefficients["b"] < hi
    # predictions within the sampled range are close to the true optimum
    lr, lo, hi = ls.predict("lr_opt", 1e18)
    assert abs(lr / (TRUE["lr_a"] * 1e18 ** TRUE["lr_b"]) - 1) < 0.15
    assert lo <= lr <= hi


def test_isoflop_recovers_allocation(fitted) -> None:
    _, ls = fitted
    b_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert abs(ls.laws["params_opt"].coefficients["b"] - b_true) < 0.02
    assert abs(ls.laws["d_opt"].coefficients["b"] - (1 - b_true)) < 0.02
    n_hat, lo, hi = ls.predict("params_opt", 1e18)
    assert abs(n_hat / optimal_params(1e18) - 1) < 0.1
    assert lo < n_hat < hi
    optima = ls.laws["params_opt"].notes["optima"]
    assert len(optima) == len(BUDGETS) and all(not o["edge"] for o in optima)
    assert all(o["ci95"][0] <= o["opt"] <= o["ci95"][1] for o in optima)


def test_backtests_recorded(fitted) -> None:
    _, ls = fitted
    for name in ("lr_opt", "batch_opt", "params_opt", "d_opt", "frontier"):
        bt = ls.laws[name].backtest
        assert bt["n"] >= 1 and bt["max_rel_err"] >= bt["mean_rel_err"] >= 0, (name, bt)
    assert ls.laws["params_opt"].backtest["max_rel_err"] < 0.1
    assert ls.laws["frontier"].backtest["max_rel_err"] < 0.01


def test_frontier_recovers_loss_curve(fitted) -> None:
    runs, ls = fitted
    for C in BUDGETS:
        best = runs.loc[np.isclose(runs["compute"], C), "loss"].min()
        pred, lo, hi = ls.predict("frontier", C)
        assert abs(pred / best - 1) < 0.005


def test_band_is_recomputed_per_resample() -> None:
    loss = np.array([1.0, 1.001, 1.1, 2.0, 2.004, 2.2])
    budget = np.array([0, 0, 0, 1, 1, 1])
    W = np.array([[1, 1, 1, 1, 1, 1], [0, 2, 1, 0, 1, 2]], dtype=float)
    m = band_mask(loss, budget, W, 0.0025)
    assert m[0].tolist() == [True, True, False, True, True, False]
    assert m[1].tolist() == [False, True, False, False, True, False]


def test_edge_optimum_warns() -> None:
    rows = []
    for C in (1e18, 1e19, 1e20):
        n_opt = float(optimal_params(C))
        for N in n_opt * np.exp(np.linspace(0.3, 2.0, 5)):  # every size above the optimum
            D = C / (6 * N)
            L = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
            rows.append({"params": N, "tokens": D, "compute": C, "loss": L})
    runs = validate_run_table(pd.DataFrame(rows))
    # every budget's optimum is unbracketed: no exponent is fitted, and the refusal names the budgets
    with (
        pytest.warns(EdgeOptimumWarning),
        pytest.raises(LawError, match=r"edge optimum at 1e\+18, 1e\+19, 1e\+20"),
    ):
        fit_isoflop_law(runs, "params_opt", "params", n_boot=0)


def test_no_warning_when_optimum_inside() -> None:
    runs = synthetic_runs(60, budgets=(1e18, 1e19), seed=1)
    runs = runs[runs["sweep"] == "isoflop"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgeOptimumWarning)
        law = fit_isoflop_law(runs.reset_index(drop=True), "params_opt", "params", n_boot=0)
    assert law.notes["edge_warning"] == []


def test_dense_variants_fit_on_dense_runs() -> None:
    moe = synthetic_runs(80, budgets=(1e17, 1e18, 1e19), seed=8)
    moe = moe[moe["sweep"] == "isoflop"].assign(family="moe")
    dense = moe.assign(family="dense", params=moe["params"] * 2, m=moe["m"] * 2, run_id=moe["run_id"] + "d")
    ls = fit_laws(pd.concat([moe, dense]), laws=["m_opt", "m_opt_dense"], bootstrap=0)
    assert not ls.errors
    assert all(r.endswith("d") for r in ls.laws["m_opt_dense"].run_ids)
    assert not any(r.endswith("d") for r in ls.laws["m_opt"].run_ids)
    ratio = ls.predict("m_opt_dense", 1e18)[0] / ls.predict("m_opt", 1e18)[0]
    assert abs(ratio - 2) < 0.05
