"""95 % prediction intervals of the optimum laws (IsoFLOP, lr/batch, StepFun): the dof-corrected residual
scale, the ``pi95`` record every optimum law carries, and coverage of known optima on synthetic data; Gadre
et al.'s runs in the paper's own parameter count."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from windtunnel.laws import fit_laws
from windtunnel.laws.anchors import load_gadre
from windtunnel.laws.intervals import log_errors, optimum_pi95, residual_scale
from windtunnel.laws.synthetic import TRUE, optimal_params, synthetic_runs, synthetic_steplaw_runs
from windtunnel.runtable import validate_run_table

LR_TRUE = {"a": 1.79, "alpha": -0.713, "beta": 0.307}
BS_TRUE = {"a": 0.58, "b": 0.571}


def profile_runs(budgets, half_width: float, n_sizes: int, sigma: float, seed: int) -> pd.DataFrame:
    """Chinchilla IsoFLOP points at sizes n*·e^[−w, w] around the known optimum, log-normal loss noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        for N in float(optimal_params(C)) * np.exp(np.linspace(-half_width, half_width, n_sizes)):
            D = C / (6 * N)
            L = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
            rows.append({"params": N, "tokens": D, "compute": C, "loss": L * np.exp(sigma * rng.normal())})
    return validate_run_table(pd.DataFrame(rows))


def test_residual_scale_takes_out_the_fitted_coefficients() -> None:
    r = np.array([0.1, -0.1, 0.1, -0.1, np.nan])
    assert residual_scale(r) == pytest.approx(0.1)
    assert residual_scale(r, n_params=2) == pytest.approx(np.sqrt(0.04 / 2))
    assert residual_scale(r[:2], n_params=2) == 0.0  # no degrees of freedom left


def test_optimum_pi95_adds_fit_and_rollout_scales_in_quadrature() -> None:
    rec = optimum_pi95(np.array([0.03, -0.03, 0.03]), 1, {"log_errors": log_errors([1.2], [1.0])})
    assert rec["sigma_res"] == pytest.approx(np.sqrt(3 * 0.03**2 / 2))
    assert rec["sigma_roll"] == pytest.approx(np.log(1.2))
    assert rec["sigma_log"] == pytest.approx(np.hypot(rec["sigma_res"], rec["sigma_roll"]))
    assert optimum_pi95(np.zeros(4), 2, {"skipped": "x"})["sigma_roll"] == 0.0


def test_isoflop_prediction_interval_covers_extrapolated_optima() -> None:
    """Fit on four budgets, predict n* two and four times beyond the largest: the 95 % prediction interval is
    wider than the parameter bootstrap and covers the true optimum in (nearly) every noise draw."""
    fit_budgets = (1e18, 4e18, 1.6e19, 6.4e19)
    held = np.array([2.56e20, 1e21])
    covered, wider = [], []
    for seed in range(6):
        runs = profile_runs(fit_budgets, 1.2, 9, sigma=0.004, seed=seed)
        ls = fit_laws(runs, laws=["params_opt"], bootstrap=60, seed=seed)
        law = ls.laws["params_opt"]
        assert law.extra["pi95"]["sigma_log"] > 0
        _, lo, hi = ls.predict("params_opt", held)
        law.extra.pop("pi95")
        _, blo, bhi = ls.predict("params_opt", held)  # the same draws, bootstrap only
        wider += list((lo <= blo) & (hi >= bhi) & ((lo < blo) | (hi > bhi)))
        covered += list((lo <= optimal_params(held)) & (optimal_params(held) <= hi))
    assert all(wider)
    assert np.mean(covered) >= 0.9, covered


def test_every_optimum_law_carries_pi95_and_predict_uses_it() -> None:
    runs = synthetic_runs(100, budgets=(1e17, 4e17, 1.6e18, 6.4e18), seed=2)
    ls = fit_laws(runs, laws=["lr_opt", "batch_opt", "params_opt", "d_opt"], bootstrap=20)
    for name, law in ls.laws.items():
        rec = law.extra["pi95"]
        assert rec["sigma_log"] == pytest.approx(np.hypot(rec["sigma_res"], rec["sigma_roll"]))
        v, lo, hi = ls.predict(name, 1e20)
        s = rec["z"] * rec["sigma_log"]
        assert lo <= v * np.exp(-s) * (1 + 1e-9) and hi >= v * np.exp(s) * (1 - 1e-9), name


def test_steplaw_pi95_covers_the_true_optimum_of_an_unseen_cell() -> None:
    runs = synthetic_steplaw_runs(LR_TRUE, BS_TRUE, sigma=0.001, seed=3)
    ls = fit_laws(runs, laws=["steplaw_lr", "steplaw_batch"], bootstrap=50)
    N, D = 3e9, 3e9 * 100
    truth = {
        "steplaw_lr": LR_TRUE["a"] * N ** LR_TRUE["alpha"] * D ** LR_TRUE["beta"],
        "steplaw_batch": BS_TRUE["a"] * D ** BS_TRUE["b"],
    }
    for name, law in ls.laws.items():
        assert law.extra["pi95"]["sigma_log"] > 0 and law.backtest.get("log_errors"), name
        _, lo, hi = ls.predict(name, (N, D))
        assert lo <= truth[name] <= hi, (name, lo, truth[name], hi)


def test_gadre_runs_use_the_papers_total_parameter_count(anchors) -> None:
    """Gadre et al. fit their laws in total parameters and form C = 6·N·D with them (SOURCE.md)."""
    runs = load_gadre("rpj", root=anchors)
    assert np.allclose(runs["compute"], 6 * runs["params"] * runs["tokens"], rtol=1e-6)
    assert (runs["params"] == runs["n_total"]).all()
    assert runs["params"].max() == pytest.approx(6.889e9, rel=1e-3)  # open_lm_7b, embeddings included
