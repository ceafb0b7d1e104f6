"""Shrink a recommended RunConfig by a factor F into a CPU-sized run that keeps the architecture's ratios.

Kept: the granularity G = 2·d_model/d_expert (d_expert' = 2·d'/G), the query-to-KV head ratio, the dense FFN
to d_model ratio, the dense-layer share (n_dense' = round(n_dense·L'/L), at least one when the original has
one), the activation ratio A = (E_a + E_s)/(E + E_s) (exactly when E ≤ ``max_experts``, else the closest A a
smaller expert count allows), the routing (sigmoid, groups, ×route_scale), MTP, precision and schedule kind.
Scaled by F: d_model, n_heads (not below the q/kv ratio), n_layers (at least 2), vocabulary, sequence length.
The run is a few optimizer steps on the CPU: batch ``batch_size`` sequences, ``steps`` steps, parallel 1.
"""

from __future__ import annotations

from trainer.config import RunConfig
from windtunnel.recommend.search import ExpertShape


def _round_to(x: float, q: int) -> int:
    return max(q, int(round(x / q)) * q)


def _expert_shape(n_experts: int, top_k: int, n_shared: int, max_experts: int) -> ExpertShape:
    """Keep (E, E_a, E_s) when E ≤ max_experts; else the E' ≤ max_experts whose A is closest."""
    a = (top_k + n_shared) / (n_experts + n_shared)
    if n_experts <= max_experts:
        return ExpertShape(n_experts, top_k, n_shared, a)
    best: ExpertShape | None = None
    e = 2
    while e <= max_experts:
        k = min(e, max(1, round(a * (e + n_shared) - n_shared)))
        a_real = (k + n_shared) / (e + n_shared)
        if best is None or abs(a_real - a) < abs(best.activation_ratio - a):
            best = ExpertShape(e, k, n_shared, a_real)
        e *= 2
    assert best is not None
    return best


def scale_down(
    run_cfg: RunConfig,
    factor: float,
    steps: int = 4,
    batch_size: int = 4,
    max_experts: int = 256,
    min_seq_len: int = 32,
) -> RunConfig:
    """A CPU-sized copy of ``run_cfg`` shrunk by ``factor`` (see module docstring for what is kept)."""
    if factor < 1:
        raise ValueError(f"scale-down factor must be >= 1, got {factor}")
    m = run_cfg.model
    q = max(1, m.n_heads // m.n_kv_heads)
    n_heads = max(q, _round_to(m.n_heads / factor, q))
    n_kv = n_heads // q
    # head_dim' must keep rope_fraction·head_dim' even: make it a multiple of 4
    d_model = max(4 * n_heads, _round_to(m.d_model / factor, 4 * n_heads))
    head_dim = d_model // n_heads
    ratio_ffn = m.d_ffn / m.d_model
    n_layers = max(2, round(m.n_layers / factor))
    model = {
        **m.model_dump(mode="json"),
        "d_model": d_model,
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "head_dim": head_dim,
        "d_ffn": _round_to(ratio_ffn * d_model, 8),
        "n_layers": n_layers,
        "vocab_size": _round_to(m.vocab_size / factor, 64),
        "seq_len": max(min_seq_len, int(m.seq_len / factor)),
    }
    if m.moe is not None:
        moe = m.moe
        g = 2 * m.d_model / moe.d_expert
        shape = _expert_shape(moe.n_experts, moe.top_k, moe.n_shared_experts, max_experts)
        n_dense = round(moe.n_dense_layers * n_layers / m.n_layers)
        if moe.n_dense_layers:
            n_dense = max(1, n_dense)
        n_dense = min(n_dense, n_layers - 1)
        n_groups, topk_groups = moe.n_groups, moe.topk_groups
        if shape.n_experts % n_groups or topk_groups * (shape.n_experts // n_groups) < shape.top_k:
            n_groups, topk_groups = 1, 1
        model["moe"] = {
            **moe.model_dump(mode="json"),
            "n_experts": shape.n_experts,
            "top_k": shape.top_k,
            "n_shared_experts": shape.n_shared,
            "d_expert": max(1, round(2 * d_model / g)),
            "n_dense_layers": n_dense,
            "n_groups": n_groups,
            "topk_groups": topk_groups,
        }
    seq = model["seq_len"]
    data = run_cfg.model_dump(mode="json")
    data.update(
        name=f"{run_cfg.name}-scaled{factor:g}",
        model=model,
        device="cpu",
        eval_interval=max(1, steps),
        eval_batches=1,
        log_interval=1,
    )
    data["optim"].update(batch_size=batch_size, micro_batch_size=None, tokens=steps * batch_size * seq)
    data["schedule"].update(
        warmup_fraction=min(0.25, 1 / steps), checkpoint_interval=1, merge_window=min(2, steps)
    )
    data["parallel"].update(tp=1, pp=1, ep=1, dp=1)
    data["precision"].update(fp8_block=min(data["precision"]["fp8_block"], 16))
    data["data"].update(max_corpus_bytes=2_000_000)
    return RunConfig.from_dict(data)
