"""``windtunnel.flatten.flatten``: the one nested-dict flattener (MLflow params, spec model overrides)."""

from __future__ import annotations

from windtunnel.flatten import flatten


def test_nested_dicts_become_dotted_keys_and_empty_ones_drop() -> None:
    data = {"optim": {"lr": 1e-3, "betas": [0.9, 0.95]}, "model": {"moe": {"n_experts": 8}, "extra": {}}}
    assert flatten(data) == {"optim.lr": 1e-3, "optim.betas": [0.9, 0.95], "model.moe.n_experts": 8}
    assert flatten({"a": 1}, prefix="rt.") == {"rt.a": 1}


def test_leaves_and_empty_dicts_can_be_kept_whole() -> None:
    shape = {"d_model": 32, "moe": {"n_experts": 8}, "extra": {}}
    assert flatten(shape, leaves=("moe",), keep_empty=True) == {
        "d_model": 32,
        "moe": {"n_experts": 8},
        "extra": {},
    }
