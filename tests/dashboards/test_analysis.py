"""Law evaluation and per-budget aggregation against hand-computed values and the published Ling numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dashboards import analysis


def _laws(tmp_path, entries: dict) -> analysis.Laws:
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
                "ci95": {"a": [1.1, 1.2], "b": [-0.16, -0.15]},
            }
        },
    )
    v, lo, hi = analysis.predict(laws, "lr_opt", np.array([1.35e23, 7.13e23, 6.4e24]))
    assert np.allclose(v, [3.36e-4, 2.61e-4, 1.86e-4], rtol=0.01)  # DESIGN.md: mini / flash / 1T
    assert (lo <= v).all() and (v <= hi).all() and (hi > lo).all()


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
    el, _, _ = analysis.predict(laws, "leverage", np.array([0.031]), np.array([12.0]), np.array([1e22]))
    assert el[0] > 7  # "EL > 7 at A = 3.1%, G = 12, C = 1e22"
    # hand evaluation of the formula
    inv_a_hat = 1 / (0.031 + 1 / (1 / 1.63e-2 - 1 / 5.28e16)) + 1 / 5.28e16
    expo = 1.23 - 7.61e-2 * 22 + 1.67e-2 * np.log2(12) ** 2 - 1.17e-1 * np.log2(12)
    assert el[0] == pytest.approx((1 / inv_a_hat) ** expo)
    G = np.linspace(2, 40, 400)
    el_G, _, _ = analysis.predict(laws, "leverage", np.full_like(G, 0.031), G, np.full_like(G, 1e22))
    assert 8 <= G[np.argmax(el_G)] <= 16  # optimal granularity about 12


def test_isoflop_parabola_vertex() -> None:
    # two budgets, exact parabolas in ln N with vertices at N = 1e6 and 3e6
    rows = []
    for C, n_star in ((1e15, 1e6), (1e16, 3e6)):
        for n in np.logspace(5, 7.5, 7):
            rows.append(
                {
                    "compute": C,
                    "params": n,
                    "tokens": C / (6 * n),
                    "state": "finished",
                    "loss": 3.0 + 0.05 * (np.log(n) - np.log(n_star)) ** 2,
                }
            )
    profiles = analysis.isoflop_profiles(pd.DataFrame(rows))
    assert [round(p.budget) for p in profiles] == [1e15, 1e16]
    assert profiles[0].n_opt == pytest.approx(1e6, rel=1e-6) and profiles[1].n_opt == pytest.approx(
        3e6, rel=1e-6
    )
    assert profiles[0].loss_opt == pytest.approx(3.0)


def test_near_optimal_band() -> None:
    df = pd.DataFrame(
        {
            "compute": [1e15, 1.01e15, 1e15, 1e17, 1e17],
            "loss": [3.0, 3.006, 3.1, 2.0, 2.006],
            "state": ["finished"] * 5,
        }
    )
    # 0.25% of 3.0 is 0.0075: 3.006 is in; of 2.0 it is 0.005: 2.006 is out
    assert analysis.near_optimal(df).tolist() == [True, True, False, True, False]


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


def test_recommendation_falls_back_to_law_predictions(tmp_path) -> None:
    laws = _laws(tmp_path, {"frontier": {"form": "", "coefficients": {"E": 1.5, "A": 100.0, "alpha": 0.1}}})
    rec = analysis.recommendation(laws, 1e24)
    assert "frontier" in rec.yaml_text and rec.filename.endswith(".yaml")
    assert rec.summary["item"].tolist()[1] == "frontier"


def test_bad_law_file(tmp_path) -> None:
    p = tmp_path / "bad.json"
    p.write_text("[1, 2]")
    with pytest.raises(ValueError):
        analysis.load_laws(p)
    with pytest.raises(FileNotFoundError):
        analysis.load_laws(tmp_path / "missing.json")
