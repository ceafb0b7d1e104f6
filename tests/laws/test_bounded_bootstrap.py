"""Block-wise bootstraps (bounded memory on large run tables) give the same draws and refits as one
(n_boot, N) weight matrix, and the grouped distinct-value count equals the dense one-hot reduction."""

from __future__ import annotations

import numpy as np
import pytest

import windtunnel.laws.base as base
from windtunnel.laws.base import bootstrap_resample_blocks, bootstrap_weights, budget_labels
from windtunnel.laws.forms import CANDIDATES, bootstrap_candidate, fit_candidate
from windtunnel.laws.parametric import bootstrap_chosen
from windtunnel.laws.powerlaw import (
    bootstrap_frontier_resamples,
    distinct_weighted_groups,
    fit_frontier,
    fit_frontier_law,
    fit_powerlaw_batched,
    frontier_points,
)
from windtunnel.laws.selection import frontier_e, frontier_e_resamples
from windtunnel.laws.synthetic import synthetic_runs

N_BOOT = 12


@pytest.fixture(scope="module")
def runs():
    """A small table whose runs each have their own compute (tokens jittered by up to ±3 %)."""
    runs = synthetic_runs(120, budgets=(1e17, 4e17, 1.6e18, 6.4e18), seed=5)
    f = np.exp(np.random.default_rng(1).uniform(-0.03, 0.03, len(runs)))
    return runs.assign(tokens=runs["tokens"] * f, compute=runs["compute"] * f)


def test_resample_blocks_are_rows_1_to_n_boot_of_the_weight_matrix() -> None:
    whole = bootstrap_weights(40, 11, np.random.default_rng(3))[1:]
    blocks = list(bootstrap_resample_blocks(40, 11, np.random.default_rng(3), block_elements=3 * 40))
    assert [len(b) for b in blocks] == [2, 3, 3, 3]  # the first block's all-ones row is left out
    assert np.array_equal(np.concatenate(blocks), whole)


@pytest.mark.parametrize("name", ["chinchilla5", "e_fixed"])
def test_parametric_bootstrap_in_blocks_equals_one_weight_matrix(runs, monkeypatch, name) -> None:
    """Same seed, same resample draws and refits, whether the bootstrap holds all weights or 2 rows."""
    cand = next(c for c in CANDIDATES if c.name == name)
    N, D, L, C = (runs[c].to_numpy(float) for c in ("params", "tokens", "loss", "compute"))
    e0 = frontier_e(C, L) if cand.fix_e else 0.0
    x_hat, _ = fit_candidate(cand, N, D, L, e_fixed=e0)
    W_RN = bootstrap_weights(len(L), N_BOOT, np.random.default_rng(7))[1:]
    e_R = frontier_e_resamples(C, L, W_RN) if cand.fix_e else 0.0
    whole = bootstrap_candidate(cand, N, D, L, x_hat, W_RN, e_fixed=e_R)
    monkeypatch.setattr(base, "BOOTSTRAP_BLOCK_ELEMENTS", 2 * len(L))
    blocked = bootstrap_chosen(cand, N, D, L, C, x_hat, N_BOOT, np.random.default_rng(7))
    assert blocked.shape == whole.shape == (N_BOOT, 5) and np.isfinite(whole).all()
    np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=1e-12)


def test_frontier_bootstrap_in_blocks_equals_one_weight_matrix(runs, monkeypatch) -> None:
    C, L = runs["compute"].to_numpy(float), runs["loss"].to_numpy(float)
    labels, _ = budget_labels(C)
    fp = frontier_points(C, L, labels)
    _, x_hat = fit_frontier(C[fp], L[fp])
    W_RN = bootstrap_weights(len(L), N_BOOT, np.random.default_rng(9))[1:]
    whole = bootstrap_frontier_resamples(C, L, labels, W_RN, x_hat)
    monkeypatch.setattr(base, "BOOTSTRAP_BLOCK_ELEMENTS", 3 * len(L))
    law = fit_frontier_law(runs, n_boot=N_BOOT, rng=np.random.default_rng(9), backtest=False)
    assert len(law.samples["alpha"]) == N_BOOT
    np.testing.assert_allclose(law.samples["alpha"], whole[:, 2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(law.samples["E"], np.exp(whole[:, 1]), rtol=1e-12)


def test_grouped_distinct_count_equals_the_dense_one_hot_reduction() -> None:
    rng = np.random.default_rng(4)
    group_N = rng.integers(0, 7, 60)
    W_RN = rng.multinomial(60, np.full(60, 1 / 60), size=25).astype(float)
    W_RN[3] = 0.0  # a row with no weight
    W_RN[4] = np.where(group_N == group_N[0], 1.0, 0.0)  # a row on one group
    dense = ((W_RN @ np.eye(group_N.max() + 1)[group_N]) > 0).sum(axis=1)
    grouped = distinct_weighted_groups(group_N, W_RN)
    assert np.array_equal(grouped, dense) and grouped[3] == 0 and grouped[4] == 1 and dense.max() > 2


def test_powerlaw_fit_with_distinct_x_per_run_and_a_one_value_row() -> None:
    """Every x distinct (U = N): fits where ≥ 2 distinct x carry weight, NaN for a row on one x."""
    rng = np.random.default_rng(2)
    x_N = 10 ** rng.uniform(17, 20, 3000)
    y_N = 2.0 * x_N**-0.15 * np.exp(0.01 * rng.standard_normal(x_N.size))
    W_RN = np.vstack([np.ones(x_N.size), np.eye(1, x_N.size, 5)[0]])
    out = fit_powerlaw_batched(x_N, y_N, W_RN)
    assert out[0, 1] == pytest.approx(-0.15, abs=0.01) and np.isnan(out[1]).all()


def test_objective_in_chunks_of_problems_equals_one_batch(runs) -> None:
    from windtunnel.laws.optim import chunked_over_problems
    from windtunnel.laws.parametric import epoch_grid, make_objective

    N, D, L = (runs[c].to_numpy(float) for c in ("params", "tokens", "loss"))
    fg = make_objective(np.log(N), np.log(D), np.log(L), np.ones((1, N.size)), 1e-3)
    x_BP, rows_B = epoch_grid()[::97], np.zeros(len(epoch_grid()[::97]), dtype=int)
    chunked = chunked_over_problems(fg, N.size, max_elements=7 * N.size)
    (f1, g1), (f2, g2) = fg(x_BP, rows_B), chunked(x_BP, rows_B)
    assert len(x_BP) > 7 and np.isfinite(f1).all()
    np.testing.assert_array_equal(f2, f1)
    np.testing.assert_array_equal(g2, g1)
