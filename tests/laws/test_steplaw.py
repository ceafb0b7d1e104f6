"""StepFun's Step Law as laws.json laws (steplaw_lr, steplaw_batch): fit, ci95, backtest, published values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from windtunnel.laws import LawSet, fit_laws
from windtunnel.laws.steplaw import STEPFUN_PUBLISHED, steplaw_cells, steplaw_value
from windtunnel.laws.synthetic import synthetic_runs, synthetic_steplaw_runs

LR_TRUE, BS_TRUE = STEPFUN_PUBLISHED["steplaw_lr"], STEPFUN_PUBLISHED["steplaw_batch"]


@pytest.fixture(scope="module")
def grid():
    runs = synthetic_steplaw_runs(LR_TRUE, BS_TRUE, seed=1)
    return runs, fit_laws(runs, laws=["steplaw_lr", "steplaw_batch"], bootstrap=100, seed=0)


def test_steplaw_recovers_known_law(grid) -> None:
    """A 3 × 3 (N, D) grid with lr × batch sweeps around the published Step Law: the fit recovers the
    exponents, and their ci95 contain the truth."""
    runs, ls = grid
    assert {"steplaw_lr", "steplaw_batch"} <= set(ls.laws), ls.errors
    lr, bs = ls.laws["steplaw_lr"], ls.laws["steplaw_batch"]
    assert abs(lr.coefficients["alpha"] - LR_TRUE["alpha"]) < 0.08, lr.coefficients
    assert abs(lr.coefficients["beta"] - LR_TRUE["beta"]) < 0.08, lr.coefficients
    assert abs(bs.coefficients["b"] - BS_TRUE["b"]) < 0.08, bs.coefficients
    for law, truth in ((lr, LR_TRUE), (bs, BS_TRUE)):
        for k in truth:
            lo, hi = law.ci95[k]
            assert lo <= truth[k] <= hi, (law.name, k, lo, hi)
        assert law.notes["n_cells"] == 9
    # prediction at a new (N, D) inside the grid, with its interval
    N, D = 7e8, 7e8 * 100
    v, lo, hi = ls.predict("steplaw_lr", (N, D))
    assert lo < v < hi and abs(v / steplaw_value("steplaw_lr", LR_TRUE, N, D) - 1) < 0.15


def test_steplaw_backtest_holds_out_top_budget(grid) -> None:
    runs, ls = grid
    for name in ("steplaw_lr", "steplaw_batch"):
        bt = ls.laws[name].backtest
        assert bt["n"] == 1 and bt["cut_compute"] < runs["compute"].max(), bt
        assert bt["mean_rel_err"] < 0.25, bt
    # break the optimum of the top cell only: its held-out optimum moves 4×, the backtest must see it
    top = runs["compute"] == runs["compute"].max()
    shifted = runs.copy()
    shifted.loc[top, "lr"] *= 4.0
    bt = fit_laws(shifted, laws=["steplaw_lr"], bootstrap=0).laws["steplaw_lr"].backtest
    assert bt["mean_rel_err"] > 0.6, bt


def test_steplaw_json_round_trip(tmp_path, grid) -> None:
    _, ls = grid
    back = LawSet.from_json(ls.to_json(tmp_path / "laws.json"))
    entry = json.loads((tmp_path / "laws.json").read_text())["laws"]["steplaw_lr"]
    assert set(entry["ci95"]) == {"a", "alpha", "beta"} and "mean_rel_err" in entry["backtest"]
    x = (np.array([3e8, 1e9]), np.array([1e10, 1e11]))
    np.testing.assert_allclose(back.predict("steplaw_lr", x)[0], ls.predict("steplaw_lr", x)[0])
    np.testing.assert_allclose(back.predict("steplaw_batch", x)[2], ls.predict("steplaw_batch", x)[2])


def test_default_fit_picks_steplaw_up_on_a_grid() -> None:
    runs = synthetic_steplaw_runs(LR_TRUE, BS_TRUE, n_lr=3, n_bs=3, seed=4)
    ls = fit_laws(runs[["params", "tokens", "lr", "batch_tokens", "loss"]], laws=None, bootstrap=0)
    assert {"steplaw_lr", "steplaw_batch"} <= set(ls.laws), ls.errors


def test_ling_style_sweep_skips_steplaw_by_default() -> None:
    """One hparam cell per budget (N and D both grow with C): alpha and beta are not identified."""
    runs = synthetic_runs(80, budgets=(1e17, 4e17, 1.6e18, 6.4e18), seed=2)
    ls = fit_laws(runs[["params", "tokens", "lr", "batch_tokens", "loss"]], laws=None, bootstrap=0)
    assert not {"steplaw_lr", "steplaw_batch"} & (set(ls.laws) | set(ls.errors))
    asked = fit_laws(runs, laws=["steplaw_lr"], bootstrap=0)
    assert "independently" in asked.errors["steplaw_lr"]
    _, cells = steplaw_cells(runs)
    assert len(cells) == 4  # the IsoFLOP runs (one lr, one batch per size) are not cells


def test_steplaw_against_published_stepfun_dense(anchors) -> None:
    """StepFun's released dense runs (17 of their (N, D) cells): our fit of their own method agrees with the
    published law lr = 1.79·N^−0.713·D^0.307, batch = 0.58·D^0.571 (fitted on all their ~3,700 runs)."""
    from windtunnel.laws.anchors import load_steplaw
    from windtunnel.laws.hparam import fit_steplaw

    runs = load_steplaw("dense", root=anchors)
    ls = fit_laws(runs, laws=["steplaw_lr", "steplaw_batch"], bootstrap=200, seed=0)
    assert not ls.errors, ls.errors
    lr, bs = ls.laws["steplaw_lr"], ls.laws["steplaw_batch"]
    # same numbers as the plain (no-bootstrap) reimplementation of fit_tool.py in hparam.fit_steplaw
    ref = fit_steplaw(runs)
    assert lr.coefficients["alpha"] == pytest.approx(ref["alpha"], rel=1e-9)
    assert bs.coefficients["b"] == pytest.approx(ref["gamma"], rel=1e-9)
    # the published N and batch exponents lie in our 95 % intervals
    assert lr.ci95["alpha"][0] <= LR_TRUE["alpha"] <= lr.ci95["alpha"][1], lr.ci95
    assert bs.ci95["b"][0] <= BS_TRUE["b"] <= bs.ci95["b"][1], bs.ci95
    # at the released cells the two laws predict nearly the same optimum
    _, cells = steplaw_cells(runs)
    N, D = cells["params"].to_numpy(), cells["tokens"].to_numpy()
    r_lr = np.log(ls.predict("steplaw_lr", (N, D))[0] / steplaw_value("steplaw_lr", LR_TRUE, N, D))
    r_bs = np.log(ls.predict("steplaw_batch", (N, D))[0] / steplaw_value("steplaw_batch", BS_TRUE, N, D))
    assert np.max(np.abs(r_lr)) < np.log(1.45) and np.median(np.abs(r_lr)) < 0.12, np.exp(r_lr)
    assert np.max(np.abs(r_bs)) < np.log(1.12), np.exp(r_bs)
