"""``best_tuned``: one row per (params, tokens) cell, its best hyper-parameter setting's seed-mean loss;
``seed_mean`` under the laws fitted to minima (frontier, IsoFLOP envelope); and the parametric law fitted on
an LR search's cells rather than on every run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from windtunnel.laws.base import best_tuned, seed_mean
from windtunnel.laws.isoflop import lower_envelope
from windtunnel.laws.parametric import fit_parametric, fit_parametric_law, predict_parametric
from windtunnel.laws.powerlaw import fit_frontier_law

TRUE = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.36}


def _row(i: int, N: float, D: float, lr: float, loss: float, family: str = "dense") -> dict:
    return {"run_id": f"r{i}", "family": family, "params": N, "tokens": D, "compute": 6 * N * D, "lr": lr,
            "batch_tokens": 512.0, "loss": loss}  # fmt: skip


def test_best_tuned_averages_seeds_then_takes_the_best_setting() -> None:
    runs = pd.DataFrame(
        [
            _row(0, 1e6, 1e8, 1e-3, 3.00),  # setting lr 1e-3: seeds 3.00, 3.10 -> mean 3.05
            _row(1, 1e6, 1e8, 1e-3, 3.10),
            _row(2, 1e6, 1e8, 2e-3, 2.98),  # setting lr 2e-3: seeds 2.98, 3.20 -> mean 3.09 (luckiest 2.98)
            _row(3, 1e6, 1e8, 2e-3, 3.20),
            _row(4, 2e6, 1e8, 1e-3, 2.90),  # another cell, one run
            _row(5, 1e6, 1e8, 1e-3, 2.50, family="moe"),  # another architecture at the same (N, D)
        ]
    )
    out = best_tuned(runs)
    assert len(out) == 3
    cell = out[(out["params"] == 1e6) & (out["family"] == "dense")].iloc[0]
    # the setting with the lower MEAN wins, not the run with the lowest single loss
    assert cell["lr"] == 1e-3 and cell["loss"] == pytest.approx(3.05) and cell["n_seeds"] == 2
    assert set(out["run_id"]) == {"r0", "r4", "r5"}


def test_best_tuned_leaves_a_table_of_distinct_cells_unchanged() -> None:
    runs = pd.DataFrame([_row(i, 1e6 * (i + 1), 1e8 / (i + 1), 1e-3, 3.0 - 0.1 * i) for i in range(5)])
    out = best_tuned(runs)
    pd.testing.assert_frame_equal(out.drop(columns="n_seeds"), runs)


def test_best_tuned_keeps_runs_without_known_hyperparameters() -> None:
    """A published table (no lr column values): rows at one (N, D) differ in what it does not name (e.g.
    unique data, Muennighoff et al. 2023) and are all kept."""
    runs = pd.DataFrame([_row(i, 1e6, 1e8, np.nan, 3.0 + 0.1 * i) for i in range(3)])
    runs.loc[3] = _row(3, 1e6, 1e8, 1e-3, 2.9)  # one searched run beside them
    out = best_tuned(runs)
    assert list(out["run_id"]) == ["r0", "r1", "r2", "r3"] and list(out["loss"]) == [3.0, 3.1, 3.2, 2.9]


def test_parametric_fits_the_tuned_cells_of_an_lr_search() -> None:
    """An LR search at every (N, D): three settings per cell, two of them mistuned by +0.15 and +0.4 nats. The
    law fitted on the search predicts a 30x larger compute-optimal point as well as one fitted on the tuned
    runs alone (it fits the same cells); fitted on every run as if each were L(N, D), it would be biased."""
    rng = np.random.default_rng(0)
    rows, i = [], 0
    for C in (1e15, 4e15, 1.6e16, 6.4e16, 2.56e17):
        for N in np.geomspace(2e6, 6e7, 6):
            D = C / (6 * N)
            clean = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
            for lr, penalty in ((1e-3, 0.4), (2e-3, 0.0), (4e-3, 0.15)):
                rows.append(_row(i, N, D, lr, (clean + penalty) * np.exp(0.003 * rng.standard_normal())))
                i += 1
    runs = pd.DataFrame(rows)
    N_t, D_t = 2e8, 2e10
    truth = TRUE["E"] + TRUE["A"] / N_t ** TRUE["alpha"] + TRUE["B"] / D_t ** TRUE["beta"]
    law = fit_parametric_law(runs, n_boot=0, backtest=False)
    tuned = fit_parametric_law(runs[runs["lr"] == 2e-3].reset_index(drop=True), n_boot=0, backtest=False)
    assert law.notes["best_tuned"] == f"30 (params, tokens) cells from {len(runs)} runs"

    def predict(law_) -> float:
        c = law_.coefficients
        x = np.log([c["A"], c["B"], c["E"]]).tolist() + [c["alpha"], c["beta"]]
        return float(predict_parametric(np.array(x), np.array([N_t]), np.array([D_t]))[0])

    assert predict(law) == pytest.approx(predict(tuned), abs=1e-6)
    assert abs(predict(law) - truth) < 0.03, (predict(law), truth)
    # every run taken as a sample of L(N, D) (the plain form on all rows): the mistuned settings bias it
    _, _, x_all = fit_parametric(*(runs[c].to_numpy(float) for c in ("params", "tokens", "loss")))
    biased = float(predict_parametric(x_all, np.array([N_t]), np.array([D_t]))[0])
    assert abs(biased - truth) > 2 * abs(predict(law) - truth), (biased, predict(law), truth)


def _seeded_ladder(n_seeds: int, lucky: float) -> pd.DataFrame:
    """4 budgets x 3 sizes x 2 LRs; every setting trained with ``n_seeds`` seeds whose losses are the clean
    value + (0, +2*lucky, ...) except the first seed of each budget's best cell, ``lucky`` below it."""
    rows, i = [], 0
    for C in (1e15, 1e16, 1e17, 1e18):
        for k, N in enumerate(np.geomspace(1e6, 1e7, 3) * (C / 1e15) ** 0.5):
            for lr, penalty in ((1e-3, 0.0), (2e-3, 0.1)):
                clean = 2.0 + 30.0 * C**-0.1 + 0.05 * (k - 1) ** 2 + penalty
                for s in range(n_seeds):
                    noise = -lucky if (s == 0 and k == 1 and penalty == 0) else (lucky if s == 1 else 0.0)
                    rows.append({**_row(i, N, C / (6 * N), lr, clean + noise), "seed": s})
                    i += 1
    return pd.DataFrame(rows)


def test_seed_mean_averages_seeds_and_leaves_single_seed_tables_alone() -> None:
    two = _seeded_ladder(2, lucky=0.05)
    out = seed_mean(two)
    assert len(out) == len(two) // 2 and set(out["n_seeds"]) == {2}
    assert set(out["seed"]) == {0}  # the first run of each setting stands for it
    one = _seeded_ladder(1, lucky=0.05)
    pd.testing.assert_frame_equal(seed_mean(one).drop(columns="n_seeds"), one)


def test_frontier_and_isoflop_envelope_take_the_seed_mean_not_the_luckiest_seed() -> None:
    """Two seeds per setting, the best cell of every budget with one seed 0.05 lucky and the other 0.05
    unlucky: its expected loss is the clean value. The frontier points and the envelope are those means; on
    the minimum over seeds the frontier would sit 0.05 low at every budget."""
    runs = _seeded_ladder(2, lucky=0.05)
    law = fit_frontier_law(runs, n_boot=0, backtest=False)
    best = {C: 2.0 + 30.0 * C**-0.1 for C in (1e15, 1e16, 1e17, 1e18)}
    for C, L in law.notes["points"]:
        assert L == pytest.approx(best[min(best, key=lambda c: abs(np.log(c / C)))], abs=1e-9)
    env = lower_envelope(runs, "params")
    per_budget = env.groupby(np.round(np.log10(env["compute"]), 1))["loss"].min()
    assert len(env) == 12 and list(per_budget) == pytest.approx(list(best.values()), abs=1e-9)
    lucky = fit_frontier_law(runs.assign(lr=np.nan), n_boot=0, backtest=False)  # LR unknown: rows as given
    assert [L for _, L in lucky.notes["points"]] == pytest.approx([v - 0.05 for v in best.values()], abs=1e-9)
