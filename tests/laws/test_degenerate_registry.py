"""The law registry, refusals of degenerate fits, duplicate run_ids, and ``windtunnel fit``'s file edges."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from windtunnel.cli import main as cli_main
from windtunnel.laws import DEFAULT_LAWS, Law, fit_laws, registry
from windtunnel.laws.checks import DuplicateRunWarning, degenerate, flat_loss
from windtunnel.laws.lawset import LAW_COLUMNS, POWER_LAWS
from windtunnel.laws.registry import FitOptions, LawSpec, law_spec, power_value, register
from windtunnel.laws.synthetic import synthetic_runs


@pytest.fixture(scope="module")
def runs():
    return synthetic_runs(120, budgets=(1e17, 4e17, 1.6e18, 6.4e18), seed=11)


def test_registry_is_the_one_source_of_law_names() -> None:
    assert DEFAULT_LAWS == registry.law_names()
    assert DEFAULT_LAWS[:3] == ["parametric", "lr_opt", "batch_opt"] and len(DEFAULT_LAWS) == 13
    assert LAW_COLUMNS["params_opt_dense"] == (["compute", "params", "loss"], "dense")
    assert POWER_LAWS == {n for n in DEFAULT_LAWS if n.split("_")[0] in ("lr", "batch", "m", "params", "d")}
    with pytest.raises(KeyError, match="unknown law 'nope'"):
        law_spec("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register(LawSpec("lr_opt", ("compute",), "all", law_spec("frontier").fit, power_value, 99))


def test_a_registered_law_is_fitted_and_predicted(runs) -> None:
    def fit(r: pd.DataFrame, opts: FitOptions) -> Law:
        return Law(
            name="mean_loss", form="L = a * C^0", coefficients={"a": float(r["loss"].mean()), "b": 0.0}
        )

    spec = register(LawSpec("mean_loss", ("compute", "loss"), "primary", fit, power_value, rank=99))
    try:
        ls = fit_laws(runs, laws=["mean_loss"], bootstrap=0)
        assert ls.predict("mean_loss", 1e18)[0] == pytest.approx(runs["loss"].mean())
        assert spec.columns == ("compute", "loss")
    finally:
        registry._REGISTRY.pop("mean_loss")


def test_constant_loss_is_refused_with_a_reason(runs) -> None:
    """Issue 18: a constant loss of 1e308 must not give fitted laws with a = null and negative exponents."""
    flat = runs.assign(loss=1e308)
    ls = fit_laws(flat, bootstrap=5)
    assert ls.laws == {}
    assert ls.errors and all("flat loss" in reason for reason in ls.errors.values()), ls.errors
    assert flat_loss(np.array([2.0, 2.0 + 1e-6])) is None


def test_wrong_sign_and_non_finite_coefficients_are_refused(runs) -> None:
    # the larger the budget, the smaller the best model: an allocation exponent b < 0 is refused
    shrinking = runs.copy()
    order = shrinking["compute"].rank(method="dense").to_numpy()
    shrinking["params"] = shrinking["params"] / (100.0 ** (order - 1)) ** 1.5
    ls = fit_laws(shrinking, laws=["params_opt"], bootstrap=0)
    assert "params_opt" not in ls.laws
    assert "wrong sign of b = -" in ls.errors["params_opt"], ls.errors
    spec = law_spec("params_opt")
    assert "non-finite coefficient(s) a" in degenerate(Law("x", "", {"a": float("nan"), "b": 0.5}), spec)
    assert degenerate(Law("x", "", {"a": 1.0, "b": 0.5}), spec) is None


def test_frontier_with_its_floor_at_zero_is_a_pure_power_law_not_a_refusal() -> None:
    """Four budgets on L = 20·C^(−0.07) exactly (no floor): the fit puts E at ~0 (on the validation ladder's
    four lower budgets e^(log E) underflowed to 0.0 exactly). That is a pure power law, kept with a note;
    E = 0 passes the sign check, a negative E is still refused."""
    C = np.repeat([1e10, 3e10, 1e11, 3e11], 3) * np.tile([1.0, 1.01, 0.99], 4)
    L = 20.0 * C**-0.07 * np.tile([1.0, 1.05, 1.1], 4)
    runs = pd.DataFrame({"run_id": [f"r{i}" for i in range(12)], "compute": C, "loss": L})
    ls = fit_laws(runs, laws=["frontier"], bootstrap=0)
    assert "frontier" in ls.laws, ls.errors
    law = ls.laws["frontier"]
    assert law.coefficients["E"] < 1e-6 and law.coefficients["alpha"] == pytest.approx(0.07, rel=1e-3)
    assert "pure power law" in law.notes["E_at_bound"]
    spec = law_spec("frontier")
    assert degenerate(Law("f", "", {"E": 0.0, "A": 20.0, "alpha": 0.07}), spec) is None
    assert "E = -0.1 (expected >= 0)" in degenerate(Law("f", "", {"E": -0.1, "A": 20.0, "alpha": 0.07}), spec)


def test_duplicate_run_ids_warn_and_count_once(runs) -> None:
    doubled = pd.concat([runs, runs.iloc[:7]], ignore_index=True)
    with pytest.warns(DuplicateRunWarning, match="7 rows repeat an earlier run_id"):
        ls = fit_laws(doubled, laws=["lr_opt", "frontier"], bootstrap=10)
    once = fit_laws(runs, laws=["lr_opt", "frontier"], bootstrap=10)
    for name in ("lr_opt", "frontier"):
        assert ls.laws[name].coefficients == pytest.approx(once.laws[name].coefficients)
        assert ls.excluded[name] == {"duplicate run_id": 7}
        assert ls.laws[name].n_runs == once.laws[name].n_runs


def test_fit_runs_directory_is_one_line_exit_2(tmp_path, capsys) -> None:
    rc = cli_main(["fit", "--runs", str(tmp_path), "--out", str(tmp_path / "laws.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "is a directory" in err and len(err.strip().splitlines()) == 1, err


def test_fit_out_unwritable_is_one_line_exit_2(tmp_path, runs, capsys) -> None:
    csv = tmp_path / "runs.csv"
    runs.to_csv(csv, index=False)
    assert cli_main(["fit", "--runs", str(csv), "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["fit", "--runs", str(csv), "--out", str(blocker / "laws.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and len(err.strip().splitlines()) == 1, err


def test_fit_honours_mlflow_tracking_uri(tmp_path, monkeypatch, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rc = cli_main(["fit", "--experiment", "absent", "--out", str(tmp_path / "laws.json")])
    err = capsys.readouterr().err
    assert rc == 2 and f"no tracking store at {uri}" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "env.db").exists()  # reading laws' input never creates a store
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).create_experiment("other")  # a real store without the experiment
    capsys.readouterr()
    rc = cli_main(["fit", "--experiment", "absent", "--out", str(tmp_path / "laws.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "no MLflow experiment named 'absent'" in err and len(err.strip().splitlines()) == 1, (
        err
    )


def test_cli_reports_refusals(tmp_path, runs, capsys) -> None:
    csv = tmp_path / "flat.csv"
    runs.assign(loss=1e308).to_csv(csv, index=False)
    out = tmp_path / "laws.json"
    rc = cli_main(["fit", "--runs", str(csv), "--out", str(out), "--bootstrap", "5"])
    text = capsys.readouterr().out
    assert rc == 1 and "(0 laws," in text and "flat loss" in text
    assert json.loads(out.read_text())["laws"] == {}


def test_bootstrap_blocks_give_the_same_draws(runs, monkeypatch) -> None:
    """Large tables bootstrap in blocks of rows (bounded memory); the blocks are the same draws."""
    import windtunnel.laws.base as base
    from windtunnel.laws.base import bootstrap_weight_blocks, bootstrap_weights

    whole = bootstrap_weights(50, 9, np.random.default_rng(2))
    blocks = list(bootstrap_weight_blocks(50, 9, np.random.default_rng(2), block_elements=120))
    assert [len(b) for b in blocks] == [2, 2, 2, 2, 2] and np.array_equal(np.concatenate(blocks), whole)
    one = fit_laws(runs, laws=["lr_opt"], bootstrap=30).laws["lr_opt"]
    monkeypatch.setattr(base, "BOOTSTRAP_BLOCK_ELEMENTS", 3 * len(runs))
    blocked = fit_laws(runs, laws=["lr_opt"], bootstrap=30).laws["lr_opt"]
    assert blocked.samples["b"] == pytest.approx(one.samples["b"]) and blocked.run_ids == one.run_ids
