"""Bad input: each failing law names itself and the reason; the others still fit; nothing crashes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from windtunnel.laws import fit_laws
from windtunnel.laws.synthetic import synthetic_runs
from windtunnel.runtable import validate_run_table


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return synthetic_runs(80, budgets=(1e17, 1e18, 1e19, 1e20), seed=5)


def test_too_few_runs(runs) -> None:
    ls = fit_laws(runs.head(2), laws=["lr_opt", "params_opt", "frontier", "parametric"], bootstrap=10)
    assert set(ls.errors) == {"lr_opt", "params_opt", "frontier", "parametric"}
    for name, reason in ls.errors.items():
        assert reason.startswith(name + ":"), reason
        assert "at least" in reason or "budget" in reason, reason


def test_single_budget(runs) -> None:
    one = runs[np.isclose(runs["compute"], 1e18)]
    ls = fit_laws(one, laws=["lr_opt", "batch_opt", "params_opt", "frontier"], bootstrap=10)
    assert set(ls.errors) == {"lr_opt", "batch_opt", "params_opt", "frontier"}
    assert "budget" in ls.errors["lr_opt"] and "budget" in ls.errors["params_opt"]


def test_nan_and_nonpositive_values_excluded_and_counted(runs) -> None:
    bad = runs.copy()
    bad.loc[0, "loss"] = np.nan
    bad.loc[1, "lr"] = -1.0
    bad.loc[2, "lr"] = np.inf
    bad.loc[3, "status"] = "diverged"
    bad.loc[4, "status"] = "failed"
    ls = fit_laws(bad, laws=["lr_opt", "frontier"], bootstrap=10)
    assert not ls.errors
    assert ls.excluded["lr_opt"] == {
        "status=diverged": 1,
        "status=failed": 1,
        "non-finite loss": 1,
        "non-finite lr": 1,
        "non-positive lr": 1,
    }
    assert ls.excluded["frontier"]["non-finite loss"] == 1
    assert ls.laws["lr_opt"].n_runs == len(bad) - 5


def test_one_law_fails_others_fit(runs) -> None:
    no_lr = runs.drop(columns=["lr"])
    ls = fit_laws(no_lr, laws=["lr_opt", "params_opt"], bootstrap=10)
    assert "lr_opt" in ls.errors and "non-finite lr" in ls.errors["lr_opt"]
    assert "params_opt" in ls.laws


def test_default_laws_skip_missing_columns(runs) -> None:
    ls = fit_laws(runs[["params", "tokens", "compute", "loss"]], laws=None, bootstrap=0)
    assert "lr_opt" not in ls.laws and "lr_opt" not in ls.errors
    assert "frontier" in ls.laws


def test_unknown_law_and_non_numeric_column(runs) -> None:
    ls = fit_laws(runs, laws=["nope"], bootstrap=0)
    assert "unknown law" in ls.errors["nope"]
    bad = runs.astype({"loss": object})
    bad.loc[0, "loss"] = "abc"
    with pytest.raises(ValueError, match="loss"):
        validate_run_table(bad)


def test_frontier_backtest_is_finite_when_the_fit_below_the_cut_is_steep():
    """The quickstart's frontier (measured 2026-11-23, commit f1a1ab9): below the cut the losses 4.93, 4.65,
    4.66 make the 3-point fit a step (alpha -> large, A = e^(log A) overflows). The backtest must still
    predict the top budget (computed in log space: the step's level, E) instead of reporting n=0 / nan."""
    from windtunnel.laws.powerlaw import fit_frontier_law

    C = [9.905897472e9, 2.4970788864e10, 6.2228791296e10, 1.5568207872e11]
    L = [4.931164741516113, 4.646603584289551, 4.662150144577026, 4.508624792098999]
    runs = pd.DataFrame({"compute": C, "loss": L, "run_id": list("abcd")})
    law = fit_frontier_law(runs, n_boot=0)
    bt = law.backtest
    assert bt["n"] == 1 and np.isfinite(bt["mean_rel_err"]), bt
    assert bt["mean_rel_err"] < 0.05  # predicts ~4.65 for 4.51
