"""Block-wise E4M3 quantisation: Triton kernels, and the dispatch used by the trainer.

Formula (reference.py, Ling 2.0 sec. 5.1): per tile s = amax/448 (1 for an all-zero tile),
q = e4m3(clamp(x/s)).
``quantize_rows``: 1×block tiles along the last dim (activations, gradients); ``quantize_cols``: 1×block tiles
along the first (token) dim, returned transposed (the weight-gradient layout); ``quantize_blocks``:
block×block tiles (weights). On CUDA they run a Triton kernel; elsewhere the PyTorch reference
(same numerics).

Note: under ``TRITON_INTERPRET=1`` the interpreter's fp32→fp8 cast is wrong upstream (docs/DESIGN.md
"Platform"), so the Triton quantisers are only compared bit-exactly on a GPU; CPU tests check their scales and
tolerance.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import triton_usable
from kernels.reference import (
    FP8_DTYPE,
    FP8_MAX,
    cdiv,
    quantize_blocks_ref,
    quantize_expert_blocks_ref,
    quantize_rows_ref,
)


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, s_ptr, M, K,
    stride_xm, stride_xk, stride_qm, stride_qk, stride_sm, stride_sk,
    FP8_MAX_C: tl.constexpr, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    kb = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = kb * BLOCK + tl.arange(0, BLOCK)
    mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=mask, other=0.0)
    x = x.to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    s = tl.where(amax == 0, 1.0, amax / FP8_MAX_C)
    y = tl.clamp(x / s[:, None], -FP8_MAX_C, FP8_MAX_C)
    tl.store(
        q_ptr + offs_m[:, None] * stride_qm + offs_k[None, :] * stride_qk, y.to(tl.float8e4nv), mask=mask
    )
    tl.store(s_ptr + offs_m * stride_sm + kb * stride_sk, s, mask=offs_m < M)


@triton.jit
def _quantize_blocks_kernel(
    w_ptr, q_ptr, s_ptr, N, K,
    stride_we, stride_wn, stride_wk, stride_qe, stride_qn, stride_qk, stride_se, stride_sn, stride_sk,
    FP8_MAX_C: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    nb = tl.program_id(0)
    kb = tl.program_id(1)
    e = tl.program_id(2).to(tl.int64)  # expert index for a stacked (E, N, K) weight; 0 for a matrix
    offs_n = nb * BLOCK + tl.arange(0, BLOCK)
    offs_k = kb * BLOCK + tl.arange(0, BLOCK)
    mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    w_ptrs = w_ptr + e * stride_we + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
    w = tl.load(w_ptrs, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.max(tl.abs(w), axis=1), axis=0)
    s = tl.where(amax == 0, 1.0, amax / FP8_MAX_C)
    y = tl.clamp(w / s, -FP8_MAX_C, FP8_MAX_C)
    q_ptrs = q_ptr + e * stride_qe + offs_n[:, None] * stride_qn + offs_k[None, :] * stride_qk
    tl.store(q_ptrs, y.to(tl.float8e4nv), mask=mask)
    tl.store(s_ptr + e * stride_se + nb * stride_sn + kb * stride_sk, s)


def triton_quantize_rows(x_MK: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton 1×block quantisation along the last dim (any strides): ``q_MK`` E4M3, ``s_MKb`` FP32."""
    M, K = x_MK.shape
    Kb = cdiv(K, block)
    q_MK = torch.empty((M, K), dtype=FP8_DTYPE, device=x_MK.device)
    s_MKb = torch.empty((M, Kb), dtype=torch.float32, device=x_MK.device)
    block_m = max(1, min(32, 8192 // block))
    grid = (cdiv(M, block_m), Kb)
    _quantize_rows_kernel[grid](
        x_MK, q_MK, s_MKb, M, K, x_MK.stride(0), x_MK.stride(1), q_MK.stride(0), q_MK.stride(1),
        s_MKb.stride(0), s_MKb.stride(1), FP8_MAX_C=FP8_MAX, BLOCK=block, BLOCK_M=block_m,
    )  # fmt: skip
    return q_MK, s_MKb


def triton_quantize_blocks(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton block×block quantisation of ``w_NK`` (→ ``q_NK``, ``s_NbKb``) or of a stacked ``w_ENK``, one
    launch for all experts (→ ``q_ENK``, ``s_ENbKb``). Outputs contiguous E4M3 / FP32."""
    w_ENK = w if w.dim() == 3 else w[None]
    E, N, K = w_ENK.shape
    Nb, Kb = cdiv(N, block), cdiv(K, block)
    q_ENK = torch.empty((E, N, K), dtype=FP8_DTYPE, device=w.device)
    s_ENbKb = torch.empty((E, Nb, Kb), dtype=torch.float32, device=w.device)
    if E:
        _quantize_blocks_kernel[(Nb, Kb, E)](
            w_ENK, q_ENK, s_ENbKb, N, K, *w_ENK.stride(), *q_ENK.stride(), *s_ENbKb.stride(),
            FP8_MAX_C=FP8_MAX, BLOCK=block,
        )  # fmt: skip
    if w.dim() == 2:
        return q_ENK[0], s_ENbKb[0]
    return q_ENK, s_ENbKb


def quantize_rows(x_MK: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """1×block tiles along the last dim: Triton on CUDA, the PyTorch reference elsewhere."""
    if x_MK.is_cuda:
        return triton_quantize_rows(x_MK, block)
    return quantize_rows_ref(x_MK, block)


def quantize_cols(x_TK: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """1×block tiles along the token dim, transposed layout: ``q_KT``, ``s_KTb``."""
    return quantize_rows(x_TK.t(), block)


def quantize_blocks(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """block×block tiles of ``w_NK`` or of each matrix of a stacked ``w_ENK``: Triton on CUDA, the PyTorch
    reference elsewhere."""
    if w.is_cuda:
        return triton_quantize_blocks(w, block)
    if w.dim() == 3:
        return quantize_expert_blocks_ref(w, block)
    return quantize_blocks_ref(w, block)


__all__ = [
    "quantize_rows",
    "quantize_cols",
    "quantize_blocks",
    "triton_quantize_rows",
    "triton_quantize_blocks",
    "triton_usable",
]
