"""The ``target:`` block: validation, sizing the target from an allocation law, the committed validation
sweeps (expand, dry run, CPU-sized), and the seed-noise statistic."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
from micro_spec import MICRO_MODEL

from trainer.flops import flops_per_token
from windtunnel.cli import main as cli_main
from windtunnel.laws import LawSet
from windtunnel.orchestrator.expand import trial_flops
from windtunnel.orchestrator.seednoise import seed_noise
from windtunnel.orchestrator.spec import SpecError, load_and_expand, parse_spec
from windtunnel.orchestrator.validation import check_target, plan_target

ROOT = Path(__file__).resolve().parents[2]
RULE = {"n_sizes": 3, "d_model_min": 16, "d_model_max": 64, "head_dim": 8, "aspect_ratio": 48}
SPEC = {
    "name": "v",
    "base": {"device": "cpu", "model": dict(MICRO_MODEL), "optim": {"lr": 3e-3, "batch_size": 8}},
    "studies": [{"name": "iso", "ladder": {"budgets": [1e9, 1e10], "rule": RULE}}],
    "target": {"extrapolation": 30, "seeds": 3},
}


def _spec(**target: object) -> dict:
    d = copy.deepcopy(SPEC)
    d["target"] = {**d["target"], **target}
    return d


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({"compute": 1e12}, "target: Value error, give exactly one of compute or extrapolation"),
        ({"seeds": 0}, "target.seeds: must be >= 1"),
        ({"extrapolation": 0.5}, "target.extrapolation: Input should be greater than 1"),
        ({"law": "leverage"}, "target.law: Input should be 'auto', 'parametric' or 'frontier'"),
        ({"predict": True}, "target.predict: unknown field"),
    ],
)
def test_bad_target_names_the_field(target: dict, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(**target))
    assert str(info.value).startswith(expected.replace("Value error, ", "")), str(info.value)


def test_target_checks_before_the_ladder_runs() -> None:
    d = _spec()
    d["fit"] = {"laws": ["parametric"]}
    with pytest.raises(SpecError, match="fit.laws: a target needs the m_opt"):
        check_target(parse_spec(d))
    d = _spec()
    d["studies"] = [{"name": "g", "grid": {"optim.lr": [1e-3]}}]
    with pytest.raises(SpecError, match="target: needs a ladder study"):
        check_target(parse_spec(d))
    with pytest.raises(SpecError, match="target.model: "):
        check_target(parse_spec(_spec(model={"d_model": 30, "n_heads": 4})))
    check_target(parse_spec(_spec()))  # the good one passes


def test_target_sized_from_the_m_opt_law() -> None:
    a, b = 0.5, 0.5  # M_opt = a C^b
    lawset = LawSet.from_dict({"laws": {"m_opt": {"form": "a*C^b", "coefficients": {"a": a, "b": b}}}})
    spec = parse_spec(_spec())
    cfgs, c, notes = plan_target(spec, lawset)
    assert c == 30 * 1e10
    m_opt = a * c**b
    m = flops_per_token(cfgs[0].model)
    # the rule's closest size: its neighbours (one head more or less) are further from M_opt in log
    d, hd = cfgs[0].model.d_model, RULE["head_dim"]
    for other in (d - hd, d + hd):
        alt = cfgs[0].with_overrides(
            {
                "model.d_model": other,
                "model.n_heads": other // hd,
                "model.n_kv_heads": other // hd,
                "model.n_layers": max(1, round(other / RULE["aspect_ratio"])),
                "model.d_ffn": max(8, round(2.75 * other / 8) * 8),
            }
        )
        assert abs(math.log(flops_per_token(alt.model) / m_opt)) >= abs(math.log(m / m_opt))
    assert all(cfg.optim.tokens == int(c / m) for cfg in cfgs)
    assert [cfg.seed for cfg in cfgs] == [0, 1, 2] and len({cfg.config_hash() for cfg in cfgs}) == 3
    assert "from m_opt" in notes[0]


@pytest.mark.parametrize(
    "name",
    [
        "windtunnel_validation_cpu",
        "windtunnel_validation_cpu_1layer",
        "windtunnel_validation_cpu_lr",
        "windtunnel_validation",
    ],
)
def test_validation_sweeps_expand_and_dry_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "experiments" / f"{name}.yaml"
    assert cli_main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trials" in out
    spec, plan = load_and_expand(path)
    # the dry run describes the validation phase after the ladder, at its compute
    assert f"then target: C = {spec.target.target_compute(max(t.budget for t in plan.trials)):.3g}" in out
    check_target(spec)
    assert spec.target is not None and spec.target.extrapolation >= 30 and len(spec.target.seeds) >= 3
    budgets = sorted({t.budget for t in plan.trials})
    assert budgets[-1] / budgets[0] >= 100  # the ladder spans two decades of compute
    if "_cpu" in name:
        # CPU-sized: the ladder (with the output head, the driver's cost) and 3 target runs of C_target
        # (+ at most 25 % for the head at the target's size) stay within ~75 minutes on 2 cores at the
        # trainer's ~1.2e10 FLOP/s per thread measured on 2026-12-06
        ladder = sum(trial_flops(t.run_cfg) for t in plan.trials)
        target = len(spec.target.seeds) * 1.25 * spec.target.target_compute(budgets[-1])
        assert ladder + target <= 75 * 60 * 2 * 1.2e10, (ladder, target)


def test_seed_noise_pools_groups_with_two_or_more_seeds() -> None:
    groups = {
        "a": [(0, 3.0), (1, 3.2)],  # std 0.1414
        "b": [(0, 2.0), (1, 2.0), (2, 2.0)],  # std 0
        "c": [(0, 5.0)],  # one seed: not counted
    }
    pooled, stds = seed_noise(groups)
    assert stds == pytest.approx([math.sqrt(0.02), 0.0])
    assert pooled == pytest.approx(math.sqrt((0.02 + 0.0) / 2))
    assert seed_noise({"c": [(0, 5.0)]}) == (None, [])
