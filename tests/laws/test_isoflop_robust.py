"""IsoFLOP optima (Akima + noise bootstrap, edge budgets out of the fit) on synthetic profiles with known
optima and on Porian et al.'s published IsoFLOP points against the authors' own optima."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from windtunnel.laws import fit_laws
from windtunnel.laws.isoflop import EdgeOptimumWarning, fit_isoflop_law, weighted_loglog_fit
from windtunnel.laws.profile import condense, noise_scale
from windtunnel.laws.synthetic import TRUE, optimal_params
from windtunnel.runtable import validate_run_table

B_TRUE = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])


def chinchilla_profile_runs(budgets, lo: float, hi: float, n_sizes: int, sigma: float, seed: int):
    """IsoFLOP points at sizes n_opt·e^[lo, hi] (an asymmetric range when lo != -hi), log-normal noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        for N in float(optimal_params(C)) * np.exp(np.linspace(lo, hi, n_sizes)):
            D = C / (6 * N)
            L = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
            rows.append({"params": N, "tokens": D, "compute": C, "loss": L * np.exp(sigma * rng.normal())})
    return validate_run_table(pd.DataFrame(rows))


def test_wide_asymmetric_profile_gives_true_optima() -> None:
    """Sizes from n*/2.7 to 20·n*: one parabola through all points is pulled away from the minimum; the
    Akima optimum is not."""
    budgets = (1e18, 4e18, 1.6e19, 6.4e19, 2.56e20)
    runs = chinchilla_profile_runs(budgets, -1.0, 3.0, 13, sigma=0.0, seed=0)
    law = fit_isoflop_law(runs, "params_opt", "params", n_boot=0)
    for o in law.notes["optima"]:
        assert abs(o["opt"] / optimal_params(o["compute"]) - 1) < 0.03, o
    assert abs(law.coefficients["b"] - B_TRUE) < 0.01


def test_noisy_profiles_exponent_and_interval_cover_truth() -> None:
    budgets = (1e18, 4e18, 1.6e19, 6.4e19, 2.56e20, 1e21)
    runs = chinchilla_profile_runs(budgets, -1.5, 1.5, 15, sigma=0.002, seed=4)
    law = fit_isoflop_law(runs, "params_opt", "params", n_boot=200, rng=np.random.default_rng(1))
    lo, hi = law.ci95["b"]
    assert lo < B_TRUE < hi and hi - lo < 0.16, (lo, hi)
    assert abs(law.coefficients["b"] - B_TRUE) < 0.04
    # the estimated point noise is the one put in (log-normal sigma = 0.002)
    assert 0.001 < law.notes["noise_sigma_log_loss"] < 0.004
    covered = [o["ci95"][0] <= optimal_params(o["compute"]) <= o["ci95"][1] for o in law.notes["optima"]]
    assert sum(covered) >= len(budgets) - 1


def test_edge_budget_left_out_and_named() -> None:
    inside = chinchilla_profile_runs((1e18, 1e19, 1e20), -1.5, 1.5, 9, sigma=0.0, seed=0)
    edge = chinchilla_profile_runs((1e21,), 0.4, 2.0, 6, sigma=0.0, seed=0)  # every size above n*
    runs = pd.concat([inside, edge], ignore_index=True)
    with pytest.warns(EdgeOptimumWarning, match="1e\\+21"):
        law = fit_isoflop_law(runs, "params_opt", "params", n_boot=20)
    top = law.notes["optima"][-1]
    assert top["edge"] and not top["in_fit"] and top["weight"] == 0
    assert law.notes["edge_warning"] == [pytest.approx(1e21)]
    assert abs(law.coefficients["b"] - B_TRUE) < 0.01  # the edge optimum (n*·e^0.4) did not bias it


def test_dense_profile_is_condensed() -> None:
    runs = chinchilla_profile_runs((1e18, 1e19, 1e20), -1.5, 1.5, 600, sigma=0.001, seed=2)
    law = fit_isoflop_law(runs, "params_opt", "params", n_boot=0)
    for o in law.notes["optima"]:
        assert abs(o["opt"] / optimal_params(o["compute"]) - 1) < 0.1, o
    u, y = condense(np.linspace(0, 1, 1000), np.zeros(1000), max_points=40)
    assert len(u) == 40 and np.all(np.diff(u) > 0)


def test_near_coincident_sizes_are_merged_before_interpolation() -> None:
    """Beside one size of every profile, two more within 0.8 % whose losses differ by ±2 % (runs of one
    shape rule with different vocabularies, say): the profile keeps one point for the three (an interpolant
    through near-coincident points with different losses swings between them), and every optimum is still
    the profile's true one."""
    budgets = (1e18, 4e18, 1.6e19)
    runs = chinchilla_profile_runs(budgets, -1.5, 1.5, 7, sigma=0.0, seed=0)
    extra = []
    for C in budgets:
        n0 = float(optimal_params(C)) * np.exp(-1.0)  # the second-smallest size
        base = runs[(runs["compute"] == C) & np.isclose(runs["params"], n0)]["loss"].iloc[0]
        for eps, f in ((0.004, 0.98), (0.008, 1.02)):
            n = n0 * np.exp(eps)
            extra.append({"params": n, "tokens": C / (6 * n), "compute": C, "loss": base * f})
    runs = validate_run_table(pd.concat([runs, pd.DataFrame(extra)], ignore_index=True))
    one = runs[runs["compute"] == budgets[0]]
    u, _ = condense(np.log(one["params"].to_numpy(float)), np.log(one["loss"].to_numpy(float)))
    assert len(u) == 7 and np.all(np.diff(u) >= 0.01)  # no two kept sizes within 1 % of each other
    law = fit_isoflop_law(runs, "params_opt", "params", n_boot=0)
    for o in law.notes["optima"]:
        assert abs(o["opt"] / optimal_params(o["compute"]) - 1) < 0.05, o


def test_noise_scale_recovers_sigma() -> None:
    rng = np.random.default_rng(0)
    u = np.linspace(-2, 2, 9)
    profiles = [(u, 0.05 * u**2 + 0.01 * rng.normal(size=9)) for _ in range(40)]
    assert abs(noise_scale(profiles) / 0.01 - 1) < 0.15


def test_weighted_fit_follows_weights() -> None:
    C = np.array([1e18, 1e19, 1e20, 1e21])
    x = 0.1 * C**0.5
    x[-1] *= 3.0  # an outlying optimum ...
    flat = weighted_loglog_fit(C, x[None], np.ones(4))[0]
    down = weighted_loglog_fit(C, x[None], np.array([1.0, 1.0, 1.0, 1e-6]))[0]
    assert flat[1] > 0.55  # ... pulls the equal-weight exponent up
    assert abs(down[1] - 0.5) < 1e-4 and abs(down[0] / 0.1 - 1) < 1e-3  # and is ignored at ~zero weight


PORIAN_CONFIG = ["dataset", "hparams", "warmup", "decay", "param_count", "val"]


def porian_configs(anchors):
    points = pd.read_csv(anchors / "porian2024" / "isoflop_points.csv")
    return [dict(zip(PORIAN_CONFIG, k, strict=True)) for k, _ in points.groupby(PORIAN_CONFIG)]


def test_porian_optima_match_authors_on_every_configuration(anchors) -> None:
    """Acceptance (issue 13): params_opt on every Porian configuration, RefinedWeb and OpenWebText2: each
    budget's n* within 15 % of the authors' optimal_pairs.csv, exponent in [0.3, 1.0] with a finite ci95."""
    from windtunnel.laws.anchors import load_porian

    pairs = pd.read_csv(anchors / "porian2024" / "optimal_pairs.csv")
    configs = porian_configs(anchors)
    assert {c["dataset"] for c in configs} == {"rw", "owt2"} and len(configs) == 15
    for config in configs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EdgeOptimumWarning)
            ls = fit_laws(load_porian(config, root=anchors), laws=["params_opt"], bootstrap=40)
        law = ls.laws["params_opt"]
        lo, hi = law.ci95["b"]
        assert 0.3 <= law.coefficients["b"] <= 1.0 and lo < law.coefficients["b"] < hi, (config, law.ci95)
        ref = pairs.merge(pd.DataFrame([config]), on=PORIAN_CONFIG).dropna(subset=["n_star"])
        ours = {round(np.log2(o["compute"])): o["opt"] for o in law.notes["optima"]}
        errs = [
            abs(ours[round(np.log2(c))] / n - 1) for c, n in zip(ref["flops"], ref["n_star"], strict=True)
        ]
        assert len(errs) >= 10 and max(errs) < 0.15, (config, max(errs))


def test_profile_curves_pass_through_the_points() -> None:
    from windtunnel.laws.isoflop import lower_envelope
    from windtunnel.laws.profile import profile_curves

    runs = lower_envelope(chinchilla_profile_runs((1e18, 1e19), -1.0, 1.0, 5, sigma=0.002, seed=0), "params")
    curves = profile_curves(runs, "params", n_points=5)  # the grid is the five sampled sizes
    for (x, loss), C in zip(curves, (1e18, 1e19), strict=True):
        pts = runs[np.isclose(runs["compute"], C)].sort_values("params")
        assert np.allclose(x, pts["params"], rtol=1e-9) and np.allclose(loss, pts["loss"], rtol=1e-9)
