"""Export a model for the ecosystem: a Hugging Face folder with ``config.json`` and, from a checkpoint,
``model.safetensors``.

``python -m trainer export --checkpoint CKPT.pt --config CFG.yaml --out DIR`` writes into DIR:
- ``config.json``: the architecture with the field names of Ling 2.0's ``BailingMoeV2Config`` (model type
  ``bailing_moe_v2``; transformers registers no such type, so the folder carries the config class,
  ``configuration_bailing_moe_v2.py``, that its ``auto_map`` names: ``AutoConfig.from_pretrained(DIR,
  trust_remote_code=True)`` loads it offline);
- ``generation_config.json``: greedy decoding up to the training sequence length (written with weights only);
- ``model.safetensors``: every tensor of the checkpoint's ``model`` state dict under the trainer's own
  parameter names, in their stored dtype (``--dtype bf16`` converts floating tensors), and
- ``WEIGHTS.md``: the table of those names with shape and dtype. Names follow ``trainer.model``
  (``Transformer.state_dict()``): embeddings, per-block attention and FFN (dense SwiGLU, or router, routed
  experts stacked [E, ...] and shared expert for MoE layers), MTP modules, final norm and output head.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from trainer.config import ConfigError, RunConfig

HF_CONFIG_CLASS = Path(__file__).parent / "hf" / "configuration_bailing_moe_v2.py"
DTYPES = {"keep": None, "bf16": torch.bfloat16, "fp32": torch.float32}


def hf_config(run_cfg: RunConfig) -> dict[str, Any]:
    """A ``config.json`` dict for ``BailingMoeV2ForCausalLM`` describing ``run_cfg.model``.

    A dense model is written as BailingMoeV2 with every layer dense (first_k_dense_replace = layers).
    """
    m = run_cfg.model
    moe = m.moe
    cfg: dict[str, Any] = {
        "architectures": ["BailingMoeV2ForCausalLM"],
        "model_type": "bailing_moe_v2",
        "auto_map": {
            "AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config",
            "AutoModel": "modeling_bailing_moe_v2.BailingMoeV2Model",
            "AutoModelForCausalLM": "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM",
        },
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.d_ffn,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads,
        "head_dim": m.head_dim_,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "use_bias": False,
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "embedding_dropout": 0.0,
        "attention_dropout": 0.0,
        "output_dropout": 0.0,
        "initializer_range": m.init_std,
        "max_position_embeddings": m.seq_len,
        "rope_theta": m.rope_theta,
        "partial_rotary_factor": m.rope_fraction,
        "use_qk_norm": m.qk_norm,
        "max_window_layers": m.n_layers,
        "num_nextn_predict_layers": m.n_mtp_layers,
        "mtp_loss_scaling_factor": m.mtp_loss_weight if m.n_mtp_layers else 0.0,
        "use_cache": True,
        "output_router_logits": False,
        "torch_dtype": "bfloat16",
    }
    if moe is not None:
        cfg.update(
            {
                "num_experts": moe.n_experts,
                "num_shared_experts": moe.n_shared_experts,
                "num_experts_per_tok": moe.top_k,
                "n_group": moe.n_groups,
                "topk_group": moe.topk_groups,
                "moe_intermediate_size": moe.d_expert,
                "first_k_dense_replace": moe.n_dense_layers,
                "routed_scaling_factor": moe.route_scale,
                "score_function": moe.score_func,
                "norm_topk_prob": moe.norm_topk,
                "moe_router_enable_expert_bias": moe.balance == "bias",
                "router_dtype": "fp32",
            }
        )
    else:
        cfg.update(
            {
                "num_experts": 0,
                "num_shared_experts": 0,
                "num_experts_per_tok": 0,
                "n_group": 1,
                "topk_group": 1,
                "moe_intermediate_size": m.d_ffn,
                "first_k_dense_replace": m.n_layers,
                "routed_scaling_factor": 1.0,
                "score_function": "sigmoid",
                "norm_topk_prob": True,
                "moe_router_enable_expert_bias": False,
            }
        )
    return cfg


def write_hf_folder(run_cfg: RunConfig, out_dir: Path) -> Path:
    """A Hugging Face folder: config.json plus the ``BailingMoeV2Config`` class its ``auto_map`` names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(hf_config(run_cfg), indent=2) + "\n")
    shutil.copyfile(HF_CONFIG_CLASS, out_dir / HF_CONFIG_CLASS.name)
    return out_dir


def generation_config(run_cfg: RunConfig) -> dict[str, Any]:
    return {"do_sample": False, "max_length": run_cfg.model.seq_len}


def export_weights(state_BD: dict[str, torch.Tensor], out_dir: Path, dtype: torch.dtype | None) -> dict:
    """Write ``model.safetensors`` (contiguous copies, so tied or viewed tensors are stored once each) and
    ``WEIGHTS.md``; returns {name: (shape, dtype)}."""
    from safetensors.torch import save_file

    tensors = {}
    for name, t in state_BD.items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous().clone()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    table = {n: (list(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in tensors.items()}
    rows = [f"| `{n}` | {shape} | {dt} |" for n, (shape, dt) in table.items()]
    (out_dir / "WEIGHTS.md").write_text(
        "# model.safetensors\n\n| name | shape | dtype |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    return table


def export_checkpoint(checkpoint: Path, run_cfg: RunConfig, out_dir: Path, dtype: str = "keep") -> Path:
    """config.json, its config class, generation_config.json, model.safetensors and WEIGHTS.md in out_dir."""
    from trainer.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    model_state = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model_state, dict):
        raise ConfigError(f"{checkpoint}: no 'model' state dict in this checkpoint")
    write_hf_folder(run_cfg, out_dir)
    (out_dir / "generation_config.json").write_text(json.dumps(generation_config(run_cfg), indent=2) + "\n")
    export_weights(model_state, out_dir, DTYPES[dtype])
    return out_dir


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="a step_*.pt, merged.pt or merge checkpoint"
    )
    p.add_argument(
        "--config", type=Path, required=True, help="the run config YAML the checkpoint was trained with"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), default="keep", help="floating-point dtype of the weights"
    )


def export_main(args: argparse.Namespace) -> int:
    from trainer.checkpoint import CheckpointError

    try:
        cfg = RunConfig.from_yaml(args.config)
        export_checkpoint(args.checkpoint, cfg, args.out, args.dtype)
    except (ConfigError, CheckpointError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/: config.json, generation_config.json, model.safetensors, WEIGHTS.md")
    return 0
