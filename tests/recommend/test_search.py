"""Unit tests of the recommender's own logic: parsing, expert shapes, the architecture search, exports."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trainer.config import RunConfig
from trainer.flops import activation_ratio, count_params, flops_per_token, granularity
from windtunnel.recommend.export import hf_config, megatron_argv, megatron_text
from windtunnel.recommend.layout import round_batch
from windtunnel.recommend.scale import scale_down
from windtunnel.recommend.search import (
    build_model,
    enumerate_candidates,
    expert_shape,
    kv_heads,
    width_grid,
)
from windtunnel.recommend.targets import Constraints, Target, parse_count

MODELS = Path(__file__).resolve().parents[2] / "experiments" / "models"


@pytest.mark.parametrize(
    "text,value",
    [
        ("1T", 1e12),
        ("200B", 2e11),
        ("1e12", 1e12),
        ("16.26b", 16.26e9),
        ("2.5M", 2.5e6),
        (7, 7.0),
        ("20t", 2e13),
    ],
)
def test_parse_count(text, value):
    assert parse_count(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["", "1X", "T", "-1T", "0"])
def test_parse_count_rejects(bad):
    with pytest.raises(ValueError):
        parse_count(bad)


def test_target_needs_exactly_one_kind():
    with pytest.raises(ValueError):
        Target()
    with pytest.raises(ValueError):
        Target(compute=1e24, total_params=1e12)
    with pytest.raises(ValueError):
        Target(model_path="x.yaml")  # no tokens
    assert Target(compute=1e24).kind == "compute"


def test_expert_shape_reproduces_ling():
    # Ling 2.0: 256 experts, top-8, 1 shared -> A = 9/257
    shape = expert_shape(9 / 257, Constraints())
    assert (shape.n_experts, shape.top_k, shape.n_shared) == (256, 8, 1)
    assert shape.activation_ratio == pytest.approx(9 / 257)


def test_expert_shape_respects_ep_and_tolerance():
    c = Constraints(ep=48)
    shape = expert_shape(0.035, c)
    assert shape is not None and shape.n_experts % 48 == 0
    assert abs(shape.activation_ratio / 0.035 - 1) <= c.a_tolerance
    # no expert count that 7 divides is on the grid -> infeasible
    assert expert_shape(0.035, Constraints(ep=7)) is None


def test_kv_heads_rule_matches_ling_family():
    c = Constraints()
    assert [kv_heads(h, c) for h in (16, 32, 64)] == [4, 4, 8]
    for h in (5, 40, 52, 88, 96):
        assert h % kv_heads(h, c) == 0


def test_build_model_reproduces_ling_1t():
    """The family rules rebuild the published Ling-1T architecture from (d_model, layers, A, G)."""
    c = Constraints()
    shape = expert_shape(9 / 257, c)
    built = build_model(8192, 80, shape, 8.0, c)
    ref = RunConfig.from_yaml(f"{MODELS}/ling-1t.yaml").model
    assert built.model_dump() == ref.model_dump()


def test_enumerate_candidates_bracket_the_target():
    c = Constraints()
    target = 3.2e11
    cands = enumerate_candidates("m", target, c)
    assert cands
    best = min(cands, key=lambda x: abs(math.log(x.flops_per_token / target)))
    assert abs(best.flops_per_token / target - 1) < 0.02
    for cand in cands:
        assert cand.model.d_model % c.head_dim == 0
        assert c.aspect[0] <= cand.aspect <= c.aspect[1]
        assert cand.flops_per_token == flops_per_token(cand.model)
        assert cand.activation_ratio == pytest.approx(9 / 257)
        assert cand.granularity == pytest.approx(8.0)


def test_enumerate_respects_pipeline_stages():
    cands = enumerate_candidates("m", 3.2e11, Constraints(pp=7))
    assert cands and all(x.model.n_layers % 7 == 0 for x in cands)


def test_width_grid_is_multiple_of_head_dim():
    for hd in (64, 128):
        assert all(w % hd == 0 for w in width_grid(Constraints(head_dim=hd)))


def test_round_batch_multiple_of_dp():
    assert round_batch(18548.2, 512) == 18432
    assert round_batch(10, 64) == 64
    assert round_batch(4548, 1) == 4548


def test_hf_config_uses_bailing_field_names():
    cfg = RunConfig.from_yaml(f"{MODELS}/ling-mini-2.0.yaml")
    hf = hf_config(cfg)
    assert hf["architectures"] == ["BailingMoeV2ForCausalLM"]
    expect = {
        "hidden_size": 2048,
        "num_hidden_layers": 20,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "intermediate_size": 5120,
        "num_experts": 256,
        "num_experts_per_tok": 8,
        "num_shared_experts": 1,
        "moe_intermediate_size": 512,
        "first_k_dense_replace": 1,
        "n_group": 8,
        "topk_group": 4,
        "routed_scaling_factor": 2.5,
        "score_function": "sigmoid",
        "partial_rotary_factor": 0.5,
        "use_qk_norm": True,
        "num_nextn_predict_layers": 1,
        "vocab_size": 157184,
    }
    assert {k: hf[k] for k in expect} == expect


def test_megatron_args_describe_the_run():
    cfg = RunConfig.from_yaml(f"{MODELS}/ling-1t.yaml")
    argv = megatron_argv(cfg)
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if not argv[i + 1].startswith("--")}
    assert pairs["--num-layers"] == "80"
    assert pairs["--hidden-size"] == "8192"
    assert pairs["--num-attention-heads"] == "64"
    assert pairs["--num-query-groups"] == "8"
    assert pairs["--ffn-hidden-size"] == "18432"
    assert pairs["--num-experts"] == "256"
    assert pairs["--moe-router-topk"] == "8"
    assert pairs["--moe-ffn-hidden-size"] == "2048"
    assert pairs["--moe-shared-expert-intermediate-size"] == "2048"
    assert pairs["--moe-layer-freq"] == "[" + ",".join(["0"] * 4 + ["1"] * 76) + "]"
    assert pairs["--moe-router-score-function"] == "sigmoid"
    assert pairs["--moe-router-num-groups"] == "8"
    assert pairs["--moe-router-group-topk"] == "4"
    assert pairs["--moe-router-topk-scaling-factor"] == "2.5"
    assert pairs["--fp8-format"] == "e4m3" and pairs["--fp8-recipe"] == "blockwise"
    assert pairs["--global-batch-size"] == "18144"
    assert pairs["--seq-length"] == "4096"
    assert pairs["--train-iters"] == str(cfg.steps)
    assert float(pairs["--lr"]) == pytest.approx(1.86e-4)
    assert (pairs["--tensor-model-parallel-size"], pairs["--pipeline-model-parallel-size"]) == ("8", "8")
    assert pairs["--expert-model-parallel-size"] == "32"
    assert "--moe-router-enable-expert-bias" in argv
    assert all(" " not in line.split(" ", 1)[-1] for line in megatron_text(cfg).splitlines())


def test_scale_down_keeps_ratios():
    cfg = RunConfig.from_yaml(f"{MODELS}/ling-1t.yaml")
    small = scale_down(cfg, 64)
    m, s = cfg.model, small.model
    assert activation_ratio(s) == pytest.approx(activation_ratio(m))
    assert granularity(s) == pytest.approx(granularity(m))
    assert s.n_heads // s.n_kv_heads == m.n_heads // m.n_kv_heads
    assert s.d_ffn / s.d_model == pytest.approx(m.d_ffn / m.d_model, rel=0.05)
    assert s.moe.n_dense_layers >= 1 and s.moe.n_dense_layers < s.n_layers
    assert count_params(s).total < 20e6
    assert small.steps == 4 and small.parallel.dp == 1 and small.device == "cpu"
    # capping the experts keeps A as close as a power-of-two count allows
    capped = scale_down(cfg, 64, max_experts=64)
    assert capped.model.moe.n_experts == 64
    assert activation_ratio(capped.model) == pytest.approx(9 / 257, rel=0.15)
    with pytest.raises(ValueError):
        scale_down(cfg, 0.5)
