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


def law_runs(base: Any, n_range: tuple[float, float], budgets: tuple[float, ...]) -> Any:
    """A run table (no training) of the micro rule's shapes with N in ``n_range`` at each IsoFLOP budget,
    losses from L = 1.5 + 40/N^0.3 + 60/D^0.3 with 0.3 % noise (seed 0): for design tests with a known law."""
    import math

    import numpy as np
    import pandas as pd

    from trainer.flops import flops_per_token
    from windtunnel.orchestrator.propose import model_sizes, shape_of
    from windtunnel.runtable import validate_run_table

    rng = np.random.default_rng(0)
    rows = []
    for cfg, n in model_sizes(base, shape_of(base), *n_range):
        m = float(flops_per_token(cfg.model))
        for c in budgets:
            d = c / m
            loss = (1.5 + 40.0 / n**0.3 + 60.0 / d**0.3) * math.exp(0.003 * rng.standard_normal())
            rows.append({"params": n, "m": m, "tokens": d, "compute": c, "loss": loss, "lr": 3e-3})
    runs = pd.DataFrame(rows)
    runs["batch_tokens"] = base.batch_tokens
    return validate_run_table(runs)
