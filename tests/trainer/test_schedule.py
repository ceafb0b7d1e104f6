"""Schedule shapes and WSM merge weights (trainer/schedule.py)."""

from __future__ import annotations

import math

import pytest

from trainer.config import RunConfig
from trainer.schedule import (
    LRSchedule,
    checkpoint_interval,
    decay_shape_weights,
    merge_checkpoint_steps,
    merge_weights,
    merge_weights_from_decay,
)


def _cfg(kind: str, **sched) -> RunConfig:
    # 100 steps: tokens = 100 * batch_size * seq_len
    return RunConfig.from_dict(
        {
            "model": {"seq_len": 16},
            "optim": {"lr": 1e-2, "batch_size": 2, "tokens": 100 * 32, "min_lr_ratio": 0.1},
            "schedule": {"kind": kind, "warmup_fraction": 0.1, **sched},
        }
    )


def test_warmup_is_linear_and_reaches_peak() -> None:
    s = LRSchedule.from_config(_cfg("wsm"))
    assert s.total_steps == 100 and s.warmup_steps == 10
    assert s(0) == pytest.approx(1e-3)
    assert s(4) == pytest.approx(5e-3)
    assert s(9) == pytest.approx(1e-2)
    assert all(s(t) == pytest.approx(1e-2) for t in range(10, 100))  # WSM: constant after warmup


def test_wsd_linear_and_1sqrt_decay() -> None:
    lin = LRSchedule.from_config(_cfg("wsd", decay_fraction=0.2))
    sq = LRSchedule.from_config(_cfg("wsd", decay_fraction=0.2, decay_shape="1-sqrt"))
    assert lin.decay_steps == 20
    assert lin(79) == pytest.approx(1e-2)  # still stable
    # halfway through the decay: x = (89 - 80 + 1)/20 = 0.5
    assert lin(89) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))
    assert sq(89) == pytest.approx(1e-2 * (0.1 + 0.9 * (1 - math.sqrt(0.5))))
    assert lin(99) == pytest.approx(1e-3) and sq(99) == pytest.approx(1e-3)  # ends at min_lr_ratio * peak
    decay = [lin(t) for t in range(80, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert all(sq(t) < lin(t) for t in range(80, 99))  # 1-sqrt drops faster early


def test_cosine_shape() -> None:
    s = LRSchedule.from_config(_cfg("cosine"))
    assert s(9) == pytest.approx(1e-2)
    mid = 10 + 45 - 1  # x = 0.5
    assert s(mid) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))
    assert s(99) == pytest.approx(1e-3)
    vals = [s(t) for t in range(10, 100)]
    assert all(a > b for a, b in zip(vals, vals[1:], strict=False))


def test_constant() -> None:
    s = LRSchedule.from_config(_cfg("constant", warmup_fraction=0.0))
    assert {s(t) for t in range(100)} == {1e-2}


def test_merge_weights_from_decay_hand_computed() -> None:
    w = [0.75, 0.5, 0.25]
    c = merge_weights_from_decay(w)
    assert c == pytest.approx([0.25, 0.25, 0.25, 0.25])
    c2 = merge_weights_from_decay([0.9, 0.4])
    assert c2 == pytest.approx([0.1, 0.5, 0.4])
    # w_i = sum_{j >= i} c_j recovers the decay
    assert [sum(c2[i:]) for i in (1, 2)] == pytest.approx([0.9, 0.4])
    with pytest.raises(ValueError):
        merge_weights_from_decay([0.2, 0.5])  # not non-increasing


@pytest.mark.parametrize("shape", ["mean", "linear", "1-sqrt", "ema"])
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_merge_weights_sum_to_one_and_nonnegative(shape: str, n: int) -> None:
    c = merge_weights(n, shape, ema_decay=0.8)  # type: ignore[arg-type]
    assert len(c) == n
    assert sum(c) == pytest.approx(1.0)
    assert min(c) >= -1e-12


def test_mean_merge_is_linear_decay() -> None:
    for n in (2, 4, 8):
        assert merge_weights(n, "mean") == pytest.approx(merge_weights(n, "linear"))
        k = n - 1
        assert decay_shape_weights(k, "linear") == pytest.approx([1 - i / n for i in range(1, n)])


def test_shape_1sqrt_and_ema() -> None:
    # 1-sqrt decays faster than linear at every point: w_i = 1 - sqrt(i/(k+1)) < 1 - i/(k+1).
    k = 7
    w_sqrt, w_lin = decay_shape_weights(k, "1-sqrt"), decay_shape_weights(k, "mean")
    assert all(a < b for a, b in zip(w_sqrt, w_lin, strict=True))
    # EMA implied decay w_i = 1 - beta^(k-i+1)
    assert decay_shape_weights(2, "ema", ema_decay=0.5) == pytest.approx([0.75, 0.5])
    c = merge_weights(3, "ema", ema_decay=0.5)
    assert c == pytest.approx([0.25, 0.25, 0.5])  # beta^2, beta(1-beta), (1-beta)


def test_checkpoint_interval_and_steps() -> None:
    assert checkpoint_interval(1000, 8) == 25  # 8 checkpoints over the last ~20%
    assert checkpoint_interval(1000, 8, interval=7) == 7
    assert checkpoint_interval(10, 8) == 1
    steps = merge_checkpoint_steps(1000, 8, 25)
    assert steps == [825, 850, 875, 900, 925, 950, 975, 1000]
    assert merge_checkpoint_steps(5, 8, 1) == [1, 2, 3, 4, 5]


# ---- warmup given in updates (schedule.warmup_steps) ---------------------------------------------------


def test_warmup_steps_replace_the_fraction_and_are_the_same_for_any_run_length() -> None:
    s = LRSchedule.from_config(_cfg("wsm", warmup_steps=7))  # warmup_fraction 0.1 would give 10
    assert s.warmup_steps == 7
    assert s(0) == pytest.approx(1e-2 / 7) and s(3) == pytest.approx(1e-2 * 4 / 7)
    assert s(6) == pytest.approx(1e-2) and s(7) == pytest.approx(1e-2)
    # a run of a quarter of the updates keeps 7 warmup updates; with the fraction it would get round(2.5)
    short = _cfg("wsm", warmup_steps=7).with_overrides({"optim.tokens": 25 * 32})
    assert short.steps == 25 and LRSchedule.from_config(short).warmup_steps == 7
    frac = _cfg("wsm").with_overrides({"optim.tokens": 25 * 32})
    assert LRSchedule.from_config(frac).warmup_steps == 2
    wsd = LRSchedule.from_config(_cfg("wsd", warmup_steps=7, decay_fraction=0.2))
    assert (wsd.warmup_steps, wsd.decay_steps) == (7, 20) and wsd(79) == pytest.approx(1e-2)
    assert wsd(89) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))  # the decay is unchanged by the warmup


def test_warmup_fraction_path_is_unchanged_when_warmup_steps_is_unset() -> None:
    cfg = _cfg("cosine")
    assert cfg.schedule.warmup_steps is None
    assert "warmup_steps" not in cfg.model_dump()["schedule"]  # unset: dumps and config hashes as before
    s = LRSchedule.from_config(cfg)
    assert s.warmup_steps == 10 and s(4) == pytest.approx(5e-3)
    assert _cfg("cosine", warmup_steps=10).config_hash() != cfg.config_hash()
    # the fraction is clamped below T; a run of 1 update has no warmup
    one = _cfg("wsm", warmup_fraction=0.9).with_overrides({"optim.tokens": 32})
    assert LRSchedule.from_config(one).warmup_steps == 0


@pytest.mark.parametrize(
    ("w", "message"), [(-1, "greater than or equal to 0"), (100, "not below this run's 100 updates")]
)
def test_bad_warmup_steps_are_refused_naming_the_field(w: int, message: str) -> None:
    from trainer.config import ConfigError

    with pytest.raises(ConfigError) as err:
        _cfg("wsm", warmup_steps=w)
    assert "schedule.warmup_steps" in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)
    assert LRSchedule.from_config(_cfg("wsm", warmup_steps=99)).warmup_steps == 99  # W = T - 1 is allowed


def test_megatron_export_takes_the_same_warmup() -> None:
    from windtunnel.recommend.export import megatron_argv

    for cfg in (_cfg("wsm"), _cfg("wsm", warmup_steps=7)):
        argv = megatron_argv(cfg)
        warm = argv[argv.index("--lr-warmup-iters") + 1]
        assert int(warm) == LRSchedule.from_config(cfg).warmup_steps
