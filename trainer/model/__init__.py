"""Dense / MoE decoder of the Ling 2.0 family: ``build_model(model_cfg, precision_cfg, device)``."""

from trainer.model.layers import Attention, PartialRoPE, RMSNorm, SwiGLU, make_linear, swiglu
from trainer.model.moe import MoE, Router, expert_matmul, expert_swiglu
from trainer.model.transformer import Block, ModelOutput, MTPModule, Transformer, build_model

__all__ = [
    "Attention",
    "Block",
    "MTPModule",
    "MoE",
    "ModelOutput",
    "PartialRoPE",
    "RMSNorm",
    "Router",
    "SwiGLU",
    "Transformer",
    "build_model",
    "expert_matmul",
    "expert_swiglu",
    "make_linear",
    "swiglu",
]
