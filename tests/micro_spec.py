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
