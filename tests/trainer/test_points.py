"""Points from one run (trainer/points.py): the schedule of points, their validation, and real tiny runs whose
points match independently trained runs merged/decayed at D_k."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import yaml

from trainer.config import ConfigError, RunConfig
from trainer.flops import flops_per_token
from trainer.loop import train
from trainer.points import extra_tokens, point_specs
from trainer.schedule import LRSchedule, checkpoint_interval, merge_checkpoint_steps

SEQ, BATCH = 32, 4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("wt-points-data"))


def make_cfg(
    steps: int, kind: str = "wsm", points: dict | None = None, cache: str = "", **sched: Any
) -> RunConfig:
    data: dict[str, Any] = {
        "model": {
            "vocab_size": 512,
            "d_model": 32,
            "n_layers": 1,
            "n_heads": 2,
            "n_kv_heads": 1,
            "d_ffn": 64,
            "seq_len": SEQ,
            "init_std": 0.02,
        },
        "data": {"max_corpus_bytes": 400_000, "cache_dir": cache or "/nonexistent"},
        "optim": {"lr": 3e-3, "batch_size": BATCH, "tokens": steps * BATCH * SEQ},
        "schedule": {"kind": kind, "warmup_fraction": 0.0, **sched},
        "eval_interval": 25,
        "eval_batches": 2,
        "log_interval": 10,
        "device": "cpu",
    }
    if points is not None:
        data["points"] = points
    return RunConfig.from_dict(data)


# ---- the schedule of points (no training) ------------------------------------------------------------


def test_wsm_points_merge_what_a_shorter_wsm_run_merges() -> None:
    cfg = make_cfg(400, points={"at_fractions": [0.125, 0.5, 1.0]})
    specs = point_specs(cfg)
    assert [p.step for p in specs] == [50, 200, 400]
    for p in specs:
        interval = checkpoint_interval(p.step, cfg.schedule.merge_window)
        assert p.merge_steps == tuple(merge_checkpoint_steps(p.step, cfg.schedule.merge_window, interval))
        assert p.branch_steps == 0
    assert extra_tokens(cfg) == 0


def test_wsd_branches_default_to_the_runs_decay_share() -> None:
    cfg = make_cfg(400, "wsd", {"at_fractions": [0.25, 0.5, 1.0], "mode": "wsd"}, decay_fraction=0.2)
    specs = point_specs(cfg)
    # r = d/(1-d) = 0.25: a branch is 20 % of its own tokens, as the run's final decay is
    assert [(p.step, p.branch_steps) for p in specs] == [(100, 25), (200, 50), (400, 0)]
    assert extra_tokens(cfg) == 75 * cfg.batch_tokens
    explicit = make_cfg(400, "wsd", {"at_fractions": [0.5], "mode": "wsd", "branch_fraction": 0.1})
    assert point_specs(explicit)[0].branch_steps == 20


@pytest.mark.parametrize(
    ("points", "kind", "message"),
    [
        ({"at_fractions": [0.5, 0.25]}, "wsm", "points.at_fractions: must be ascending"),
        ({"at_fractions": [0.0, 0.5]}, "wsm", "points.at_fractions: 0.0 is outside (0, 1]"),
        ({"at_fractions": [1.5]}, "wsm", "points.at_fractions: 1.5 is outside (0, 1]"),
        ({"at_fractions": [0.5, 0.5]}, "wsm", "points.at_fractions: 0.5 is repeated"),
        ({"at_fractions": []}, "wsm", "points.at_fractions"),
        ({"at_fractions": [0.5], "mode": "wsd"}, "wsm", "points.mode: wsd needs schedule.kind wsd"),
        ({"at_fractions": [0.5], "branch_fraction": 0.1}, "wsm", "points.branch_fraction: only used by"),
        ({"at_fractions": [0.001]}, "wsm", "points.at_fractions: 0.001 is less than one update"),
        ({"at_fractions": [0.5, 0.501]}, "wsm", "fall on the same update"),
        ({"at_fractions": [0.9], "mode": "wsd"}, "wsd", "points.at_fractions: 0.9 lies in the run's decay"),
    ],
)
def test_bad_points_are_refused_naming_the_field(points: dict, kind: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_cfg(100, kind, points)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_wsd_points_inside_the_warmup_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        make_cfg(100, "wsd", {"at_fractions": [0.1, 1.0], "mode": "wsd"}, warmup_steps=10)
    assert "points.at_fractions: 0.1 lies in the run's warmup (10 updates)" in str(err.value)
    make_cfg(100, "wsd", {"at_fractions": [0.11, 1.0], "mode": "wsd"}, warmup_steps=10)  # after it: fine


def test_unset_points_leave_dumps_and_hashes_alone() -> None:
    plain = make_cfg(100)
    assert "points" not in plain.model_dump()
    assert "points" not in plain.to_yaml()
    with_points = make_cfg(100, points={"at_fractions": [0.5, 1.0]})
    assert with_points.config_hash() != plain.config_hash()
    assert RunConfig.from_dict(yaml.safe_load(with_points.to_yaml())) == with_points


# ---- real tiny runs ------------------------------------------------------------------------------------


def _independent(cfg: RunConfig, steps: int, **sched: Any) -> RunConfig:
    over = {"optim.tokens": steps * cfg.batch_tokens, **{f"schedule.{k}": v for k, v in sched.items()}}
    data = cfg.model_dump(mode="json")
    data.pop("points", None)
    return RunConfig.from_dict(data).with_overrides(over)


@pytest.mark.slow
def test_wsm_points_equal_independent_wsm_runs_and_leave_the_run_alone(cache_dir: str) -> None:
    cfg = make_cfg(80, points={"at_fractions": [0.25, 0.5, 1.0]}, cache=cache_dir)
    result = train(cfg)
    assert result.status == "finished"
    assert [p["point_fraction"] for p in result.points] == [0.25, 0.5, 1.0]
    assert result.points[-1]["point_val_loss"] == result.val_loss  # f = 1 is the run's own merged model
    plain = train(_independent(cfg, 80))
    assert plain.val_loss == result.val_loss  # points change nothing on the run's own path
    for p in result.points[:-1]:
        alone = train(_independent(cfg, int(p["point_step"])))
        # no warmup: the prefix and the merged checkpoints are the same; fp64 merge of the same weights
        assert p["point_val_loss"] == pytest.approx(alone.val_loss, abs=1e-6)
        assert p["point_tokens"] == alone.tokens


@pytest.mark.slow
def test_wsd_branches_equal_independent_wsd_runs_and_count_their_flops(cache_dir: str) -> None:
    pts = {"at_fractions": [0.25, 0.5, 1.0], "mode": "wsd", "branch_fraction": 0.2}
    cfg = make_cfg(80, "wsd", pts, cache=cache_dir, decay_fraction=0.2)
    result = train(cfg)
    assert len(result.points) == 3 and result.points[-1]["point_val_loss"] == result.val_loss
    assert train(_independent(cfg, 80)).val_loss == result.val_loss  # the branches were undone
    M = flops_per_token(cfg.model)
    for p in result.points[:-1]:
        s_k, total = int(p["point_step"]), int(p["point_tokens"]) // cfg.batch_tokens
        b_k = total - s_k
        assert b_k == round(0.2 * s_k)
        alone = train(_independent(cfg, total, decay_fraction=b_k / total))
        assert p["point_val_loss"] == pytest.approx(alone.val_loss, abs=1e-6)
        assert p["point_flops"] == M * alone.tokens  # trainer.flops accounting of the point's tokens
        assert p["point_extra_flops"] == M * b_k * cfg.batch_tokens


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["wsm", "wsd"])
def test_points_with_warmup_steps_equal_independent_runs(cache_dir: str, mode: str) -> None:
    """``schedule.warmup_steps``: the parent's points and the independent runs share W = 12 warmup updates
    (a fraction would give each run its own), so a point is the independent run to float precision."""
    pts = {"at_fractions": [0.25, 0.5, 1.0], "mode": mode}
    cfg = make_cfg(80, mode, pts, cache=cache_dir, warmup_steps=12, decay_fraction=0.2)
    assert LRSchedule.from_config(cfg).warmup_steps == 12
    result = train(cfg)
    for p in result.points[:-1]:
        s_k, total = int(p["point_step"]), int(p["point_tokens"]) // cfg.batch_tokens
        sched = {"decay_fraction": (total - s_k) / total} if mode == "wsd" else {}
        alone = _independent(cfg, total, **sched)
        assert alone.schedule.warmup_steps == 12
        assert p["point_val_loss"] == pytest.approx(train(alone).val_loss, abs=1e-6)


class Crash(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["wsm", "wsd"])
def test_points_survive_a_crash_and_resume(cache_dir: str, tmp_path: Any, mode: str) -> None:
    """Killed as it reports its second point (its last checkpoint is older) and resumed: the same points."""
    cfg = make_cfg(80, mode, {"at_fractions": [0.25, 0.5, 1.0], "mode": mode}, cache=cache_dir)
    full = train(cfg, workdir=tmp_path / "full")

    def crash_at_40(step: int, metrics: dict[str, float]) -> None:
        if step == 40:
            raise Crash("simulated kill")

    with pytest.warns(UserWarning, match="training failed"):
        assert train(cfg, report=crash_at_40, workdir=tmp_path / "resumed").status == "failed"
    resumed = train(cfg, workdir=tmp_path / "resumed")
    assert resumed.resumed_from == 25  # the point at update 20 came back with the checkpoint's history
    assert [p["point_step"] for p in resumed.points] == [20.0, 40.0, 80.0]
    for a, b in zip(full.points, resumed.points, strict=True):
        assert a["point_val_loss"] == pytest.approx(b["point_val_loss"], abs=1e-6)
