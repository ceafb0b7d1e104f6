"""Building blocks of the Ling 2.0 style decoder: RMSNorm, partial RoPE, GQA attention with QK-Norm, SwiGLU.

Shapes: B batch, T time, D d_model, H query heads, K kv heads (in attention), d head dim, F FFN width.
"""

from __future__ import annotations

import functools
from typing import Any

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


class _RMSNormFn(torch.autograd.Function):
    """y = x * r * g with r = 1 / sqrt(mean(x^2) + eps) over the last dim (Zhang & Sennrich 2019, eq. 4).

    Backward (x^ = x r, dy' = dy * g; the rows' mean over the last dim):
    dx = r * (dy' - x^ * mean(dy' * x^)), dg = sum over rows of dy * x^. Saves x and r only; one node
    instead of autograd's pow/mean/add/rsqrt/mul chain (about half the CPU time, measured)."""

    @staticmethod
    def forward(ctx: Any, x_ND: torch.Tensor, w_D: torch.Tensor, eps: float) -> torch.Tensor:
        r_N1 = torch.rsqrt(x_ND.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x_ND, w_D, r_N1)
        return (x_ND * r_N1).mul_(w_D)

    @staticmethod
    def backward(ctx: Any, dy_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        x_ND, w_D, r_N1 = ctx.saved_tensors
        xhat_ND = x_ND * r_N1
        dw_D = (dy_ND * xhat_ND).reshape(-1, x_ND.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        g_ND = dy_ND * w_D
        dx_ND = g_ND.sub_(xhat_ND * (g_ND * xhat_ND).mean(-1, keepdim=True)).mul_(r_N1)
        return dx_ND, dw_D, None


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization",
    eq. 4)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # computed in fp32 (a no-op for fp32 inputs): norms stay in high precision under bf16/fp8 autocast
        with torch.autocast(device_type=x.device.type, enabled=False):
            return _RMSNormFn.apply(x.float(), self.weight.float(), self.eps).to(x.dtype)


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
        # the two halves of the tables are equal (angle_Tr = [angle_Tj, angle_Tj]): keep one
        cos_Th = self.cos_Tr[:T, : r // 2].to(x_BHTd.dtype)
        sin_Th = self.sin_Tr[:T, : r // 2].to(x_BHTd.dtype)
        return _RoPEFn.apply(x_BHTd, cos_Th, sin_Th)


class _RoPEFn(torch.autograd.Function):
    """Half-split rotation of the first 2h dims: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), the rest
    passes through (RoFormer eq. 34 with rotate_half pairing). Backward is the inverse rotation:
    (dx1, dx2) = (dy1 cos + dy2 sin, dy2 cos - dy1 sin). One node with two output writes instead of
    autograd's slice/neg/cat chain."""

    @staticmethod
    def forward(ctx: Any, x_BHTd: torch.Tensor, cos_Th: torch.Tensor, sin_Th: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos_Th, sin_Th)
        return _rotate(x_BHTd, cos_Th, sin_Th, 1.0)

    @staticmethod
    def backward(ctx: Any, dy_BHTd: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos_Th, sin_Th = ctx.saved_tensors
        return _rotate(dy_BHTd, cos_Th, sin_Th, -1.0), None, None


def _rotate(x_BHTd: torch.Tensor, cos_Th: torch.Tensor, sin_Th: torch.Tensor, sign: float) -> torch.Tensor:
    """Rotate (x1, x2) = first two h-wide slices of the last dim by +angle (sign 1) or -angle (sign -1)."""
    h = cos_Th.shape[-1]
    x1, x2 = x_BHTd[..., :h], x_BHTd[..., h : 2 * h]
    out_BHTd = torch.empty_like(x_BHTd, memory_format=torch.contiguous_format)
    torch.addcmul(x1 * cos_Th, x2, sin_Th, value=-sign, out=out_BHTd[..., :h])
    torch.addcmul(x2 * cos_Th, x1, sin_Th, value=sign, out=out_BHTd[..., h : 2 * h])
    if x_BHTd.shape[-1] > 2 * h:
        out_BHTd[..., 2 * h :] = x_BHTd[..., 2 * h :]
    return out_BHTd


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
        self._fused_qkv = all(type(m) is nn.Linear for m in (self.wq, self.wk, self.wv))

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        H, K, d = self.n_heads, self.n_kv_heads, self.head_dim
        if self._fused_qkv:  # one GEMM over cat([W_q; W_k; W_v]) instead of three
            w_QD = torch.cat([self.wq.weight, self.wk.weight, self.wv.weight], dim=0)
            q_BTHd, k_BTKd, v_BTKd = F.linear(x_BTD, w_QD).split([H * d, K * d, K * d], dim=-1)
        else:
            q_BTHd, k_BTKd, v_BTKd = self.wq(x_BTD), self.wk(x_BTD), self.wv(x_BTD)
        q_BHTd = q_BTHd.reshape(B, T, H, d).transpose(1, 2)
        k_BKTd = k_BTKd.reshape(B, T, K, d).transpose(1, 2)
        v_BKTd = v_BTKd.reshape(B, T, K, d).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q_BHTd, k_BKTd = self.q_norm(q_BHTd), self.k_norm(k_BKTd)
        q_BHTd, k_BKTd = self.rope(q_BHTd), self.rope(k_BKTd)
        o_BHTd = F.scaled_dot_product_attention(
            q_BHTd, k_BKTd, v_BKTd, is_causal=True, enable_gqa=self.n_heads != self.n_kv_heads
        )
        return self.wo(o_BHTd.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class _SwiGLUFn(torch.autograd.Function):
    """h = g_s * SiLU(a) * b with an optional per-row gate g_s; SiLU(a) = a * sigmoid(a) (Shazeer 2020,
    eq. 6; Elfwing et al. 2018).

    Backward (sigma = sigmoid(a), SiLU'(a) = sigma * (1 + a * (1 - sigma))): with dh' = g_s * dh,
    da = dh' * b * SiLU'(a), db = dh' * SiLU(a), dg_s = sum_f dh_f * SiLU(a_f) * b_f. Only a, b and the gate
    are saved (autograd would also keep SiLU(a) and the ungated product)."""

    @staticmethod
    def forward(
        ctx: Any, a_NF: torch.Tensor, b_NF: torch.Tensor, gate_N: torch.Tensor | None
    ) -> torch.Tensor:
        h_NF = F.silu(a_NF).mul_(b_NF)
        if gate_N is not None:
            h_NF.mul_(gate_N.unsqueeze(-1))
        ctx.save_for_backward(a_NF, b_NF, gate_N)
        return h_NF

    @staticmethod
    def backward(ctx: Any, dh_NF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        a_NF, b_NF, gate_N = ctx.saved_tensors
        sig_NF = torch.sigmoid(a_NF)
        silu_NF = a_NF * sig_NF
        dgate_N = None
        if gate_N is not None:
            if ctx.needs_input_grad[2]:
                dgate_N = (dh_NF * silu_NF).mul_(b_NF).sum(-1)
            dh_NF = dh_NF * gate_N.unsqueeze(-1)
        # SiLU'(a) = sigma * (1 + a * (1 - sigma)) = sigma + SiLU(a) * (1 - sigma), built in sig_NF
        da_NF = sig_NF.addcmul_(silu_NF, 1.0 - sig_NF).mul_(dh_NF).mul_(b_NF)
        db_NF = silu_NF.mul_(dh_NF)
        return da_NF, db_NF, dgate_N


def swiglu(a_NF: torch.Tensor, b_NF: torch.Tensor, gate_N: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(a) * b, times the per-row gate ``gate_N`` when given (broadcast over the last dim)."""
    return _SwiGLUFn.apply(a_NF, b_NF, gate_N)


class SwiGLU(nn.Module):
    """FFN(x) = W_down (SiLU(W_gate x) * W_up x) (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6).

    SiLU and product are one autograd node (``swiglu``). Gate and up stay two GEMMs: one GEMM over
    ``cat([W_gate; W_up])`` measured no faster on the CPU (benchmarks/results/trainer_cpu.md)."""

    def __init__(self, d_model: int, d_ffn: int, precision_cfg: PrecisionConfig | None = None) -> None:
        super().__init__()
        self.w_gate = make_linear(d_model, d_ffn, precision_cfg)
        self.w_up = make_linear(d_model, d_ffn, precision_cfg)
        self.w_down = make_linear(d_ffn, d_model, precision_cfg)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self.w_down(swiglu(self.w_gate(x_BTD), self.w_up(x_BTD)))
