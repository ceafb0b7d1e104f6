"""Efficiency leverage: bootstrap ci95 / prediction-interval coverage and the top-budget backtest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from windtunnel.laws import LawSet, fit_laws, load_laws
from windtunnel.laws.leverage import fit_leverage_law, leverage_value
from windtunnel.laws.synthetic import synthetic_leverage_runs

LING = load_laws("ling").laws["leverage"].coefficients
# in-range points (A, G, C) where the EL interval is checked against the true law
POINTS = [(0.1, 8.0, 1e20), (0.03, 16.0, 1e19), (0.3, 2.0, 3e18), (0.01, 4.0, 3e20)]


def test_leverage_interval_covers_truth_over_seeds() -> None:
    """Noisy runs (σ = 0.2 % on every loss) from Ling's published EL law: over 6 seeds × 4 points the
    95 % interval of EL contains the true EL at about the nominal rate, and the intervals are informative
    (not infinitely wide). 30 seeds × 50 resamples gave 0.96 for EL and 0.93–1.0 for a, d, gamma, beta."""
    hits, widths, coef_hits = [], [], []
    for seed in range(6):
        runs = synthetic_leverage_runs(LING, sigma=0.002, seed=100 + seed)
        law = fit_leverage_law(runs, n_boot=40, rng=np.random.default_rng(seed), backtest=False)
        ls = LawSet(laws={"leverage": law})
        for A, G, C in POINTS:
            v, lo, hi = ls.predict("leverage", (A, G, C))
            hits.append(lo <= float(leverage_value(LING, A, G, C)) <= hi)
            widths.append(hi / lo)
            assert lo <= v <= hi
        coef_hits += [law.ci95[k][0] <= LING[k] <= law.ci95[k][1] for k in ("a", "d", "gamma", "beta")]
        assert set(law.samples) == {"a", "d", "gamma", "beta", "A_start", "A_max"}
        assert law.notes["bootstrap_degenerate"] < 40
    assert np.mean(hits) >= 0.75, (np.mean(hits), hits)
    assert np.mean(coef_hits) >= 0.75, coef_hits
    # a real interval: wider than nothing, far narrower than "anything goes"
    assert 1.02 < np.median(widths) < 3.0, widths


def test_leverage_ci95_in_laws_json(tmp_path) -> None:
    runs = synthetic_leverage_runs(LING, sigma=0.002, seed=5)
    ls = fit_laws(runs, laws=["leverage"], bootstrap=30, seed=1)
    assert not ls.errors, ls.errors
    data = json.loads(ls.to_json(tmp_path / "laws.json").read_text())
    entry = data["laws"]["leverage"]
    assert set(entry["ci95"]) == {"a", "d", "gamma", "beta", "A_start", "A_max"}
    for k, (lo, hi) in entry["ci95"].items():
        assert lo <= entry["coefficients"][k] <= hi or k in ("A_start", "A_max"), (k, lo, hi)
    assert "mean_rel_err" in entry["backtest"]
    back = LawSet.from_json(tmp_path / "laws.json")
    v, lo, hi = back.predict("leverage", (0.1, 8.0, 1e20))
    assert lo < v < hi


def test_leverage_backtest_holds_out_largest_compute() -> None:
    """Noise-free runs: the law fitted below the top budget predicts EL there within 2 %. When the MoE runs
    at the top budget break the law (their EL is doubled) the backtest error jumps, while the top budget's
    MoE runs still count in the full fit — so the backtest really predicts the held-out budget."""
    moe_budgets = np.logspace(18, 21, 4)
    runs = synthetic_leverage_runs(LING, moe_budgets=moe_budgets)
    law = fit_leverage_law(runs, n_boot=0)
    bt = law.backtest
    assert bt["cut_compute"] < moe_budgets[-1] and bt["cut_compute"] > moe_budgets[-2]
    assert bt["n"] == 16  # 4 A × 4 G cells at the top budget
    assert bt["mean_rel_err"] < 0.02 and bt["loss_max_rel_err"] < 1e-3, bt

    broken = runs.copy()
    top = (broken["family"] == "moe") & (broken["compute"] >= moe_budgets[-1])
    # L_moe = L_dense(2·EL·C): the top-budget MoE runs are twice as efficient as the law says
    el = leverage_value(LING, broken.loc[top, "act_ratio"], broken.loc[top, "granularity"], moe_budgets[-1])
    broken.loc[top, "loss"] = 1.7 + 60.0 * (2 * el * moe_budgets[-1]) ** -0.1
    bt_broken = fit_leverage_law(broken, n_boot=0).backtest
    assert bt_broken["mean_rel_err"] > 0.3, bt_broken
    assert bt_broken["n"] == 16


def test_leverage_backtest_needs_three_moe_budgets() -> None:
    runs = synthetic_leverage_runs(LING, moe_budgets=np.array([1e19, 1e20]))
    law = fit_leverage_law(runs, n_boot=0)
    assert "skipped" in law.backtest and "3 or more" in law.backtest["skipped"]


@pytest.mark.parametrize("bad", ["A_start", "A_max"])
def test_leverage_value_handles_extreme_coefficients(bad: str) -> None:
    coef = dict(LING, **{bad: 0.0})
    with np.errstate(all="ignore"):
        v = leverage_value(coef, 0.1, 8.0, 1e20)
    assert np.ndim(v) == 0  # no ZeroDivisionError on scalar floats


def test_leverage_bootstrap_in_blocks_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bootstrap runs block by block (bounded memory on large tables): blocks of a few resamples give the
    same samples as one block of all of them."""
    import windtunnel.laws.base as base

    runs = synthetic_leverage_runs(LING, sigma=0.002, seed=7)
    whole = fit_leverage_law(runs, n_boot=12, rng=np.random.default_rng(3), backtest=False)
    monkeypatch.setattr(base, "BOOTSTRAP_BLOCK_ELEMENTS", 5 * len(runs))  # 5 resamples per block
    blocked = fit_leverage_law(runs, n_boot=12, rng=np.random.default_rng(3), backtest=False)
    for k in ("a", "d", "gamma", "beta"):
        assert len(blocked.samples[k]) == 12
        np.testing.assert_allclose(blocked.samples[k], whole.samples[k], rtol=1e-9, equal_nan=True)
