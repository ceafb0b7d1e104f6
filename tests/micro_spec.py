"""The micro model and corpus the sweep tests (orchestrator, scale-out, faults) train: one shape everywhere,
so they share one cached corpus/tokenizer and a change of the micro shape happens in one place.

``pyproject.toml`` puts ``tests/`` on the test path, so test modules import this as ``micro_spec``."""

from __future__ import annotations

from typing import Any

MICRO_MODEL: dict[str, Any] = {  # ~13k non-embedding parameters: a trial of 40k tokens takes seconds
    "vocab_size": 512,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "d_ffn": 96,
    "seq_len": 64,
}
MICRO_DATA: dict[str, Any] = {"max_corpus_bytes": 2_000_000}  # a 2 MB slice of the default corpus


def micro_base(tokens: int, eval_batches: int = 2) -> dict[str, Any]:
    """The sweep ``base`` (a RunConfig mapping) of the micro runs: batch 8 x 64 tokens, WSD, on the CPU,
    a metric point every 5 steps and a validation every 10."""
    return {
        "device": "cpu",
        "eval_interval": 10,
        "eval_batches": eval_batches,
        "log_interval": 5,
        "model": dict(MICRO_MODEL),
        "optim": {"lr": 3e-3, "batch_size": 8, "tokens": tokens},
        "schedule": {"kind": "wsd"},
    }
