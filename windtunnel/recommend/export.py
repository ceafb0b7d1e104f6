"""Export a RunConfig as a Hugging Face folder (``trainer.export``) and Megatron-LM arguments.

HF field names follow the BailingMoeV2 configuration class of the Ling 2.0 release (``BailingMoeV2Config``:
num_experts, num_shared_experts, num_experts_per_tok, n_group, topk_group, moe_intermediate_size,
first_k_dense_replace, routed_scaling_factor, score_function, partial_rotary_factor, use_qk_norm, head_dim,
num_key_value_heads, num_nextn_predict_layers, mtp_loss_scaling_factor, moe_router_enable_expert_bias ...).
Megatron-LM flags follow the Ling-V2 pre-training script (examples/pretrain/run_pretrain_4k.sh of
inclusionAI/Ling-V2, Megatron-LM core 0.13): --num-experts, --moe-router-topk, --moe-ffn-hidden-size,
--moe-shared-expert-intermediate-size, --moe-layer-freq, --moe-router-score-function sigmoid,
--moe-router-enable-expert-bias, --moe-router-num-groups, --moe-router-group-topk,
--moe-router-topk-scaling-factor, --fp8-format e4m3, --fp8-recipe blockwise, --mtp-num-layers ...
WSM has no Megatron schedule of its own: it is a constant LR after warmup (--lr-decay-style constant) with a
checkpoint every --save-interval steps; the merge of the last ``merge_window`` checkpoints happens offline
(``python -m trainer merge``).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from trainer.config import ModelConfig, RunConfig
from trainer.export import hf_config, write_hf_folder
from windtunnel.recommend.layout import vocab_divisor

Args = list[tuple[str, str | None]]


def _adder(args: Args):
    def add(flag: str, value: Any = None) -> None:
        args.append((flag, None if value is None else _fmt(value)))

    return add


def _moe_args(m: ModelConfig) -> Args:
    """Ling's MoE flags: experts, router (sigmoid, expert bias, groups), dense first layers, MTP."""
    args: Args = []
    add, moe = _adder(args), m.moe
    if moe is not None:
        layer_freq = "[" + ",".join("0" if i < moe.n_dense_layers else "1" for i in range(m.n_layers)) + "]"
        add("--num-experts", moe.n_experts)
        add("--moe-router-topk", moe.top_k)
        add("--moe-ffn-hidden-size", moe.d_expert)
        if moe.n_shared_experts:
            add("--moe-shared-expert-intermediate-size", moe.n_shared_experts * moe.d_expert)
        add("--moe-layer-freq", layer_freq)
        add("--moe-router-score-function", moe.score_func)
        if moe.balance == "bias":
            add("--moe-router-enable-expert-bias")
            add("--moe-router-bias-update-rate", moe.bias_update_rate)
        add("--moe-router-topk-scaling-factor", moe.route_scale)
        add("--moe-router-num-groups", moe.n_groups)
        add("--moe-router-group-topk", moe.topk_groups)
        seq_aux = moe.seq_aux_loss_coef > 0
        add("--moe-router-load-balancing-type", "seq_aux_loss" if seq_aux else "none")
        add("--moe-aux-loss-coeff", moe.seq_aux_loss_coef if seq_aux else 0)
        if moe.z_loss_coef > 0:
            add("--moe-z-loss-coeff", moe.z_loss_coef)
        add("--moe-router-dtype", "fp32")
        add("--moe-grouped-gemm")
        add("--moe-token-dispatcher-type", "alltoall")
    if m.n_mtp_layers:
        add("--mtp-num-layers", m.n_mtp_layers)
        add("--mtp-loss-scaling-factor", m.mtp_loss_weight)
    return args


def _model_args(m: ModelConfig, tp: int) -> Args:
    args: Args = []
    add = _adder(args)
    add("--num-layers", m.n_layers)
    add("--hidden-size", m.d_model)
    add("--ffn-hidden-size", m.d_ffn)
    add("--num-attention-heads", m.n_heads)
    add("--group-query-attention")
    add("--num-query-groups", m.n_kv_heads)
    add("--kv-channels", m.head_dim_)
    if m.qk_norm:
        add("--qk-layernorm")
    add("--seq-length", m.seq_len)
    add("--max-position-embeddings", m.seq_len)
    add("--vocab-size", m.vocab_size)
    add("--make-vocab-size-divisible-by", vocab_divisor(m.vocab_size, tp))
    add("--position-embedding-type", "rope")
    add("--rotary-base", m.rope_theta)
    add("--rotary-percent", m.rope_fraction)
    add("--swiglu")
    if not m.tie_embeddings:
        add("--untie-embeddings-and-output-weights")
    add("--normalization", "RMSNorm")
    add("--norm-epsilon", m.norm_eps)
    add("--disable-bias-linear")
    add("--attention-dropout", 0)
    add("--hidden-dropout", 0)
    add("--init-method-std", m.init_std)
    return args


def _training_args(run_cfg: RunConfig) -> Args:
    """Batch, steps, LR schedule (WSM = constant after warmup, merged offline), AdamW, precision."""
    o, s, p, par, steps = run_cfg.optim, run_cfg.schedule, run_cfg.precision, run_cfg.parallel, run_cfg.steps
    args: Args = []
    add = _adder(args)
    add("--micro-batch-size", max(1, (o.micro_batch_size or o.batch_size) // par.dp))
    add("--global-batch-size", o.batch_size)
    add("--train-iters", steps)
    add("--lr", o.lr)
    add("--min-lr", o.lr * o.min_lr_ratio)
    add("--lr-warmup-iters", s.warmup_updates(steps))
    if s.kind in ("wsm", "constant"):
        add("--lr-decay-style", "constant")
    elif s.kind == "cosine":
        add("--lr-decay-style", "cosine")
        add("--lr-decay-iters", steps)
    else:  # wsd
        add("--lr-decay-style", "WSD")
        add("--lr-decay-iters", steps)
        add("--lr-wsd-decay-style", "linear" if s.decay_shape == "linear" else "minus_sqrt")
        add("--lr-wsd-decay-iters", round(s.decay_fraction * steps))
    add("--weight-decay", o.weight_decay)
    add("--adam-beta1", o.beta1)
    add("--adam-beta2", o.beta2)
    add("--adam-eps", o.eps)
    add("--clip-grad", o.grad_clip)
    add("--seed", run_cfg.seed)
    add("--bf16")
    if p.dtype == "fp8":
        add("--fp8-format", "e4m3")
        add("--fp8-recipe", "blockwise")
    return args


def _parallel_args(run_cfg: RunConfig) -> Args:
    par, s, steps = run_cfg.parallel, run_cfg.schedule, run_cfg.steps
    args: Args = []
    add = _adder(args)
    add("--tensor-model-parallel-size", par.tp)
    add("--pipeline-model-parallel-size", par.pp)
    add("--expert-model-parallel-size", par.ep)
    add("--expert-tensor-parallel-size", 1)
    if par.tp > 1:
        add("--sequence-parallel")
    if par.zero_stage >= 1:
        add("--use-distributed-optimizer")
    if par.activation_checkpointing:
        add("--recompute-granularity", "full")
        add("--recompute-method", "uniform")
        add("--recompute-num-layers", 1)
    if s.kind == "wsm":
        add("--save-interval", s.checkpoint_interval or max(1, steps // 100))
    add("--eval-interval", run_cfg.eval_interval)
    add("--log-interval", run_cfg.log_interval)
    return args


def megatron_args(run_cfg: RunConfig) -> Args:
    """Megatron-LM ``pretrain_gpt.py`` arguments as (flag, value or None for a switch), in Ling-V2's order."""
    return [
        *_moe_args(run_cfg.model),
        *_model_args(run_cfg.model, run_cfg.parallel.tp),
        *_training_args(run_cfg),
        *_parallel_args(run_cfg),
    ]


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def megatron_argv(run_cfg: RunConfig) -> list[str]:
    """The arguments as an argv list (``pretrain_gpt.py *argv``)."""
    out: list[str] = []
    for flag, value in megatron_args(run_cfg):
        out.append(flag)
        if value is not None:
            out.append(value)
    return out


def megatron_text(run_cfg: RunConfig) -> str:
    """One argument per line, each quoted for a POSIX shell (``shlex.quote``: ``'[0,1,1]'`` stays one word).

    Use: ``xargs -a OUT.megatron.args torchrun ... pretrain_gpt.py`` or, in bash,
    ``eval "args=($(cat OUT.megatron.args))"; torchrun ... pretrain_gpt.py "${args[@]}"``.
    """
    return "".join(shlex.quote(arg) + "\n" for arg in megatron_argv(run_cfg))


def write_exports(run_cfg: RunConfig, out_yaml: Path) -> dict[str, Path]:
    """Write OUT.yaml, the folder OUT.hf/ (config.json + its config class) and OUT.megatron.args."""
    out_yaml = Path(out_yaml)
    out_yaml.parent.mkdir(parents=True, exist_ok=True)
    stem = out_yaml.with_suffix("")
    hf_dir = Path(f"{stem}.hf")
    paths = {
        "config": out_yaml,
        "hf_dir": hf_dir,
        "hf_config": hf_dir / "config.json",
        "megatron_args": Path(f"{stem}.megatron.args"),
    }
    run_cfg.to_yaml(paths["config"])
    write_hf_folder(run_cfg, hf_dir)
    paths["megatron_args"].write_text(megatron_text(run_cfg))
    return paths


__all__ = ["hf_config", "megatron_args", "megatron_argv", "megatron_text", "write_exports", "write_hf_folder"]
