"""laws.json round trip, prediction intervals, and the ``windtunnel fit`` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from windtunnel.cli import main as cli_main
from windtunnel.laws import LawSet, fit_laws, load_laws
from windtunnel.laws.synthetic import synthetic_runs

REQUIRED_KEYS = {"form", "coefficients", "ci95", "n_runs", "run_ids", "backtest"}


@pytest.fixture(scope="module")
def runs():
    return synthetic_runs(120, budgets=(1e17, 4e17, 1.6e18, 6.4e18), seed=11)


def test_json_round_trip_and_predict(tmp_path, runs) -> None:
    ls = fit_laws(runs, laws=["lr_opt", "params_opt", "frontier"], bootstrap=40)
    path = ls.to_json(tmp_path / "laws.json")
    data = json.loads(path.read_text())
    for name, entry in data["laws"].items():
        assert REQUIRED_KEYS <= set(entry), name
        assert set(entry["ci95"]) == set(entry["coefficients"])
    back = LawSet.from_json(path)
    for name in ls.laws:
        assert back.laws[name].coefficients == pytest.approx(ls.laws[name].coefficients)
        assert ls.predict(name, 3e18) == pytest.approx(back.predict(name, 3e18))
    v, lo, hi = back.predict("params_opt", np.array([1e18, 1e21]))
    assert np.all(lo <= v) and np.all(v <= hi)
    # the interval widens when extrapolating 2+ decades past the data
    assert (hi[1] / lo[1]) > (hi[0] / lo[0])


def test_load_laws_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_laws(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError):
        load_laws(tmp_path / "bad.json")


def test_cli_fit_csv(tmp_path, runs, capsys) -> None:
    bad = runs.copy()
    bad.loc[0, "status"] = "diverged"
    csv = tmp_path / "runs.csv"
    bad.to_csv(csv, index=False)
    out = tmp_path / "laws.json"
    rc = cli_main(
        [
            "fit",
            "--runs",
            str(csv),
            "--out",
            str(out),
            "--laws",
            "lr_opt,batch_opt,leverage",
            "--bootstrap",
            "20",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "lr_opt" in text and "not fitted" in text and "leverage" in text and "status=diverged" in text
    data = json.loads(out.read_text())
    assert set(data["laws"]) == {"lr_opt", "batch_opt"} and "leverage" in data["errors"]
    assert all(math.isfinite(v) for v in data["laws"]["lr_opt"]["coefficients"].values())


def test_cli_user_errors(tmp_path, capsys) -> None:
    assert cli_main(["fit", "--runs", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    csv = tmp_path / "r.csv"
    csv.write_text("params,tokens,loss\n1,2,3\n")
    assert cli_main(["fit", "--runs", str(csv), "--out", str(tmp_path / "x.json"), "--laws", "bogus"]) == 2
    assert "unknown law" in capsys.readouterr().err


def test_cli_missing_experiment_is_a_user_error(tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = cli_main(["fit", "--experiment", "nope", "--tracking-uri", uri, "--out", str(tmp_path / "x.json")])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_json_without_bootstrap(tmp_path, runs) -> None:
    ls = fit_laws(runs, laws=["lr_opt", "frontier"], bootstrap=0)
    back = LawSet.from_json(ls.to_json(tmp_path / "b0.json"))
    v, lo, hi = back.predict("lr_opt", 1e21)
    # no coefficient draws: the 95 % interval is the residual and rollout scale alone
    s = back.laws["lr_opt"].extra["pi95"]["z"] * back.laws["lr_opt"].extra["pi95"]["sigma_log"]
    assert math.isfinite(v) and s > 0
    assert lo == pytest.approx(v * math.exp(-s)) and hi == pytest.approx(v * math.exp(s))
    assert back.laws["lr_opt"].ci95 == {}
