"""The dashboard's law values, budgets and recommendation come from the law engine and the recommender:
checked against hand-computed values, the published Ling numbers, and ``windtunnel recommend`` itself."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dashboards import analysis
from windtunnel.laws import LawSet


def _laws(tmp_path, entries: dict) -> LawSet:
    p = tmp_path / "laws.json"
    p.write_text(json.dumps({"laws": entries}))
    return analysis.load_laws(p)


def test_ling_lr_law_reproduces_published_peak_lr(tmp_path) -> None:
    laws = _laws(
        tmp_path,
        {
            "lr_opt": {
                "form": "",
                "coefficients": {"a": 1.1576, "b": -0.1529},
                "samples": {"a": [1.1, 1.15, 1.2, 1.16], "b": [-0.16, -0.155, -0.15, -0.1525]},
            }
        },
    )
    v, lo, hi = laws.predict("lr_opt", np.array([1.35e23, 7.13e23, 6.4e24]))
    assert np.allclose(v, [3.36e-4, 2.61e-4, 1.86e-4], rtol=0.01)  # docs/DESIGN.md: mini / flash / 1T
    # the interval is the engine's: percentiles of the law over its bootstrap draws
    draws = np.array(
        [
            [a * c**b for c in (1.35e23, 7.13e23, 6.4e24)]
            for a, b in zip([1.1, 1.15, 1.2, 1.16], [-0.16, -0.155, -0.15, -0.1525], strict=True)
        ]
    )
    assert lo == pytest.approx(np.percentile(draws, 2.5, axis=0)) and (hi > lo).all()


def test_leverage_law_matches_paper_claims(tmp_path) -> None:
    coef = {
        "a": 1.23,
        "d": -7.61e-2,
        "gamma": 1.67e-2,
        "beta": -1.17e-1,
        "A_start": 1.63e-2,
        "A_max": 5.28e16,
    }
    laws = _laws(tmp_path, {"leverage": {"form": "", "coefficients": coef}})
    el, _, _ = laws.predict("leverage", (np.array([0.031]), np.array([12.0]), np.array([1e22])))
    assert el[0] > 7  # "EL > 7 at A = 3.1%, G = 12, C = 1e22"
    # hand evaluation of the formula
    inv_a_hat = 1 / (0.031 + 1 / (1 / 1.63e-2 - 1 / 5.28e16)) + 1 / 5.28e16
    expo = 1.23 - 7.61e-2 * 22 + 1.67e-2 * np.log2(12) ** 2 - 1.17e-1 * np.log2(12)
    assert el[0] == pytest.approx((1 / inv_a_hat) ** expo)
    G = np.linspace(2, 40, 400)
    el_G, _, _ = laws.predict("leverage", (np.full_like(G, 0.031), G, np.full_like(G, 1e22)))
    assert 8 <= G[np.argmax(el_G)] <= 16  # optimal granularity about 12


def _isoflop_runs(vertices: dict[float, float], skew: float = 0.0) -> pd.DataFrame:
    """Budgets C -> optimal N*: 7 sizes each, log L a parabola in ln N about ln N* (``skew`` > 0 makes the
    larger sizes' side steeper, so one parabola through every point puts its vertex off the minimum)."""
    rows = []
    for C, n_star in vertices.items():
        for n in np.logspace(5, 7.5, 7):
            u = np.log(n) - np.log(n_star)
            loss = 3.0 * np.exp(0.05 * u**2 * (1 + skew * (u > 0)))
            rows.append({"compute": C, "params": n, "tokens": C / (6 * n), "state": "finished", "loss": loss})
    df = pd.DataFrame(rows)
    df["run_id"] = [f"r{i}" for i in range(len(df))]
    df["status"], df["family"], df["sweep"] = "finished", "dense", "isoflop"
    df["m"], df["n_total"], df["n_active"] = 6 * df["params"], df["params"], df["params"]
    return df


def test_isoflop_optimum_is_the_engines_akima_argmin() -> None:
    from windtunnel.laws.isoflop import fit_parabolas, lower_envelope
    from windtunnel.laws.profile import isoflop_optima

    runs = _isoflop_runs({1e15: 1e6, 1e16: 3e6}, skew=4.0)
    profiles = analysis.isoflop_profiles(runs)
    assert [round(p.budget) for p in profiles] == [1e15, 1e16]
    engine = isoflop_optima(lower_envelope(runs, "params"), "params", 0, np.random.default_rng(0))
    assert [p.n_opt for p in profiles] == pytest.approx(engine.xstar_RK[0].tolist(), rel=1e-12)
    assert all(p.n_lo <= p.n_opt <= p.n_hi and not p.edge for p in profiles)
    assert profiles[0].loss_opt == pytest.approx(3.0, rel=0.01)
    # one parabola through the skewed profile puts its vertex much farther from the minimum (at 1e6)
    first = runs[runs["compute"] == 1e15]
    u = np.log(first["params"].to_numpy()) - np.log(first["params"]).mean()
    c0, c1, c2 = fit_parabolas(u[None], np.log(first["loss"].to_numpy())[None], np.ones((1, 1, 7)))[0, 0]
    vertex = np.exp(np.log(first["params"]).mean() - c1 / (2 * c2))
    assert abs(np.log(profiles[0].n_opt / 1e6)) < 0.25 < 0.5 < abs(np.log(vertex / 1e6))


def test_isoflop_optima_are_the_ones_the_params_opt_law_used() -> None:
    from windtunnel.laws import fit_laws

    runs = _isoflop_runs({1e15: 1e6, 3e15: 1.7e6, 1e16: 3e6}, skew=4.0)
    runs["loss"] *= 1 + 2e-3 * np.random.default_rng(1).standard_normal(len(runs))
    lawset = fit_laws(runs, laws=["params_opt"], bootstrap=40, seed=3)
    recorded = lawset.laws["params_opt"].notes["optima"]
    profiles = analysis.isoflop_profiles(runs, lawset)
    assert [p.source for p in profiles] == ["params_opt law"] * 3
    assert [p.n_opt for p in profiles] == [r["opt"] for r in recorded]
    assert [[p.n_lo, p.n_hi] for p in profiles] == [r["ci95"] for r in recorded]
    assert [p.in_fit for p in profiles] == [r["in_fit"] for r in recorded]
    # without the law file the engine's estimator gives the same optimum (its draws give another interval)
    alone = analysis.isoflop_profiles(runs)
    assert [p.n_opt for p in alone] == pytest.approx([r["opt"] for r in recorded], rel=1e-12)
    assert {p.source for p in alone} == {analysis.ENGINE_SOURCE}


def test_isoflop_profiles_split_families_as_the_engine_fits_them() -> None:
    dense = _isoflop_runs({1e15: 1e6, 1e16: 3e6})
    moe = _isoflop_runs({1e15: 2e6, 1e16: 6e6}).assign(family="moe")
    profiles = analysis.isoflop_profiles(pd.concat([dense, moe], ignore_index=True))
    assert [(p.family, p.law) for p in profiles] == [
        ("moe", "params_opt"),
        ("moe", "params_opt"),
        ("dense", "params_opt_dense"),
        ("dense", "params_opt_dense"),
    ]
    assert profiles[0].n_opt == pytest.approx(2e6, rel=0.03) and len(profiles[0].runs) == 7


def test_near_optimal_band() -> None:
    # budgets are grouped as the engine groups them: within 0.05 dex of the group's first run
    df = pd.DataFrame(
        {
            "compute": [1e15, 1.01e15, 1e15, 1e17, 1e17],
            "loss": [3.0, 3.006, 3.1, 2.0, 2.006],
            "state": ["finished"] * 5,
        }
    )
    # 0.25% of 3.0 is 0.0075: 3.006 is in; of 2.0 it is 0.005: 2.006 is out
    assert analysis.near_optimal(df).tolist() == [True, True, False, True, False]


def test_budgets_group_by_distance_to_the_first_run() -> None:
    # 1e15, 1.08e15, 1.16e15: each step is < 0.05 dex, but the third is 0.064 dex from the first
    df = pd.DataFrame({"compute": [1e15, 1.08e15, 1.16e15, np.nan]})
    b = analysis.budgets(df)
    assert b.iloc[0] == b.iloc[1] != b.iloc[2] and np.isnan(b.iloc[3])


def test_residuals_split_in_fit_and_held_out(tmp_path) -> None:
    laws = _laws(
        tmp_path,
        {
            "parametric": {
                "form": "",
                "coefficients": {"E": 1.0, "A": 10.0, "B": 10.0, "alpha": 0.5, "beta": 0.5},
                "run_ids": ["r0"],
            }
        },
    )
    df = pd.DataFrame(
        {
            "run_id": ["r0", "r1"],
            "sweep": "s",
            "family": "dense",
            "params": [100.0, 10000.0],
            "tokens": [100.0, 100.0],
            "compute": [6e4, 6e6],
            "loss": [3.5, 2.0],
            "state": "finished",
        }
    )
    res = analysis.residuals(df, laws)
    assert res["residual"].tolist() == pytest.approx([0.5, -0.1])
    assert res["in_fit"].tolist() == [True, False]


def test_recommendation_completes_a_partial_law_file_with_ling(tmp_path) -> None:
    # a frontier alone: the recommender's laws come from ling, the frontier predicts the loss
    laws = _laws(tmp_path, {"frontier": {"form": "", "coefficients": {"E": 1.5, "A": 100.0, "alpha": 0.1}}})
    rec = analysis.recommendation(laws, 1e24)
    assert rec.ok and rec.filename.endswith(".yaml") and "optim:" in rec.yaml_text
    assert "laws from the sweep: frontier; from ling: " in rec.note and "lr_opt" in rec.note
    items = dict(zip(rec.summary["item"], rec.summary["value"], strict=True))
    assert "(frontier)" in items["predicted loss"]


def test_recommendation_refused_beyond_the_extrapolation_limit(tmp_path) -> None:
    entry = {"form": "", "coefficients": {"a": 1.0, "b": -0.15}, "notes": {"compute_range": [1e13, 1e15]}}
    laws = _laws(tmp_path, {"lr_opt": entry})
    rec = analysis.recommendation(laws, 6.4e24)
    assert "all laws from ling: the sweep's largest run, C=1e+15, is 9.8 decades below the target" in rec.note
    ling = analysis.recommendation(analysis.load_laws("ling"), 6.4e24)
    assert rec.yaml_text == ling.yaml_text  # the refused law plays no part


def test_bad_law_file(tmp_path) -> None:
    p = tmp_path / "bad.json"
    p.write_text("[1, 2]")
    with pytest.raises(ValueError):
        analysis.load_laws(p)
    with pytest.raises(FileNotFoundError):
        analysis.load_laws(tmp_path / "missing.json")
