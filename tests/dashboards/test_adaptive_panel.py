"""The adaptive-design panel on a real MLflow SQLite store written by the adaptive loop's own writers:
round runs by ``adaptive.record_round``, the rounds' trials tagged by ``trial.trial_tags`` from
``resume.trial_item`` items (as ``adaptive.round_items`` builds them), their ``rt.*`` row by
``trial.run_table_row``; the width metric under ``adaptive.WIDTH_METRIC`` on the round run and on the
parent at step r (as ``adaptive.finish_round`` logs it)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param, RunTag

from dashboards.adaptive_panel import adaptive_figure, load_rounds
from dashboards.data import load_sweeps
from dashboards.report import write_report
from dashboards.views import GRAPHS, TABS, build_figures
from trainer.config import RunConfig
from windtunnel.laws import LawSet
from windtunnel.orchestrator.adaptive import WIDTH_METRIC, record_round
from windtunnel.orchestrator.propose import Proposal, ProposalSet
from windtunnel.orchestrator.resume import trial_item
from windtunnel.orchestrator.spec_adaptive import ADAPTIVE_PREFIX
from windtunnel.orchestrator.tracking import (
    ROLE,
    RT_PREFIX,
    ensure_experiment,
    ensure_parent_run,
    open_client,
)
from windtunnel.orchestrator.trial import run_table_row, trial_tags

EXPERIMENT = "adaptive_panel"
TARGET_C = 6.0e9
# round r: (d_model, tokens) of its proposals, the design's width before / expected after, the measured width
ROUNDS = {
    1: ([(16, 40_000), (32, 30_000)], 0.30, 0.18, 0.21),
    2: ([(32, 60_000)], 0.21, 0.15, 0.16),
}
LADDER = [(16, 20_000), (24, 20_000), (32, 20_000)]


def _cfg(d_model: int, tokens: int, seed: int = 0) -> RunConfig:
    model = dict(
        vocab_size=64, d_model=d_model, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=8, d_ffn=2 * d_model
    )
    return RunConfig.from_dict({"model": {**model, "seq_len": 16}, "optim": {"tokens": tokens}, "seed": seed})


def _trial(client, exp_id: str, parent: str, cfg: RunConfig, item: dict, loss: float, status: str) -> dict:
    """A trial run as ``execute_trial`` leaves it: its tags, its run-table row as ``rt.*`` metrics."""
    tags = trial_tags(cfg, item, {"sweep": EXPERIMENT})
    tags |= {"mlflow.parentRunId": parent, ROLE: "trial", "status": status}
    run = client.create_run(exp_id, tags=tags)
    row = run_table_row(cfg, cfg.optim.tokens, loss)
    metrics = [Metric(f"{RT_PREFIX}{k}", float(v), 0, 0) for k, v in row.items()]
    client.log_batch(
        run.info.run_id, metrics=metrics, params=[Param("seed", "0")], tags=[RunTag("status", status)]
    )
    client.set_terminated(run.info.run_id, "FINISHED" if status == "finished" else "RUNNING")
    return row


def build_store(root: Path, finish_last: bool = True) -> dict:
    """A sweep with a 3-run ladder and two adaptive rounds; round 2's last width not logged unless
    ``finish_last`` (a round still training)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_client(uri)
    exp_id = ensure_experiment(client, EXPERIMENT)
    parent = ensure_parent_run(client, exp_id, EXPERIMENT, {})
    ladder = [
        _trial(client, exp_id, parent, c, trial_item(c, "ladder", "ladder", None, "m0"), 3.0, "finished")
        for c in (_cfg(d, t) for d, t in LADDER)
    ]
    added: dict[int, list[dict]] = {}
    for r, (shapes, before, expected, measured) in ROUNDS.items():
        cfgs = [_cfg(d, t, seed=r) for d, t in shapes]
        props = [
            Proposal(c, 0.0, c.optim.tokens, run_table_row(c, c.optim.tokens, 0.0)["compute"], math.nan)
            for c in cfgs
        ]
        props[-1].width_after = expected
        ps = ProposalSet(TARGET_C, 1e4, 1e6, 2.5, (2.3, 2.7), before, props)
        rec = record_round(client, exp_id, parent, r, ps)
        study = f"{ADAPTIVE_PREFIX}{r}"
        added[r] = []
        for j, c in enumerate(cfgs):
            item = {**trial_item(c, study, "adaptive", None, "m0"), "adaptive_round": r}
            last = r == max(ROUNDS) and j == len(cfgs) - 1
            status = "running" if last and not finish_last else "finished"
            added[r].append(_trial(client, exp_id, parent, c, item, 2.9 - 0.1 * r, status))
        if r == max(ROUNDS) and not finish_last:
            continue
        m = Metric(WIDTH_METRIC, measured, 0, r)
        client.log_batch(rec.info.run_id, metrics=[m])
        client.log_batch(parent, metrics=[m])
        client.set_terminated(rec.info.run_id, "FINISHED")
    return {"uri": uri, "ladder": ladder, "added": added}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_store(tmp_path_factory.mktemp("adaptive"))


def test_rounds_widths_runs_and_cumulative_compute(store: dict) -> None:
    data = load_sweeps(store["uri"], EXPERIMENT)
    # the round runs are bookkeeping, not trials: the run table holds the 3 ladder + 3 round runs
    assert len(data.runs) == len(LADDER) + sum(len(v[0]) for v in ROUNDS.values())
    rounds = load_rounds(data, store["uri"])
    assert rounds is not None
    p = rounds.per_round()
    assert p["round"].tolist() == [1, 2]
    assert p["width_before"].tolist() == [ROUNDS[1][1], ROUNDS[2][1]]
    assert p["expected_width_after"].tolist() == [ROUNDS[1][2], ROUNDS[2][2]]
    assert p["measured_width"].tolist() == [ROUNDS[1][3], ROUNDS[2][3]]
    assert p["n_runs"].tolist() == [2, 1] and p["n_proposals"].tolist() == [2, 1]
    c0 = sum(row["compute"] for row in store["ladder"])
    c1, c2 = (sum(row["compute"] for row in store["added"][r]) for r in (1, 2))
    assert rounds.initial_compute == pytest.approx(c0)
    assert p["added_flops"].tolist() == pytest.approx([c1, c2])
    assert p["cumulative_flops"].tolist() == pytest.approx([c0 + c1, c0 + c1 + c2])
    assert p["proposed_flops"].tolist() == pytest.approx([c1, c2])  # recorded at proposal time
    runs = rounds.run_table()
    assert runs["round"].tolist() == ["1", "1", "2"]
    want = sorted(f"{row['params']:.3g}/{row['tokens']:.3g}" for r in (1, 2) for row in store["added"][r])
    assert sorted(runs["N"] + "/" + runs["D"]) == want

    fig = adaptive_figure(rounds)
    measured, design, bars, cumulative, _, _ = fig.data
    assert list(measured.x) == [1, 2] and list(measured.y) == [0.21, 0.16]
    assert list(design.x) == [0, 1, None, 1, 2] and list(design.y) == [0.30, 0.18, None, 0.21, 0.15]
    assert list(bars.y) == pytest.approx([c0, c1, c2])
    assert list(cumulative.y) == pytest.approx([c0, c0 + c1, c0 + c1 + c2])


def test_round_in_progress_shows_pending(tmp_path: Path) -> None:
    info = build_store(tmp_path, finish_last=False)
    rounds = load_rounds(load_sweeps(info["uri"], EXPERIMENT), info["uri"])
    table = rounds.round_table()
    assert table["measured after"].tolist() == [f"{ROUNDS[1][3]:.4f}", "pending"]
    assert list(adaptive_figure(rounds).data[0].x) == [1]  # no measured point for the round in progress
    assert "running" in rounds.run_table()["state"].tolist()


def test_dashboard_tab_and_report(store: dict, tmp_path: Path) -> None:
    assert TABS["adaptive"] == ("Adaptive design", ["adaptive"]) and "adaptive" in GRAPHS
    figs = build_figures(store["uri"], EXPERIMENT, LawSet(), None, None, TARGET_C, graphs=["adaptive"])
    assert len(figs["adaptive"].data) == 6  # width measured, design, bars, cumulative, two tables
    laws = str(LawSet().to_json(tmp_path / "laws.json"))  # no law: the report fits nothing
    out = write_report(store["uri"], EXPERIMENT, tmp_path / "report", laws, target=TARGET_C)
    html = out["html"].read_text()
    assert "id='fig-adaptive'" in html and "adaptive-table" in html


def test_experiment_without_rounds_has_an_empty_panel(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    exp_id = ensure_experiment(client, EXPERIMENT)
    parent = ensure_parent_run(client, exp_id, EXPERIMENT, {})
    c = _cfg(16, 20_000)
    _trial(client, exp_id, parent, c, trial_item(c, "ladder", "ladder", None, "m0"), 3.0, "finished")
    assert load_rounds(load_sweeps(uri, EXPERIMENT), uri) is None
    fig = build_figures(uri, EXPERIMENT, LawSet(), None, None, TARGET_C, graphs=["adaptive"])["adaptive"]
    assert len(fig.data) == 0 and "no adaptive rounds" in fig.layout.annotations[0].text
    laws = str(LawSet().to_json(tmp_path / "laws.json"))
    out = write_report(uri, EXPERIMENT, tmp_path / "report", laws, target=TARGET_C)
    assert "fig-adaptive" not in out["html"].read_text()
