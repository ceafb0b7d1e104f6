"""Trial identity by content (``windtunnel.orchestrator.identity``): what changes a trial's key, what not."""

from __future__ import annotations

import pytest

from trainer.config import RunConfig
from windtunnel.orchestrator import identity
from windtunnel.orchestrator.identity import group_key, trial_key

MANIFEST = "a" * 64


@pytest.fixture
def cfg() -> RunConfig:
    return RunConfig.from_dict(
        {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2, "vocab_size": 512}}
    )


@pytest.mark.parametrize(
    "override",
    [
        {"data.max_corpus_bytes": 1_000_000},  # the data section
        {"model.d_model": 64},  # the base model
        {"optim.lr": 1e-3},
        {"schedule.kind": "cosine"},
        {"eval_batches": 8},  # the validation loss is measured on other batches
        {"seed": 1},
        {"device": "cuda"},
    ],
)
def test_result_changing_fields_change_the_key(cfg: RunConfig, override: dict) -> None:
    assert trial_key(cfg.with_overrides(override), MANIFEST) != trial_key(cfg, MANIFEST)


@pytest.mark.parametrize(
    "override",
    [
        {"name": "other"},
        {"log_interval": 1},
        {"parallel.peak_tflops": 989.0},
        {"data.cache_dir": "/elsewhere"},
    ],
)
def test_fields_that_do_not_change_a_result_keep_the_key(cfg: RunConfig, override: dict) -> None:
    assert trial_key(cfg.with_overrides(override), MANIFEST) == trial_key(cfg, MANIFEST)


def test_data_content_and_trainer_version_change_the_key(
    cfg: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = trial_key(cfg, MANIFEST)
    assert trial_key(cfg, "b" * 64) != key  # same data section, other file contents
    monkeypatch.setattr(identity, "RESULTS_VERSION", identity.RESULTS_VERSION + 1)
    assert trial_key(cfg, MANIFEST) != key


def test_group_key_ignores_only_the_searched_fields(cfg: RunConfig) -> None:
    base = group_key(cfg, ["lr"], MANIFEST)
    assert group_key(cfg.with_overrides({"optim.lr": 1e-2}), ["lr"], MANIFEST) == base
    assert group_key(cfg.with_overrides({"optim.batch_size": 16}), ["lr"], MANIFEST) != base
    assert group_key(cfg.with_overrides({"optim.batch_size": 16}), ["lr", "batch_size"], MANIFEST) == (
        group_key(cfg, ["lr", "batch_size"], MANIFEST)
    )
    assert group_key(cfg, ["lr"], "b" * 64) != base
