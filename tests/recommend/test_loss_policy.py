"""One loss-prediction policy: ``windtunnel recommend`` predicts the final loss with the law that
``windtunnel predict`` chooses (``windtunnel.predict.choose_law``, the smaller backtest error), so both
print one number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from windtunnel.cli import main as cli_main

MODEL = Path(__file__).resolve().parents[2] / "experiments" / "models" / "ling-mini-2.0.yaml"
TOKENS = "2e13"


def _laws(path: Path, parametric_err: float, frontier_err: float) -> Path:
    """Ling's LR/batch laws plus two loss laws that disagree at the target, with the given backtests."""
    laws = {
        "lr_opt": {"form": "", "coefficients": {"a": 1.1576, "b": -0.1529}},
        "batch_opt": {"form": "", "coefficients": {"a": 0.0694, "b": 0.3644}},
        "parametric": {
            "form": "",
            "coefficients": {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37},
            "backtest": {"mean_rel_err": parametric_err},
        },
        "frontier": {
            "form": "",
            "coefficients": {"E": 1.2, "A": 60.0, "alpha": 0.07},
            "backtest": {"mean_rel_err": frontier_err},
        },
    }
    path.write_text(json.dumps({"laws": laws}))
    return path


def _json(capsys, *argv: str) -> dict:
    rc = cli_main([*argv, "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


@pytest.mark.parametrize("errors,law", [((0.09, 0.02), "frontier"), ((0.01, 0.05), "parametric")])
def test_recommend_predicts_the_loss_predict_prints(capsys, tmp_path, errors, law) -> None:
    laws = str(_laws(tmp_path / "laws.json", *errors))
    target = ["--laws", laws, "--model", str(MODEL), "--tokens", TOKENS]
    pred = _json(capsys, "predict", *target)
    rec = _json(capsys, "recommend", *target)
    assert pred["law"] == rec["loss_law"] == law
    assert rec["predicted_loss"] == pytest.approx(pred["predicted"], rel=1e-9)
    assert [rec["predicted_loss_lo"], rec["predicted_loss_hi"]] == pytest.approx(pred["pi95"], rel=1e-9)
    other = "parametric" if law == "frontier" else "frontier"
    # the two laws disagree here: taking the other one would give another number
    assert abs(pred["alternatives"][other]["predicted"] - pred["predicted"]) > 0.05
    assert "backtest error" in rec["loss_law_choice"]
