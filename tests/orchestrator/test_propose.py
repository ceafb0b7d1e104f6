"""``adaptive:`` block validation (one-line errors naming the field) and ``propose`` on a run table of real
trainer shapes whose losses follow a known law: proposals the trainer accepts, an expected interval that
narrows, and a sweep fragment the orchestrator expands into exactly those runs."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml
from micro_spec import MICRO_DATA, law_runs, micro_base

from trainer.config import RunConfig
from trainer.flops import count_params
from windtunnel.errors import SpecError
from windtunnel.orchestrator.propose import propose, sweep_fragment
from windtunnel.orchestrator.spec import expand, parse_spec

LADDER = {"budgets": [1.0e9], "rule": {"n_sizes": 3, "d_model_min": 16, "d_model_max": 48, "head_dim": 8}}


def _spec(**extra) -> dict:
    spec = {
        "name": "adaptive_spec",
        "data": dict(MICRO_DATA),
        "base": micro_base(40_000),
        "studies": [{"name": "ladder", "ladder": LADDER}],
    }
    spec.update(extra)
    return spec


def test_adaptive_block_parses():
    spec = parse_spec(_spec(adaptive={"target": 1e11, "rounds": 2, "k": 3, "stop_at_pi_width": 0.05}))
    assert spec.adaptive.rounds == 2 and spec.adaptive.k == 3 and spec.adaptive.budget is None
    assert spec.adaptive.points is None
    pts = {"at_fractions": [0.25, 0.5, 1.0], "mode": "wsd"}
    spec = parse_spec(_spec(adaptive={"target": 1e11, "rounds": 2, "points": pts}))
    assert spec.adaptive.points.at_fractions == [0.25, 0.5, 1.0] and spec.adaptive.points.mode == "wsd"


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ({"target": 1e11, "rounds": 0}, "adaptive.rounds: Input should be greater than or equal to 1"),
        ({"target": -1.0, "rounds": 1}, "adaptive.target: Input should be greater than 0"),
        ({"rounds": 1}, "adaptive.target: Field required"),
        ({"target": 1e11, "rounds": 1, "k": 0}, "adaptive.k: Input should be greater than or equal to 1"),
        ({"target": 1e11, "rounds": 1, "stop_at_pi_width": 0}, "adaptive.stop_at_pi_width: Input should be"),
        ({"target": 1e11, "rounds": 1, "budget": ".inf"}, "adaptive.budget: must be a finite number"),
        ({"target": 1e11, "rounds": 1, "round": 2}, "adaptive.round: unknown field"),
        (
            {"target": 1e11, "rounds": 1, "points": {"at_fractions": [0.5, 0.25]}},
            "adaptive.points.at_fractions: must be ascending",
        ),
        (
            {"target": 1e11, "rounds": 1, "points": {"at_fractions": [0.5], "mode": "cosine"}},
            "adaptive.points.mode: Input should be 'wsm' or 'wsd'",
        ),
    ],
)
def test_adaptive_block_errors_are_one_line(block, needle):
    if block.get("budget") == ".inf":
        block = {**block, "budget": float("inf")}
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(adaptive=block))
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_reserved_study_prefix():
    data = _spec(adaptive={"target": 1e11, "rounds": 1})
    data["studies"][0]["name"] = "adaptive_r1"
    with pytest.raises(SpecError, match="reserved for adaptive rounds"):
        parse_spec(data)


def test_cli_refuses_bad_arguments_in_one_line():
    cmd = [sys.executable, "-m", "windtunnel", "propose", "--experiment", "x", "--target", "-5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "windtunnel propose: error: --target must be a positive finite compute in FLOPs, got -5.0"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--points", "0.5,0.25"], "--points 0.5,0.25: must be ascending, got [0.5, 0.25]"),
        (["--points", "0.5,x"], "--points 0.5,x: not a comma-separated list of numbers"),
        (["--points", "0,1"], "--points 0,1: 0.0 is outside (0, 1]"),
        (["--points-mode", "wsd"], "--points-mode needs --points (the token fractions of each run's points)"),
        (["--lr-factors", "1,-2"], "--lr-factors 1,-2: not a comma-separated list of positive numbers"),
        (["--block-sizes", "0"], "--block-sizes must be >= 1, got 0"),
        (
            ["--law", "frontier", "--points", "0.5,1"],
            "--points: the frontier design adds whole budgets, not points of one run (use --law parametric)",
        ),
    ],
)
def test_cli_refuses_bad_points_in_one_line(extra: list[str], message: str):
    cmd = [sys.executable, "-m", "windtunnel", "propose", "--experiment", "x", "--target", "1e12", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"windtunnel propose: error: {message}"


def _law_runs(base: RunConfig) -> pd.DataFrame:
    """Runs of the micro rule's shapes at 3 IsoFLOP budgets; L = E + A/N^alpha + B/D^beta, 0.3 % noise."""
    return law_runs(base, (3e3, 3e4), (2e9, 6e9, 2e10))


def test_propose_gives_runnable_runs_that_narrow_the_interval():
    base = RunConfig.from_dict({**micro_base(40_000), "data": MICRO_DATA})
    runs = _law_runs(base)
    ps = propose(runs, base, target_compute=2e11, k=2, bootstrap=20, seed=0)
    assert len(ps.proposals) == 2
    assert ps.width_after < ps.width_before
    widths = [p.width_after for p in ps.proposals]
    assert widths == sorted(widths, reverse=True)  # each pick narrows it further
    for p in ps.proposals:
        assert p.params == pytest.approx(count_params(p.cfg.model).active_nonembed)
        assert p.cfg.optim.tokens == p.tokens and p.tokens % base.batch_tokens == 0
        assert p.cfg.optim.lr == base.optim.lr  # no identified lr_opt law: the base's lr
    assert any("base values" in n for n in ps.notes)
    # the fragment is a studies block the orchestrator expands into exactly these runs
    frag = yaml.safe_load(yaml.safe_dump(sweep_fragment(ps)))
    spec = parse_spec({"name": "next", "data": dict(MICRO_DATA), "base": micro_base(40_000), **frag})
    trials = expand(spec).trials
    want = {(p.cfg.model.d_model, p.tokens) for p in ps.proposals}
    assert {(t.run_cfg.model.d_model, t.run_cfg.optim.tokens) for t in trials} == want
    assert {t.run_cfg.config_hash() for t in trials} == {p.cfg.config_hash() for p in ps.proposals}


@pytest.mark.parametrize("mode", ["wsm", "wsd"])
def test_propose_with_points_gives_runs_with_points_and_their_rows(mode: str):
    """With ``points`` the design may propose runs that give several rows: a proposal with points carries the
    points' mode as its schedule, the tokens of each row the trainer will report (D_k plus its branch), a
    cost with its WSD branches, and overrides that rebuild exactly it from the base."""
    from trainer.config import PointsConfig
    from trainer.points import extra_tokens, point_specs
    from windtunnel.orchestrator.expand import trial_flops
    from windtunnel.orchestrator.propose import proposal_overrides

    base = RunConfig.from_dict({**micro_base(40_000), "data": MICRO_DATA})
    pts = PointsConfig(at_fractions=[0.25, 0.5, 1.0], mode=mode)
    runs = _law_runs(base)
    ps = propose(runs, base, target_compute=2e11, k=3, bootstrap=20, seed=0, points=pts)
    assert len(ps.proposals) == 3 and ps.width_after < ps.width_before
    with_pts = [p for p in ps.proposals if p.cfg.points is not None]
    assert with_pts, "a run with points informs more per FLOP than the same run without: some are chosen"
    assert any("with points at [0.25, 0.5, 1.0]" in n for n in ps.notes)
    for p in with_pts:
        assert p.cfg.schedule.kind == mode and p.cfg.points == pts
        B = p.cfg.batch_tokens
        assert p.point_tokens == tuple((s.step + s.branch_steps) * B for s in point_specs(p.cfg))
        assert p.point_tokens[-1] == p.tokens and len(p.point_tokens) == 3
        assert min(p.point_tokens) >= 0.98 * runs["tokens"].min()  # no point below the runs' smallest D
        assert p.flops == pytest.approx(trial_flops(p.cfg))
        assert (extra_tokens(p.cfg) > 0) == (mode == "wsd")
        rebuilt = base.with_overrides(proposal_overrides(p))
        assert rebuilt.config_hash() == p.cfg.config_hash()
    for p in ps.proposals:
        if p.cfg.points is None:
            assert p.point_tokens == () and p.cfg.schedule.kind == base.schedule.kind
