"""Building blocks of the Ling 2.0 style decoder: RMSNorm, partial RoPE, GQA attention with QK-Norm, SwiGLU.

Shapes: B batch, T time, D d_model, H query heads, K kv heads (in attention), d head dim, F FFN width.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import ModelConfig, PrecisionConfig


def make_linear(
    in_features: int, out_features: int, precision_cfg: PrecisionConfig | None = None
) -> nn.Linear:
    """A bias-free linear layer; ``trainer.fp8.FP8Linear`` (block-scaled E4M3) when precision is fp8."""
    if precision_cfg is not None and precision_cfg.dtype == "fp8":
        from trainer.fp8 import FP8Linear  # lazy: fp8 is optional and imports kernels

        return FP8Linear(in_features, out_features, bias=False, block=precision_cfg.fp8_block)
    return nn.Linear(in_features, out_features, bias=False)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization",
    eq. 4)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # computed in fp32 (a no-op for fp32 inputs): norms stay in high precision under bf16/fp8 autocast
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


@functools.lru_cache(maxsize=8)
def _rope_tables(r: int, theta: float, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos_Tr, sin_Tr) on the CPU, shared by all layers: angle[t, j] = t * theta^(-2j/r), j < r/2,
    repeated for the two halves."""
    cpu = torch.device("cpu")
    j = torch.arange(0, r, 2, dtype=torch.float32, device=cpu)
    inv_freq_j = 1.0 / (theta ** (j / max(r, 1)))
    t_T = torch.arange(seq_len, dtype=torch.float32, device=cpu)
    angle_Tj = torch.outer(t_T, inv_freq_j)
    angle_Tr = torch.cat([angle_Tj, angle_Tj], dim=-1)
    return angle_Tr.cos(), angle_Tr.sin()


class PartialRoPE(nn.Module):
    """Rotary position embedding on the first ``rope_dims`` dims of each head; the rest pass through.

    RoFormer (Su et al. 2021, arXiv 2104.09864, eq. 34) with the half-split pairing (x_j, x_{j + r/2}):
    theta_j = base^(-2j/r), j < r/2; x' = x * cos(t theta) + rotate_half(x) * sin(t theta), r = rope_dims.
    Ling 2.0 rotates the first half of each head (rope_fraction = 0.5).
    """

    def __init__(self, head_dim: int, rope_fraction: float, theta: float, max_seq_len: int) -> None:
        super().__init__()
        self.rope_dims = int(head_dim * rope_fraction)
        self.theta = theta
        self._build(max_seq_len)

    def _build(self, seq_len: int) -> None:
        device = self.cos_Tr.device if hasattr(self, "cos_Tr") else torch.get_default_device()
        if device.type == "meta":  # shapes only: no values to compute
            cos_Tr = sin_Tr = torch.empty(seq_len, self.rope_dims, device=device)
        else:
            cos_Tr, sin_Tr = (t.to(device) for t in _rope_tables(self.rope_dims, self.theta, seq_len))
        self.register_buffer("cos_Tr", cos_Tr, persistent=False)
        self.register_buffer("sin_Tr", sin_Tr, persistent=False)

    def forward(self, x_BHTd: torch.Tensor) -> torch.Tensor:
        r = self.rope_dims
        if r == 0:
            return x_BHTd
        T = x_BHTd.shape[-2]
        if T > self.cos_Tr.shape[0]:
            self._build(T)
        cos_Tr = self.cos_Tr[:T].to(x_BHTd.dtype)
        sin_Tr = self.sin_Tr[:T].to(x_BHTd.dtype)
        x_rot, x_pass = x_BHTd[..., :r], x_BHTd[..., r:]
        x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2 :]
        rotated = torch.cat([-x2, x1], dim=-1)
        return torch.cat([x_rot * cos_Tr + rotated * sin_Tr, x_pass], dim=-1)


class Attention(nn.Module):
    """Causal grouped-query attention (Ainslie et al. 2023) with QK-Norm (RMSNorm of q and k per head,
    Dehghani et al. 2023) and partial RoPE; softmax(q k^T / sqrt(d)) v via
    ``scaled_dot_product_attention``."""

    def __init__(self, cfg: ModelConfig, precision_cfg: PrecisionConfig | None = None) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim_
        d, hd = cfg.d_model, cfg.head_dim_
        self.wq = make_linear(d, self.n_heads * hd, precision_cfg)
        self.wk = make_linear(d, self.n_kv_heads * hd, precision_cfg)
        self.wv = make_linear(d, self.n_kv_heads * hd, precision_cfg)
        self.wo = make_linear(self.n_heads * hd, d, precision_cfg)
        self.q_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.rope = PartialRoPE(hd, cfg.rope_fraction, cfg.rope_theta, cfg.seq_len)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q_BHTd = self.wq(x_BTD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k_BKTd = self.wk(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BKTd = self.wv(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q_BHTd, k_BKTd = self.q_norm(q_BHTd), self.k_norm(k_BKTd)
        q_BHTd, k_BKTd = self.rope(q_BHTd), self.rope(k_BKTd)
        o_BHTd = F.scaled_dot_product_attention(
            q_BHTd, k_BKTd, v_BKTd, is_causal=True, enable_gqa=self.n_heads != self.n_kv_heads
        )
        return self.wo(o_BHTd.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    """FFN(x) = W_down (SiLU(W_gate x) * W_up x) (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6)."""

    def __init__(self, d_model: int, d_ffn: int, precision_cfg: PrecisionConfig | None = None) -> None:
        super().__init__()
        self.w_gate = make_linear(d_model, d_ffn, precision_cfg)
        self.w_up = make_linear(d_model, d_ffn, precision_cfg)
        self.w_down = make_linear(d_ffn, d_model, precision_cfg)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x_BTD)) * self.w_up(x_BTD))
