"""FP8 block-scaled GEMM (Triton), C = A·Bᵀ with FP32 accumulation.

Formula (reference.fp8_gemm_ref; Ling 2.0 sec. 5.1, DeepSeek-V3 sec. 3.3.2):

    C[m, n] = Σ_kb s_A[m, kb] · s_B[n', kb] · Σ_{k ∈ kb} q_A[m, k] · q_B[n, k]

A (M×K) is quantised in 1×B tiles along K; B (N×K) either in B×B blocks (n' = n // B: a weight) or in 1×B
tiles (n' = n: an activation or gradient). The three training GEMMs of a linear layer y = x·Wᵀ map to it as

    forward      y[T, N]  = x[T, K] · W[N, K]ᵀ        A = x (1×B along K),  B = W (B×B)
    input grad   dx[T, K] = dy[T, N] · W[N, K]        A = dy (1×B along N), B = Wᵀ (B×B, a strided view)
    weight grad  dW[N, K] = dy[T, N]ᵀ · x[T, K]       A = dyᵀ, B = xᵀ, both 1×B along T (``quantize_cols``)

The K-loop step is the quantisation block B, so each partial dot product is scaled once in FP32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import gemm_configs, grouped_tile
from kernels.reference import cdiv


@triton.autotune(configs=gemm_configs(tune_block_k=False), key=["M", "N", "K", "SB_DIV"])
@triton.jit
def _fp8_gemm_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, M, N, K,
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
    stride_sam, stride_sak, stride_sbn, stride_sbk,
    SB_DIV: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # grouped tile order (L2 reuse): GROUP_M row tiles share each column sweep
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    sa_ptrs = sa_ptr + offs_m * stride_sam
    sb_ptrs = sb_ptr + (offs_n // SB_DIV) * stride_sbn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - kb * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        sa = tl.load(sa_ptrs + kb * stride_sak, mask=mask_m, other=0.0)
        sb = tl.load(sb_ptrs + kb * stride_sbk, mask=mask_n, other=0.0)
        partial = tl.dot(a, b, out_dtype=tl.float32)
        acc += partial * sa[:, None] * sb[None, :]
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def fp8_gemm(
    qa_MK: torch.Tensor,
    sa_MKb: torch.Tensor,
    qb_NK: torch.Tensor,
    sb: torch.Tensor,
    block: int = 128,
    b_scale: str = "block",
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """C_MN = A·Bᵀ from E4M3 operands and FP32 tile scales (module docstring). Any strides are accepted, so
    ``qb_NK`` may be a transposed view (input gradient) with ``sb`` transposed to match.

    ``b_scale="block"``: ``sb`` is ``s_NbKb`` (B×B); ``"row"``: ``sb`` is ``s_NKb`` (1×B). ``block`` must be a
    power of two ≥ 16 (the tl.dot minimum)."""
    M, K = qa_MK.shape
    N, K2 = qb_NK.shape
    if K != K2:
        raise ValueError(f"inner dims differ: A is {M}x{K}, B is {N}x{K2}")
    if b_scale not in ("block", "row"):
        raise ValueError(f"b_scale must be 'block' or 'row', got {b_scale!r}")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16 for the Triton kernel, got {block}")
    Kb = cdiv(K, block)
    if tuple(sa_MKb.shape) != (M, Kb):
        raise ValueError(f"sa has shape {tuple(sa_MKb.shape)}, expected {(M, Kb)}")
    expect_sb = (cdiv(N, block), Kb) if b_scale == "block" else (N, Kb)
    if tuple(sb.shape) != expect_sb:
        raise ValueError(f"sb has shape {tuple(sb.shape)}, expected {expect_sb}")
    c_MN = torch.empty((M, N), dtype=out_dtype, device=qa_MK.device)

    def grid(meta: dict) -> tuple[int]:
        return (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

    _fp8_gemm_kernel[grid](
        qa_MK, qb_NK, c_MN, sa_MKb, sb, M, N, K,
        qa_MK.stride(0), qa_MK.stride(1), qb_NK.stride(0), qb_NK.stride(1), c_MN.stride(0), c_MN.stride(1),
        sa_MKb.stride(0), sa_MKb.stride(1), sb.stride(0), sb.stride(1),
        SB_DIV=block if b_scale == "block" else 1, BLOCK_K=block,
    )  # fmt: skip
    return c_MN


def scaled_mm_blockwise(
    qa_MK: torch.Tensor,
    sa_MKb: torch.Tensor,
    qb_NK: torch.Tensor,
    sb: torch.Tensor,
    block: int = 128,
    b_scale: str = "block",
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The same block-scaled GEMM built from ``torch._scaled_mm`` with row-wise scales, one call per K-block:
    within K-block kb the scales are a column vector s_A[:, kb] and a row vector s_B[n', kb], so
    C = Σ_kb _scaled_mm(q_A[:, kb], q_B[:, kb]ᵀ, s_A[:, kb], s_B[n', kb]) — exact on the CPU (FP32 partials);
    on CUDA the partials are bf16 (see below). One launch per K-block: a tested fallback, not a fast path."""
    M, K = qa_MK.shape
    N = qb_NK.shape[0]
    Kb = cdiv(K, block)
    c_MN = torch.zeros((M, N), dtype=torch.float32, device=qa_MK.device)
    # cuBLASLt's row-wise scaling returns bf16 only: on CUDA each K-block's partial sum is rounded to bf16
    # (relative 2^-9, far below the FP8 error) before the FP32 sum; on the CPU the partials stay FP32.
    part_dtype = torch.bfloat16 if qa_MK.is_cuda else torch.float32
    for kb in range(Kb):
        lo, hi = kb * block, min(K, (kb + 1) * block)
        sa_M1 = sa_MKb[:, kb : kb + 1].contiguous().float()
        sb_N = sb[:, kb].repeat_interleave(block)[:N] if b_scale == "block" else sb[:, kb]
        a = qa_MK[:, lo:hi].contiguous()
        b = qb_NK[:, lo:hi].contiguous().t()  # column-major K×N, as the GPU kernel requires
        if hi - lo < 16 and a.is_cuda:  # cuBLAS needs K a multiple of 16: zero-pad the last block
            pad = 16 - (hi - lo)
            a = torch.nn.functional.pad(a.float(), (0, pad)).to(a.dtype)
            b = torch.nn.functional.pad(b.t().float(), (0, pad)).to(b.dtype).t()
        c_MN += torch._scaled_mm(
            a, b, scale_a=sa_M1, scale_b=sb_N[None, :].contiguous().float(), out_dtype=part_dtype
        ).float()
    return c_MN.to(out_dtype)
