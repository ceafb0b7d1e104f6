"""Parameter, FLOP and memory accounting for the dense / MoE decoder in ``trainer.model``.

Sources:
- FLOPs per token: Ling team, "Towards Greater Leverage: Scaling Laws for Efficient Mixture-of-Experts
  Language Models" (arXiv 2507.17702), App. C, as restated in docs/DESIGN.md "Published laws to reproduce",
  FLOP accounting: C_train ~= 3 * C_fwd; per layer per token (forward) attention projections 2*d*(n_h*d_h +
  2*n_kv*d_h) + 2*(n_h*d_h)*d, attention scores 4*s*n_h*d_h (no causal halving), dense FFN 6*d*d_ffn,
  MoE FFN 6*d*d_expert*(E_a + E_s), router 2*d*E; embeddings and output layer excluded.
- Activation ratio A = (E_a + E_s) / (E + E_s) and granularity G = 2*d_model/d_expert: same paper, Sec. 2.
- Memory: mixed-precision Adam bookkeeping of ZeRO (Rajbhandari et al. 2020, arXiv 1910.02054, Sec. 3.1:
  2 + 2 + 12 bytes per parameter) and activation sizes after Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models", arXiv 2205.05198, Sec. 4), re-derived for GQA + SwiGLU + MoE
  with flash attention (no s x s score matrix is stored).

The parameter counts mirror exactly what ``trainer.model.build_model`` creates (tests check both agree).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from trainer.config import ModelConfig, RunConfig

GB = 1e9


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model (ints).

    ``total``/``active`` include the input embedding and the output head (both counted once each; once in all
    when tied) and exclude the MTP modules, as the published Ling totals do; ``embedding`` is the embedding
    plus head parameters; ``*_nonembed`` subtract it; ``mtp`` is the MTP modules' own parameters (their
    embedding and output head are shared with the main model and not counted again).
    """

    total: int
    active: int
    embedding: int
    total_nonembed: int
    active_nonembed: int
    mtp: int = 0
    mtp_active: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# ---- per-component parameter counts (shared with the memory estimate) ------------------------------------
def _attention_params(cfg: ModelConfig) -> int:
    """Wq (d -> n_h*d_h), Wk, Wv (d -> n_kv*d_h), Wo (n_h*d_h -> d), no biases; QK-Norm weights 2*d_h."""
    d, d_h = cfg.d_model, cfg.head_dim_
    proj = d * cfg.n_heads * d_h + 2 * d * cfg.n_kv_heads * d_h + cfg.n_heads * d_h * d
    return proj + (2 * d_h if cfg.qk_norm else 0)


def _dense_ffn_params(cfg: ModelConfig) -> int:
    """SwiGLU: gate and up (d -> d_ffn), down (d_ffn -> d)."""
    return 3 * cfg.d_model * cfg.d_ffn


def _moe_params(cfg: ModelConfig) -> tuple[int, int, int]:
    """(total, active, routed-expert total) of one MoE FFN: (E + E_s) SwiGLU experts + router d*E."""
    moe = cfg.moe
    assert moe is not None
    per_expert = 3 * cfg.d_model * moe.d_expert
    router = cfg.d_model * moe.n_experts
    routed = moe.n_experts * per_expert
    total = routed + moe.n_shared_experts * per_expert + router
    active = (moe.top_k + moe.n_shared_experts) * per_expert + router
    return total, active, routed


def _is_moe_layer(cfg: ModelConfig, layer: int) -> bool:
    return cfg.moe is not None and layer >= cfg.moe.n_dense_layers


def _block_params(cfg: ModelConfig, moe_layer: bool) -> tuple[int, int]:
    """(total, active) of one transformer block: 2 RMSNorms (d each) + attention + FFN."""
    base = 2 * cfg.d_model + _attention_params(cfg)
    if moe_layer:
        total, active, _ = _moe_params(cfg)
        return base + total, base + active
    ffn = _dense_ffn_params(cfg)
    return base + ffn, base + ffn


def _embedding_params(cfg: ModelConfig) -> int:
    """Input embedding V*d plus untied output head V*d."""
    emb = cfg.vocab_size * cfg.d_model
    return emb if cfg.tie_embeddings else 2 * emb


def _mtp_module_params(cfg: ModelConfig) -> tuple[int, int]:
    """One DeepSeek-V3 MTP module: RMSNorm(h) + RMSNorm(emb) (2d), projection 2d -> d, one block of the same
    kind as the last layer (MoE when the model is MoE), and its own final RMSNorm (d)."""
    block_total, block_active = _block_params(cfg, moe_layer=cfg.moe is not None)
    own = 2 * cfg.d_model + 2 * cfg.d_model * cfg.d_model + cfg.d_model
    return own + block_total, own + block_active


def count_params(cfg: ModelConfig) -> ParamCounts:
    """Total and active parameters, as ``trainer.model.build_model`` builds them.

    total = V*d*(2 or 1) + sum_layers block_total + d (final norm); active replaces every MoE FFN's
    (E + E_s) experts by (E_a + E_s). MTP modules are reported in ``mtp`` only (Ling's published totals
    exclude them: Ling 2.0 report, arXiv 2510.22115, Table 1).
    """
    total = active = 0
    for layer in range(cfg.n_layers):
        t, a = _block_params(cfg, _is_moe_layer(cfg, layer))
        total += t
        active += a
    total += cfg.d_model  # final RMSNorm
    active += cfg.d_model
    emb = _embedding_params(cfg)
    mtp_t, mtp_a = _mtp_module_params(cfg)
    return ParamCounts(
        total=total + emb,
        active=active + emb,
        embedding=emb,
        total_nonembed=total,
        active_nonembed=active,
        mtp=cfg.n_mtp_layers * mtp_t,
        mtp_active=cfg.n_mtp_layers * mtp_a,
    )


# ---- FLOPs ---------------------------------------------------------------------------------------
def _layer_forward_flops(cfg: ModelConfig, moe_layer: bool) -> float:
    """Forward FLOPs per token of one block (Ling scaling-law paper, App. C)."""
    d, d_h, n_h, n_kv, s = cfg.d_model, cfg.head_dim_, cfg.n_heads, cfg.n_kv_heads, cfg.seq_len
    attn_proj = 2 * d * (n_h * d_h + 2 * n_kv * d_h) + 2 * (n_h * d_h) * d
    attn_scores = 4 * s * n_h * d_h  # QK^T and AV, full (not causally halved) s x s
    if moe_layer:
        moe = cfg.moe
        assert moe is not None
        ffn = 6 * d * moe.d_expert * (moe.top_k + moe.n_shared_experts) + 2 * d * moe.n_experts
    else:
        ffn = 6 * d * cfg.d_ffn
    return float(attn_proj + attn_scores + ffn)


def flops_per_token(cfg: ModelConfig, include_mtp: bool = False) -> float:
    """M: training FLOPs per token = 3 x forward, embeddings and output head excluded.

    M = 3 * sum_layers [2d(n_h d_h + 2 n_kv d_h) + 2 n_h d_h d + 4 s n_h d_h + FFN_l], with
    FFN_l = 6 d d_ffn (dense) or 6 d d_expert (E_a + E_s) + 2 d E (MoE) — Ling "Towards Greater Leverage"
    (arXiv 2507.17702) App. C. The MTP modules are excluded unless ``include_mtp`` (then each adds its block
    and its 2d -> d projection, 2*2d*d).
    """
    fwd = sum(_layer_forward_flops(cfg, _is_moe_layer(cfg, layer)) for layer in range(cfg.n_layers))
    if include_mtp:
        per_mtp = _layer_forward_flops(cfg, cfg.moe is not None) + 2 * 2 * cfg.d_model * cfg.d_model
        fwd += cfg.n_mtp_layers * per_mtp
    return 3.0 * fwd


def activation_ratio(cfg: ModelConfig) -> float:
    """A = (E_a + E_s) / (E + E_s) (Ling scaling-law paper, Sec. 2); 1.0 for a dense model."""
    if cfg.moe is None:
        return 1.0
    moe = cfg.moe
    return (moe.top_k + moe.n_shared_experts) / (moe.n_experts + moe.n_shared_experts)


def granularity(cfg: ModelConfig) -> float:
    """G = 2 * d_model / d_expert (Ling scaling-law paper, Sec. 2); for a dense model 2*d_model/d_ffn."""
    d_hidden = cfg.moe.d_expert if cfg.moe is not None else cfg.d_ffn
    return 2.0 * cfg.d_model / d_hidden


# ---- memory --------------------------------------------------------------------------------------
BYTES_PARAM = 2  # BF16 weights
BYTES_GRAD = 2  # BF16 gradients
BYTES_OPTIM = 12  # FP32 master copy + Adam m + Adam v (ZeRO paper: K = 12)


def _activation_bytes_per_token_layer(cfg: ModelConfig, moe_layer: bool) -> float:
    """Bytes kept for backward per token in one block without recomputation (BF16, flash attention).

    Stored tensors (elements per token): attention-norm input and output 2d; q, k, v (n_h + 2 n_kv) d_h;
    attention output n_h d_h; FFN-norm input and output 2d; SwiGLU gate, up, product 3 d_ffn (dense) or,
    for MoE, the router scores E (FP32, so 2E BF16-equivalents), the permuted token copies E_a d, per slot
    3 d_expert for E_a routed + E_s shared experts, and the E_a d expert outputs before the weighted combine.
    """
    d, d_h = cfg.d_model, cfg.head_dim_
    elems = 2 * d + (cfg.n_heads + 2 * cfg.n_kv_heads) * d_h + cfg.n_heads * d_h + 2 * d
    if moe_layer:
        moe = cfg.moe
        assert moe is not None
        k = moe.top_k
        elems += 2 * moe.n_experts + 2 * k * d + 3 * (k + moe.n_shared_experts) * moe.d_expert
    else:
        elems += 3 * cfg.d_ffn
    return 2.0 * elems


def memory_per_gpu(run_cfg: RunConfig) -> dict[str, float | bool]:
    """Estimated training memory of the most loaded GPU, in GB (1e9 bytes), for ``run_cfg.parallel``.

    Assumptions (stated so the numbers can be checked):
    - Mixed precision: BF16 params (2 B) and grads (2 B), FP32 master weights + Adam m, v (12 B) — ZeRO
      paper (arXiv 1910.02054) Sec. 3.1. FP8 training keeps the same BF16/FP32 copies (FP8 tensors are
      transient), so ``precision.dtype`` does not change the estimate.
    - Layout: world = tp * pp * dp. Attention, dense-FFN, shared-expert, router and norm weights are split
      over tp and pp; routed experts over ep and pp (expert-TP = 1; EP carved out of the tp*dp ranks, so
      the expert data-parallel size is tp*dp/ep). Embedding and head are split over tp (vocab-parallel);
      with pp > 1 they sit on different stages, so the most loaded stage holds n_layers/pp blocks plus one.
    - ZeRO over the data-parallel group: stage >= 1 shards optimizer states, >= 2 also grads, 3 also params
      (dense parts over dp, routed experts over the expert data-parallel size).
    - Activations (Korthikanti et al. 2022, Sec. 4, re-derived per ``_activation_bytes_per_token_layer``),
      sequence parallelism so everything is split over tp; 1F1B pipeline keeps pp micro-batches in flight on
      the first stage, i.e. activations of n_layers blocks in all. Micro-batch per GPU
      b = ceil(micro_batch_size / dp) sequences (micro_batch_size defaults to batch_size). With activation
      checkpointing only each block's BF16 input (2 d bytes/token) is kept, plus one block's full
      activations during recomputation. The FP32 logits of the last stage (4 V / tp bytes/token) are added.
    - MTP modules (DeepSeek-V3, arXiv 2412.19437, Sec. 2.2; ``n_mtp_layers``) share the embedding and head
      and sit on the last pipeline stage, the one counted here: their parameters (``_mtp_module_params``;
      routed experts ep-split, the rest tp-split) are added whole to the stage, and each module adds its
      concatenated BF16 input (2·2d bytes/token), one block's activations (or only that input under
      checkpointing) and its own FP32 logits (4 V / tp bytes/token).
    """
    cfg, par = run_cfg.model, run_cfg.parallel
    tp, pp, ep, dp = par.tp, par.pp, par.ep, par.dp
    n_moe = sum(_is_moe_layer(cfg, i) for i in range(cfg.n_layers))
    n_dense = cfg.n_layers - n_moe

    # parameters of the most loaded stage, split into "dense" (tp-split) and "routed expert" (ep-split) parts
    routed_per_layer = _moe_params(cfg)[2] if cfg.moe is not None else 0
    block_moe_total = _block_params(cfg, True)[0] if cfg.moe is not None else 0
    block_dense_total = _block_params(cfg, False)[0]
    dense_part = (n_dense * block_dense_total + n_moe * (block_moe_total - routed_per_layer)) / pp
    routed_part = n_moe * routed_per_layer / pp
    emb = cfg.vocab_size * cfg.d_model
    emb_part = (_embedding_params(cfg) if pp == 1 else emb) / tp
    n_mtp = cfg.n_mtp_layers
    mtp_routed = n_mtp * routed_per_layer
    mtp_dense = n_mtp * _mtp_module_params(cfg)[0] - mtp_routed
    dense_local = (dense_part + mtp_dense) / tp + emb_part
    routed_local = (routed_part + mtp_routed) / ep
    edp = max(1.0, tp * dp / ep)

    def sharded(n_dense_params: float, n_routed_params: float, shard: bool) -> float:
        return n_dense_params / (dp if shard else 1) + n_routed_params / (edp if shard else 1)

    z = par.zero_stage
    params_b = BYTES_PARAM * sharded(dense_local, routed_local, z >= 3)
    grads_b = BYTES_GRAD * sharded(dense_local, routed_local, z >= 2)
    optim_b = BYTES_OPTIM * sharded(dense_local, routed_local, z >= 1)

    mbs = run_cfg.optim.micro_batch_size or run_cfg.optim.batch_size
    tokens = math.ceil(mbs / dp) * cfg.seq_len
    per_layer = [_activation_bytes_per_token_layer(cfg, _is_moe_layer(cfg, i)) for i in range(cfg.n_layers)]
    mtp_input = 2.0 * 2 * cfg.d_model  # [h; emb] per module, BF16
    if par.activation_checkpointing:
        act_per_token = (cfg.n_layers + 2 * n_mtp) * 2.0 * cfg.d_model + max(per_layer)
    else:
        act_per_token = sum(per_layer) + n_mtp * (mtp_input + per_layer[-1])
    act_b = tokens * (act_per_token / tp + (1 + n_mtp) * 4.0 * cfg.vocab_size / tp)
    total = params_b + grads_b + optim_b + act_b
    return {
        "params": params_b / GB,
        "grads": grads_b / GB,
        "optimizer": optim_b / GB,
        "activations": act_b / GB,
        "total": total / GB,
        "gpu_memory_gb": par.gpu_memory_gb,
        "fits": total / GB <= par.gpu_memory_gb,
    }
