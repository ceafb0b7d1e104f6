"""Build Megatron-Core's own ``TransformerConfig`` from an exported ``OUT.megatron.args`` (test helper).

megatron-core ships no ``megatron.training`` argument parser, so the flags are mapped here onto the
``TransformerConfig`` fields of the same name (as ``core_transformer_config_from_args`` in
megatron/training/arguments.py does); the world-size, expert and vocabulary rules of ``parallel_state`` and
``_vocab_size_with_padding`` are checked beside it, with Megatron's formulas.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import torch
import torch.nn.functional as F
from megatron.core.enums import Fp8Recipe
from megatron.core.transformer.transformer_config import TransformerConfig

_FIELDS = {  # flag -> (TransformerConfig field, type)
    "--num-layers": ("num_layers", int),
    "--hidden-size": ("hidden_size", int),
    "--ffn-hidden-size": ("ffn_hidden_size", int),
    "--num-attention-heads": ("num_attention_heads", int),
    "--num-query-groups": ("num_query_groups", int),
    "--kv-channels": ("kv_channels", int),
    "--norm-epsilon": ("layernorm_epsilon", float),
    "--normalization": ("normalization", str),
    "--attention-dropout": ("attention_dropout", float),
    "--hidden-dropout": ("hidden_dropout", float),
    "--init-method-std": ("init_method_std", float),
    "--num-experts": ("num_moe_experts", int),
    "--moe-router-topk": ("moe_router_topk", int),
    "--moe-ffn-hidden-size": ("moe_ffn_hidden_size", int),
    "--moe-shared-expert-intermediate-size": ("moe_shared_expert_intermediate_size", int),
    "--moe-layer-freq": ("moe_layer_freq", ast.literal_eval),
    "--moe-router-score-function": ("moe_router_score_function", str),
    "--moe-router-bias-update-rate": ("moe_router_bias_update_rate", float),
    "--moe-router-topk-scaling-factor": ("moe_router_topk_scaling_factor", float),
    "--moe-router-num-groups": ("moe_router_num_groups", int),
    "--moe-router-group-topk": ("moe_router_group_topk", int),
    "--moe-router-load-balancing-type": ("moe_router_load_balancing_type", str),
    "--moe-aux-loss-coeff": ("moe_aux_loss_coeff", float),
    "--moe-z-loss-coeff": ("moe_z_loss_coeff", float),
    "--moe-router-dtype": ("moe_router_dtype", str),
    "--moe-token-dispatcher-type": ("moe_token_dispatcher_type", str),
    "--mtp-num-layers": ("mtp_num_layers", int),
    "--mtp-loss-scaling-factor": ("mtp_loss_scaling_factor", float),
    "--tensor-model-parallel-size": ("tensor_model_parallel_size", int),
    "--pipeline-model-parallel-size": ("pipeline_model_parallel_size", int),
    "--expert-model-parallel-size": ("expert_model_parallel_size", int),
    "--expert-tensor-parallel-size": ("expert_tensor_parallel_size", int),
    "--fp8-format": ("fp8", str),
    "--fp8-recipe": ("fp8_recipe", str),
    "--recompute-granularity": ("recompute_granularity", str),
    "--recompute-method": ("recompute_method", str),
    "--recompute-num-layers": ("recompute_num_layers", int),
}
_SWITCHES = {
    "--moe-router-enable-expert-bias": ("moe_router_enable_expert_bias", True),
    "--moe-grouped-gemm": ("moe_grouped_gemm", True),
    "--qk-layernorm": ("qk_layernorm", True),
    "--disable-bias-linear": ("add_bias_linear", False),
    "--sequence-parallel": ("sequence_parallel", True),
    "--bf16": ("bf16", True),
}


def read_args(path: Path) -> list[str]:
    """The file as a POSIX shell reads it (``shlex.split``, the parse ``eval "args=(...)"`` does)."""
    return shlex.split(Path(path).read_text())


def parse(argv: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        assert flag.startswith("--"), f"expected a flag at {i}: {flag!r}"
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[flag], i = argv[i + 1], i + 2
        else:
            out[flag], i = None, i + 1
    return out


def transformer_config(argv: list[str]) -> TransformerConfig:
    """Megatron-Core's ``TransformerConfig`` for these arguments (raises what Megatron raises)."""
    flags = parse(argv)
    kw: dict = {"gated_linear_unit": "--swiglu" in flags, "activation_func": F.silu}
    for flag, value in flags.items():
        if flag in _FIELDS:
            name, kind = _FIELDS[flag]
            kw[name] = kind(value)
        elif flag in _SWITCHES:
            kw[_SWITCHES[flag][0]] = _SWITCHES[flag][1]
    # the FP8 MoE checks ask Transformer Engine's version (a GPU package): check the recipe by name instead
    if kw.pop("fp8", None) is not None:
        Fp8Recipe(kw.pop("fp8_recipe"))
    if kw.get("pipeline_model_parallel_size", 1) > 1:
        kw["pipeline_dtype"] = torch.bfloat16
    return TransformerConfig(**kw)


def check_world(argv: list[str], gpus: int, vocab_size: int) -> None:
    """parallel_state's world-size and expert rules, and Megatron's vocabulary padding (no added rows)."""
    f = parse(argv)
    tp, pp = int(f["--tensor-model-parallel-size"]), int(f["--pipeline-model-parallel-size"])
    ep, etp = int(f["--expert-model-parallel-size"]), int(f["--expert-tensor-parallel-size"])
    assert gpus % (tp * pp) == 0, f"world {gpus} not divisible by tp·pp {tp * pp}"
    assert (gpus // pp) % (etp * ep) == 0, f"expert world {gpus // pp} not divisible by etp·ep {etp * ep}"
    if "--num-experts" in f:
        assert int(f["--num-experts"]) % ep == 0
    multiple = int(f["--make-vocab-size-divisible-by"]) * tp
    padded = -(-int(f["--vocab-size"]) // multiple) * multiple
    assert padded == vocab_size, f"Megatron pads the vocabulary {vocab_size} to {padded}"
    layers = int(f["--num-layers"])
    assert layers % pp == 0, f"{layers} layers on {pp} stages"
    if "--moe-layer-freq" in f:
        assert len(ast.literal_eval(f["--moe-layer-freq"])) == layers
