"""``windtunnel predict`` on a tiny synthetic law set, and predictions recorded in MLflow never change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from windtunnel.cli import main as cli_main
from windtunnel.laws import LawSet
from windtunnel.predict import (
    PredictionLocked,
    point_from_compute,
    predict_loss,
    record_prediction,
)

PARAM = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.36}
FRONT = {"E": 1.7, "A": 30.0, "alpha": 0.1}
M_OPT = {"a": 0.2, "b": 0.5}
PARAMS_OPT = {"a": 0.03, "b": 0.5}


def _samples(coef: dict[str, float], rng: np.random.Generator, rel: float = 0.02) -> dict[str, list[float]]:
    return {k: list(v * np.exp(rel * rng.standard_normal(64))) for k, v in coef.items()}


def _law(form: str, coef: dict[str, float], samples: dict[str, list[float]] | None = None) -> dict:
    return {"form": form, "coefficients": coef, "ci95": {}, "n_runs": 12, "samples": samples or {}}


@pytest.fixture
def laws_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    laws = {
        "laws": {
            "parametric": _law("E + A/N^alpha + B/D^beta", PARAM, _samples(PARAM, rng)),
            "frontier": _law("E + A*C^-alpha", FRONT, _samples(FRONT, rng)),
            "m_opt": _law("a*C^b", M_OPT),
            "params_opt": _law("a*C^b", PARAMS_OPT),
        }
    }
    path = tmp_path / "laws.json"
    path.write_text(json.dumps(laws))
    return path


def _param_loss(n: float, d: float) -> float:
    return PARAM["E"] + PARAM["A"] / n ** PARAM["alpha"] + PARAM["B"] / d ** PARAM["beta"]


def test_predict_compute_uses_the_allocation_laws(laws_path: Path) -> None:
    lawset = LawSet.from_json(laws_path)
    c = 1e13
    point, notes = point_from_compute(lawset, c)
    m = M_OPT["a"] * c ** M_OPT["b"]
    assert point["m"] == pytest.approx(m) and point["tokens"] == pytest.approx(c / m)
    assert point["params"] == pytest.approx(PARAMS_OPT["a"] * c ** PARAMS_OPT["b"]) and not notes
    p = predict_loss(lawset, point)
    assert p.law == "parametric"
    assert p.predicted == pytest.approx(_param_loss(point["params"], point["tokens"]))
    assert p.pi95[0] < p.predicted < p.pi95[1]
    front = FRONT["E"] + FRONT["A"] * c ** -FRONT["alpha"]
    assert p.alternatives["frontier"]["predicted"] == pytest.approx(front)
    assert predict_loss(lawset, point, law="frontier").predicted == pytest.approx(front)


def test_cli_predict_model_tokens_writes_json(
    laws_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.config import RunConfig
    from trainer.flops import count_params, flops_per_token

    model = {"vocab_size": 512, "d_model": 48, "n_layers": 2, "n_heads": 6, "n_kv_heads": 6, "d_ffn": 128}
    cfg_path = tmp_path / "m.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": model}))
    out = tmp_path / "p.json"
    args = ["predict", "--laws", str(laws_path), "--model", str(cfg_path), "--tokens", "11M"]
    args += ["--out", str(out)]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "95% interval" in text and "(law: parametric)" in text
    p = json.loads(out.read_text())
    mcfg = RunConfig.from_yaml(cfg_path).model
    n = count_params(mcfg).active_nonembed
    assert p["x"]["params"] == n and p["x"]["tokens"] == 11e6
    assert p["x"]["compute"] == pytest.approx(flops_per_token(mcfg) * 11e6)
    assert p["predicted"] == pytest.approx(_param_loss(n, 11e6))
    assert set(p) >= {"law", "x", "predicted", "pi95", "laws_sha256", "made_at"} and len(p["pi95"]) == 2


def test_cli_predict_user_errors_are_one_line(laws_path: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"laws": {"frontier": _law("E + A*C^-alpha", FRONT)}}))
    for argv, code in (
        (["predict", "--laws", str(bare), "--compute", "1e13"], 2),  # no m_opt law
        (["predict", "--laws", str(laws_path), "--compute", "1e13", "--law", "leverage"], 2),
        (["predict", "--laws", str(tmp_path / "none.json"), "--compute", "1e13"], 2),
        (["predict", "--laws", str(laws_path), "--compute", "1e13", "--json"], 0),
    ):
        assert cli_main(argv) == code, argv


def test_recorded_prediction_cannot_be_overwritten(laws_path: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lawset = LawSet.from_json(laws_path)
    point, _ = point_from_compute(lawset, 1e13)
    first = predict_loss(lawset, point, sha="abc")
    run_id, rec = record_prediction(uri, "study", "target", first)
    assert rec.predicted == first.predicted
    # the same prediction again (a resumed sweep): the recorded one comes back, unchanged
    again = predict_loss(lawset, point, sha="abc")
    run_id2, rec2 = record_prediction(uri, "study", "target", again)
    assert run_id2 == run_id and rec2.made_at == first.made_at
    # a different one (other law, point or laws file) under the same key is refused
    with pytest.raises(PredictionLocked, match="never overwritten"):
        record_prediction(uri, "study", "target", predict_loss(lawset, point, law="frontier", sha="abc"))
    with pytest.raises(PredictionLocked):
        record_prediction(uri, "study", "target", predict_loss(lawset, point, sha="other-laws"))
    # and the store itself refuses to change a logged value
    client = MlflowClient(uri)
    with pytest.raises(MlflowException):
        client.log_param(run_id, "predicted", "2.0")
    assert float(client.get_run(run_id).data.params["predicted"]) == first.predicted


def test_auto_takes_the_law_with_the_smaller_backtest_error(laws_path: Path) -> None:
    data = json.loads(laws_path.read_text())
    data["laws"]["parametric"]["backtest"] = {"mean_rel_err": 0.05}
    data["laws"]["frontier"]["backtest"] = {"mean_rel_err": 0.01}
    lawset = LawSet.from_dict(data)
    point, _ = point_from_compute(lawset, 1e13)
    p = predict_loss(lawset, point)
    assert p.law == "frontier" and "parametric" in p.alternatives
    assert any("backtest error" in n and "frontier 1.00%" in n for n in p.notes)
    data["laws"]["frontier"]["backtest"] = {"skipped": "needs 4 or more compute budgets"}
    assert predict_loss(LawSet.from_dict(data), point).law == "parametric"


def test_auto_judges_both_laws_at_the_top_budgets_best_run(laws_path: Path) -> None:
    """The parametric law's error over every size of the held-out budget is not the criterion: a law that
    fits the far sizes well but misses the budget's best run (the compute-optimal point a target is) loses
    to a frontier law that predicts that run better."""
    data = json.loads(laws_path.read_text())
    data["laws"]["parametric"]["backtest"] = {"mean_rel_err": 0.04, "frontier_rel_err": 0.09}
    data["laws"]["frontier"]["backtest"] = {"mean_rel_err": 0.06}
    lawset = LawSet.from_dict(data)
    point, _ = point_from_compute(lawset, 1e13)
    p = predict_loss(lawset, point)
    assert p.law == "frontier"
    assert any("parametric 9.00%" in n and "frontier 6.00%" in n for n in p.notes), p.notes
    data["laws"]["parametric"]["backtest"]["frontier_rel_err"] = 0.02
    assert predict_loss(LawSet.from_dict(data), point).law == "parametric"


def test_parametric_backtest_reports_the_error_at_the_top_budgets_best_run() -> None:
    from windtunnel.laws.parametric import fit_parametric_law
    from windtunnel.laws.synthetic import synthetic_runs

    runs = synthetic_runs(n_runs=240, seed=3)
    bt = fit_parametric_law(runs, n_boot=0).backtest
    assert 0 <= bt["frontier_rel_err"] < 0.05 and bt["n"] > 1, bt
