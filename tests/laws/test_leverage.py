"""Efficiency leverage: observed EL from matched dense/MoE frontiers, and the EL(A, G, C) law fit."""

from __future__ import annotations

import numpy as np
import pandas as pd

from windtunnel.laws import fit_laws, load_laws
from windtunnel.laws.leverage import leverage_value, observed_leverage
from windtunnel.runtable import validate_run_table


def _runs(coef: dict[str, float]) -> pd.DataFrame:
    """Dense frontier L = 1.7 + 60·C^−0.1 at 5 budgets; MoE runs with L_moe(C) = L_dense(EL(A, G, C)·C)."""
    E, A, alpha = 1.7, 60.0, 0.1
    rows = []
    budgets = np.logspace(18, 21, 4)
    for C in budgets:
        for extra in (0.0, 0.02, 0.05):  # frontier run plus two worse ones
            rows.append({"family": "dense", "compute": C, "loss": E + A * C**-alpha + extra})
    for act in (0.03, 0.08, 0.2):
        for G in (2, 8, 16):
            for C in budgets:
                el = float(leverage_value(coef, act, G, C))
                rows.append(
                    {
                        "family": "moe",
                        "compute": C,
                        "loss": E + A * (el * C) ** -alpha,
                        "act_ratio": act,
                        "granularity": G,
                    }
                )
    return validate_run_table(pd.DataFrame(rows))


def test_observed_leverage_recovers_el() -> None:
    coef = load_laws("ling").laws["leverage"].coefficients
    obs = observed_leverage(_runs(coef))
    truth = leverage_value(coef, obs["act_ratio"], obs["granularity"], obs["compute"])
    np.testing.assert_allclose(obs["EL"], truth, rtol=0.02)


def test_leverage_law_fits_observations() -> None:
    coef = load_laws("ling").laws["leverage"].coefficients
    ls = fit_laws(_runs(coef), laws=["leverage"], bootstrap=0)
    assert not ls.errors, ls.errors
    law = ls.laws["leverage"]
    assert law.notes["in_sample_mean_rel_err"] < 0.05
    el, _, _ = ls.predict("leverage", (0.08, 8, 1e20))
    assert abs(el / leverage_value(coef, 0.08, 8, 1e20) - 1) < 0.05


def test_leverage_needs_variety() -> None:
    coef = load_laws("ling").laws["leverage"].coefficients
    runs = _runs(coef)
    runs = runs[(runs["family"] == "dense") | (runs["granularity"] == 8)]
    ls = fit_laws(runs, laws=["leverage"], bootstrap=0)
    assert "leverage" in ls.errors and "granularities" in ls.errors["leverage"]


def test_identified_law_is_not_flagged_and_el_flat_in_a_is() -> None:
    """Ling's law generates EL that depends on A: the fit is identified (no ``degenerate``). If EL does not
    depend on A at all (as in the efficiency_leverage_cpu sweep of 2026-11-23, commit 21b0e27, where 4/8/16
    experts gave the same EL within noise), A_start and A_max run to the edges of their box and the law says
    it is not identified."""
    coef = load_laws("ling").laws["leverage"].coefficients
    ls = fit_laws(_runs(coef), laws=["leverage"], bootstrap=0)
    assert not ls.laws["leverage"].notes.get("degenerate")
    runs = _runs(coef)  # then the same G and C dependence, no A dependence: EL(A, G, C) := EL(0.08, G, C)
    moe = runs["family"] == "moe"
    el = leverage_value(coef, 0.08, runs.loc[moe, "granularity"], runs.loc[moe, "compute"])
    runs.loc[moe, "loss"] = 1.7 + 60.0 * (el * runs.loc[moe, "compute"]) ** -0.1
    law = fit_laws(runs, laws=["leverage"], bootstrap=0).laws["leverage"]
    assert law.notes.get("degenerate"), law.coefficients
    assert "not identified" in law.notes["degenerate_reason"]
