"""The validation-study panel on a real MLflow store written as the sweep writes it (parent run with its
laws.json, ladder and target trials, the prediction recorded by ``windtunnel.predict.record_prediction``):
its numbers are the sweep's own ``summary.json`` numbers (``validation_report.build_summary``)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param, RunTag

from dashboards.data import load_sweeps
from dashboards.report import write_report
from dashboards.validation import load_study
from dashboards.validation_figure import validation_figure
from dashboards.views import build_figures
from trainer.config import RunConfig
from windtunnel.laws import LawSet, load_laws
from windtunnel.orchestrator.tracking import ROLE, ensure_experiment, ensure_parent_run, open_client
from windtunnel.orchestrator.validation import prediction_key
from windtunnel.orchestrator.validation_report import build_summary
from windtunnel.predict import laws_sha256, point_from_model, predict_loss, record_prediction

EXPERIMENT = "vstudy"
SEEDS = (0, 1, 2)
TARGET_LOSSES = (2.41, 2.43, 2.46)
TARGET_TOKENS = 100_000
LAWS = {
    "frontier": {
        "form": "",
        "coefficients": {"E": 1.5, "A": 60.0, "alpha": 0.1},
        "samples": {
            "E": [1.45, 1.5, 1.55, 1.5],
            "A": [55.0, 60.0, 65.0, 62.0],
            "alpha": [0.1, 0.1, 0.1, 0.1],
        },
        "backtest": {"mean_rel_err": 0.02},
    },
    "parametric": {
        "form": "",
        "coefficients": {"E": 1.8, "A": 40.0, "B": 60.0, "alpha": 0.3, "beta": 0.3},
        "backtest": {"mean_rel_err": 0.05},
    },
    "m_opt": {"form": "", "coefficients": {"a": 0.3, "b": 0.5}},
    "params_opt": {"form": "", "coefficients": {"a": 0.05, "b": 0.5}},
}


def _target_cfg(seed: int, tokens: int = TARGET_TOKENS) -> RunConfig:
    model = dict(
        vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=8, d_ffn=32, seq_len=16
    )
    return RunConfig.from_dict({"model": model, "optim": {"tokens": tokens}, "seed": seed})


def _trial(
    client, exp_id: str, parent: str, study: str, rt: dict, cfg: RunConfig | None = None, **tags
) -> str:
    """A finished trial as the orchestrator logs it: role/status/study tags, ``rt.*`` metrics."""
    h = cfg.config_hash() if cfg is not None else f"{study}-{len(rt)}-{rt['compute']:.6g}-{rt['params']:.6g}"
    base = {"mlflow.parentRunId": parent, ROLE: "trial", "status": "finished", "study": study}
    base |= {"sweep": EXPERIMENT, "family": "dense", "config_hash": h, "trial_key": h, **tags}
    run = client.create_run(exp_id, tags=base)
    rid = run.info.run_id
    params = [Param("seed", str(cfg.seed)), Param("optim.tokens", str(cfg.optim.tokens))] if cfg else []
    metrics = [Metric(f"rt.{k}", float(v), 0, 0) for k, v in rt.items()]
    client.log_batch(
        rid, metrics=metrics, params=params, tags=[RunTag("status", tags.get("status", "finished"))]
    )
    client.set_terminated(rid, "FINISHED")
    return rid


def _ladder(client, exp_id: str, parent: str) -> None:
    rng = np.random.default_rng(0)
    for C in (2e7, 6e7, 2e8):
        for n in (300.0, 1000.0, 3000.0):
            loss = 1.5 + 60.0 * C**-0.1 + 0.05 * np.log(n / 1000) ** 2 + 0.005 * rng.standard_normal()
            rt = dict(params=n, n_total=n + 500, n_active=n + 500, m=6 * n, tokens=C / (6 * n), compute=C)
            _trial(client, exp_id, parent, "ladder", {**rt, "loss": loss})
    rt = dict(params=500.0, n_total=1000.0, n_active=1000.0, m=3000.0, tokens=1e5, compute=3e8, loss=9.0)
    _trial(client, exp_id, parent, "ladder", rt, status="failed")  # not part of the ladder's compute


def _targets(client, exp_id: str, parent: str) -> list[RunConfig]:
    cfgs = [_target_cfg(s) for s in SEEDS]
    for cfg, loss in zip(cfgs, TARGET_LOSSES, strict=True):
        point = point_from_model(cfg.model, cfg.optim.tokens)
        # the trainer trains whole batches: D is rounded down to a multiple of the batch's tokens
        batch = cfg.optim.batch_size * cfg.model.seq_len
        trained = point["tokens"] // batch * batch
        assert trained != point["tokens"]
        rt = dict(params=point["params"], m=point["m"], tokens=trained, compute=point["m"] * trained)
        rt["batch_tokens"] = float(batch)
        _trial(
            client, exp_id, parent, "target", {**rt, "n_total": 3000.0, "n_active": 3000.0, "loss": loss}, cfg
        )
    other = _target_cfg(0, 2 * TARGET_TOKENS)  # a target of another configuration (a changed sweep)
    rt = dict(params=2624.0, n_total=3000.0, n_active=3000.0, m=18432.0, tokens=2 * TARGET_TOKENS, loss=2.2)
    _trial(client, exp_id, parent, "target", {**rt, "compute": 18432.0 * 2 * TARGET_TOKENS}, other)
    return cfgs


def build_store(root: Path, record_after_target: bool = False) -> dict:
    """The store a validation sweep leaves: parent + laws.json, ladder, prediction, then the target runs."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_client(uri)
    exp_id = ensure_experiment(client, EXPERIMENT)
    parent = ensure_parent_run(client, exp_id, EXPERIMENT, {})
    laws_path = root / "laws.json"
    laws_path.write_text(json.dumps({"laws": LAWS}, indent=1))
    client.log_artifact(parent, str(laws_path))
    _ladder(client, exp_id, parent)
    lawset = load_laws(str(laws_path))
    cfg0 = _target_cfg(SEEDS[0])
    point = point_from_model(cfg0.model, cfg0.optim.tokens)
    pred = predict_loss(lawset, point, sha=laws_sha256(laws_path, lawset))

    def record():
        return record_prediction(uri, EXPERIMENT, prediction_key(cfg0), pred, parent)[1]

    pred = record() if not record_after_target else pred
    cfgs = _targets(client, exp_id, parent)
    pred = record() if record_after_target else pred
    return {"uri": uri, "laws": str(laws_path), "prediction": pred, "cfgs": cfgs}


@pytest.fixture(scope="module")
def vstore(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_store(tmp_path_factory.mktemp("vstudy"))


def test_study_numbers_are_the_sweeps_summary(vstore: dict) -> None:
    from windtunnel.orchestrator.tracking import runs_from_mlflow

    data = load_sweeps(vstore["uri"], EXPERIMENT)
    assert len(data.predictions) == 1 and len(data.runs) == 9 + 1 + 4  # the prediction is not a trial
    study = load_study(data, vstore["uri"])
    assert study is not None and study.prediction.to_dict() == vstore["prediction"].to_dict()
    assert study.prediction.law == "frontier"  # the smaller backtest error
    assert len(study.ladder) == 9 and len(study.target) == 3 and study.other_target_runs == 1
    s = study.stats()
    pred = vstore["prediction"]
    summary = build_summary(
        runs_from_mlflow(vstore["uri"], EXPERIMENT), pred, vstore["cfgs"], pred.x["compute"]
    )
    assert s["predicted"] == summary["predicted_loss"] and s["pi95"] == summary["pi95"]
    assert s["observed"] == pytest.approx(summary["observed_loss"]) == pytest.approx(np.mean(TARGET_LOSSES))
    assert (
        s["seed_std"]
        == pytest.approx(summary["seed_noise_std"])
        == pytest.approx(np.std(TARGET_LOSSES, ddof=1))
    )
    assert s["abs_error"] == pytest.approx(abs(summary["error"]))
    for key in ("extrapolation_factor", "ladder_compute", "ladder_share"):
        assert s[key] == pytest.approx(summary[key]), key
    assert s["extrapolation_factor"] == pytest.approx(pred.x["compute"] / 2e8)
    assert s["recorded_before_target"] is True
    assert "the file that made the prediction" in study.laws_note


def test_panel_draws_the_study_and_its_table(vstore: dict) -> None:
    study = load_study(load_sweeps(vstore["uri"], EXPERIMENT), vstore["uri"])
    fig = validation_figure(study)
    names = [t.name for t in fig.data]
    assert names == [
        "ladder runs",
        "frontier 95% band",
        "frontier law (predicts)",
        "parametric law",
        "prediction (frontier), 95% interval",
        "observed target (per seed)",
        "observed mean ± seed std",
        None,  # the table
    ]
    pred = vstore["prediction"]
    diamond = fig.data[4]
    assert diamond.y[0] == pred.predicted and diamond.y[0] + diamond.error_y.array[0] == pytest.approx(
        pred.pi95[1]
    )
    assert sorted(fig.data[5].y) == pytest.approx(sorted(TARGET_LOSSES))
    band = fig.data[1]
    assert max(band.y) > max(fig.data[2].y)  # the band is drawn around the law (a real interval)
    table = dict(zip(study.table()["item"], study.table()["value"], strict=True))
    assert table["predicted"] == f"{pred.predicted:.4f}"
    assert table["observed (mean ± seed std)"].startswith(f"{np.mean(TARGET_LOSSES):.4f} ± 0.0252")
    assert "3 of 3 seeds finished" in table["observed (mean ± seed std)"]
    assert table["extrapolation factor"].startswith(f"{pred.x['compute'] / 2e8:.1f}x")
    assert "before the first target run started" in table["recorded"]
    assert list(fig.data[-1].cells.values[1]) == list(study.table()["value"])
    # the dashboard's tab draws the same panel, without a law file of its own
    figs = build_figures(
        vstore["uri"], EXPERIMENT, LawSet(name="none"), None, None, 1e24, graphs=["validation"]
    )
    assert [t.name for t in figs["validation"].data] == names


def test_a_prediction_recorded_after_the_target_started_is_flagged(tmp_path: Path) -> None:
    store = build_store(tmp_path, record_after_target=True)
    study = load_study(load_sweeps(store["uri"], EXPERIMENT), store["uri"])
    assert study.stats()["recorded_before_target"] is False
    assert "AFTER the first target run started" in dict(study.table().values)["recorded"]


def test_report_holds_the_validation_section(vstore: dict, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = write_report(vstore["uri"], EXPERIMENT, tmp_path / "rep", vstore["laws"], 1e12)
    html = out["html"].read_text()
    assert "Validation study: predicted before training vs observed" in html
    assert html.count('class="plotly-graph-div"') == 10 and "validation-table" in html
    assert (tmp_path / "rep" / "figures" / "validation.png").read_bytes()[:4] == b"\x89PNG"


STORE_ENV = "WT_VALIDATION_STORE"  # an MLflow SQLite file of a real validation sweep (read from a copy)


@pytest.mark.skipif(
    not os.environ.get(STORE_ENV), reason=f"set {STORE_ENV} to a validation sweep's mlflow.db"
)
def test_real_validation_store(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    shutil.copy(os.environ[STORE_ENV], db)
    uri = f"sqlite:///{db}"
    from dashboards.data import list_experiments

    studies = [load_study(load_sweeps(uri, e), uri) for e in list_experiments(uri)]
    study = next(s for s in studies if s is not None)
    s = study.stats()
    assert s["extrapolation_factor"] > 1 and 0 < s["ladder_share"] and s["pi95"][0] <= s["predicted"]
    assert study.laws is not None and len(validation_figure(study).data) >= 4
