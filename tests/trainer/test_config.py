"""RunConfig validation: errors are ConfigError lines that name the offending field."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ConfigError, RunConfig

MODELS = Path(__file__).resolve().parents[2] / "experiments" / "models"

SMALL_MOE = {"n_experts": 8, "top_k": 2, "n_groups": 1, "topk_groups": 1, "d_expert": 32}


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"model": {"d_model": 512, "n_heads": 12}}, "model", ["n_heads", "d_model"]),
        ({"model": {"n_heads": 16, "n_kv_heads": 5}}, "model", ["n_kv_heads"]),
        ({"model": {"d_model": 256, "n_heads": 4, "rope_fraction": 0.3}}, "model", ["rope_fraction"]),
        ({"model": {"moe": {**SMALL_MOE, "top_k": 9}}}, "model.moe", ["top_k", "n_experts"]),
        ({"model": {"moe": {**SMALL_MOE, "n_groups": 3}}}, "model.moe", ["n_groups", "n_experts"]),
        ({"model": {"moe": {**SMALL_MOE, "n_groups": 2, "topk_groups": 3}}}, "model.moe", ["topk_groups"]),
        (
            {"model": {"moe": {**SMALL_MOE, "n_groups": 4, "topk_groups": 1, "top_k": 3}}},
            "model.moe",
            ["top_k"],
        ),
        ({"model": {"n_layers": 2, "moe": {**SMALL_MOE, "n_dense_layers": 3}}}, "model", ["n_dense_layers"]),
        ({"model": {"moe": {**SMALL_MOE, "top_k": 0}}}, "model.moe.top_k", ["greater than or equal"]),
        ({"model": {"moe": SMALL_MOE}, "parallel": {"ep": 3}}, "<root>", ["parallel.ep"]),
        ({"model": {"n_layers": 6}, "parallel": {"pp": 4}}, "<root>", ["parallel.pp"]),
        ({"parallel": {"tp": 3}}, "<root>", ["parallel.tp"]),
        ({"optim": {"batch_size": 32, "micro_batch_size": 5}}, "optim", ["micro_batch_size"]),
        ({"optim": {"lr": -1.0}}, "optim.lr", ["greater than"]),
        ({"model": {"nheads": 4}}, "model.nheads", ["Extra inputs"]),
        ({"precision": {"dtype": "fp4"}}, "precision.dtype", []),
    ],
)
def test_validation_error_names_field(data: dict, field: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    msg = str(info.value)
    assert msg.startswith(f"{field}: "), msg
    for w in words:
        assert w in msg, msg


def test_several_problems_one_line_each() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"optim": {"lr": -1.0, "tokens": 0}})
    parts = str(info.value).split("; ")
    assert sorted(p.split(":")[0] for p in parts) == ["optim.lr", "optim.tokens"]


def test_yaml_round_trip_and_hash(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(
        {"name": "a", "model": {"d_model": 64, "n_heads": 4, "n_kv_heads": 2, "moe": SMALL_MOE}}
    )
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    again = RunConfig.from_yaml(path)
    assert again == cfg
    assert again.with_overrides({"name": "b"}).config_hash() == cfg.config_hash()
    changed = cfg.with_overrides({"model.moe.top_k": 3, "optim.lr": 1e-3})
    assert changed.model.moe is not None and changed.model.moe.top_k == 3 and changed.optim.lr == 1e-3
    assert changed.config_hash() != cfg.config_hash()


def test_bad_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        RunConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="no such file"):
        RunConfig.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("name", "layers", "d_model", "dense", "batch", "lr"),
    [
        ("ling-mini-2.0", 20, 2048, 1, 4400, 3.36e-4),
        ("ling-flash-2.0", 32, 4096, 1, 8352, 2.61e-4),
        ("ling-1t", 80, 8192, 4, 18144, 1.86e-4),
    ],
)
def test_ling_yamls_load(name: str, layers: int, d_model: int, dense: int, batch: int, lr: float) -> None:
    cfg = RunConfig.from_yaml(MODELS / f"{name}.yaml")
    m = cfg.model
    assert m.moe is not None
    assert (m.n_layers, m.d_model, m.moe.n_dense_layers, m.head_dim_) == (layers, d_model, dense, 128)
    assert (m.moe.n_experts, m.moe.top_k, m.moe.n_shared_experts, m.moe.n_groups, m.moe.topk_groups) == (
        256,
        8,
        1,
        8,
        4,
    )
    assert m.moe.route_scale == 2.5 and m.moe.score_func == "sigmoid" and m.moe.balance == "bias"
    assert (m.vocab_size, m.seq_len, m.n_mtp_layers, m.mtp_loss_weight) == (157184, 4096, 1, 0.1)
    assert m.rope_fraction == 0.5 and m.qk_norm and not m.tie_embeddings and m.init_std == 0.006
    assert cfg.optim.batch_size == batch and cfg.optim.tokens == 20 * 10**12 and cfg.optim.lr == lr
    assert cfg.schedule.kind == "wsm" and cfg.precision.dtype == "fp8"
    assert cfg.batch_tokens == batch * 4096
