"""MoE grouped GEMM over expert-sorted tokens (Triton), in bf16/fp32 and FP8 block-scaled form.

Tokens are sorted by expert and each expert's group is zero-padded to a multiple of ``align`` rows (the
"padded layout", R rows; an expert with zero tokens has zero rows), so every BLOCK_M row tile
(BLOCK_M | align) belongs to exactly one expert, found from
``block_expert`` (one entry per ``align`` rows). Formulas:

    forward / input grad   y[r, n] = Σ_k x[r, k] · w[e(r), k, n]   (w_EKN, any strides: w_EDF or w_EFDᵀ)
    weight grad            dw[e, m, n] = Σ_{r ∈ group e} a[r, m] · b[r, n]   (a = x, b = dy)

FP8 (Ling 2.0 sec. 5.1): x in 1×B tiles along k, w in B×B blocks per expert; for the weight gradient both
operands are quantised in 1×B tiles along the token dim (``align`` % B == 0 keeps a tile in one group), and

    y[r, n] = Σ_kb s_x[r, kb] · s_w[e, kb, n // B] · Σ_{k ∈ kb} q_x[r, k] · q_w[e, k, n].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._triton_utils import gemm_configs, grouped_tile, is_interpret, prune_block_m
from kernels.reference import cdiv


@dataclass(frozen=True)
class GroupLayout:
    """Padded layout of expert-sorted tokens: sorted row i of group e goes to row ``dest_rows_T[i]``."""

    group_sizes_E: torch.Tensor  # int64 [E], real tokens per expert
    padded_starts_E: torch.Tensor  # int64 [E], first padded row of each group (multiple of align)
    dest_rows_T: torch.Tensor  # int64 [T], padded row of each sorted token
    block_expert: torch.Tensor  # int32 [R // align], expert owning each align-row block
    n_rows: int  # R
    align: int


def make_group_layout(group_sizes_E: torch.Tensor, align: int) -> GroupLayout:
    """Pad each expert's group to a multiple of ``align`` rows (zero-token experts get zero rows)."""
    sizes_E = group_sizes_E.to(torch.int64)
    padded_E = (sizes_E + align - 1) // align * align
    padded_starts_E = torch.cumsum(padded_E, 0) - padded_E
    starts_E = torch.cumsum(sizes_E, 0) - sizes_E
    E = sizes_E.shape[0]
    expert_T = torch.repeat_interleave(torch.arange(E, device=sizes_E.device), sizes_E)
    rank_T = torch.arange(expert_T.shape[0], device=sizes_E.device) - starts_E[expert_T]
    dest_rows_T = padded_starts_E[expert_T] + rank_T
    block_expert = torch.repeat_interleave(torch.arange(E, device=sizes_E.device), padded_E // align)
    return GroupLayout(
        group_sizes_E=sizes_E,
        padded_starts_E=padded_starts_E,
        dest_rows_T=dest_rows_T,
        block_expert=block_expert.to(torch.int32),
        n_rows=int(padded_E.sum()),
        align=align,
    )


def to_padded(x_TD: torch.Tensor, layout: GroupLayout) -> torch.Tensor:
    """Scatter expert-sorted rows into the zero-padded layout ``x_RD``."""
    x_RD = x_TD.new_zeros((layout.n_rows, x_TD.shape[1]))
    x_RD[layout.dest_rows_T.to(x_TD.device)] = x_TD
    return x_RD


@triton.jit
def _grouped_gemm_jit(
    x_ptr, w_ptr, y_ptr, sx_ptr, sw_ptr, block_expert_ptr, R, N, K,
    stride_xr, stride_xk, stride_we, stride_wk, stride_wn, stride_yr, stride_yn,
    stride_sxr, stride_sxk, stride_swe, stride_swk, stride_swn,
    ALIGN: tl.constexpr, IS_FP8: tl.constexpr, QBLOCK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = grouped_tile(tl.program_id(0), R, N, BLOCK_M, BLOCK_N, GROUP_M)

    e = tl.load(block_expert_ptr + (pid_m * BLOCK_M) // ALIGN).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < R
    mask_n = offs_n < N
    x_ptrs = x_ptr + offs_m[:, None] * stride_xr + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + e * stride_we + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - kb * BLOCK_K
        x = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
        w = tl.load(w_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        if IS_FP8:  # BLOCK_K == QBLOCK: one scale per row of x and per column block of w
            sx = tl.load(sx_ptr + offs_m * stride_sxr + kb * stride_sxk, mask=mask_m, other=0.0)
            sw_ptrs = sw_ptr + e * stride_swe + kb * stride_swk + (offs_n // QBLOCK) * stride_swn
            sw = tl.load(sw_ptrs, mask=mask_n, other=0.0)
            acc += tl.dot(x, w, out_dtype=tl.float32) * sx[:, None] * sw[None, :]
        elif UPCAST:  # interpreter: tl.dot on bf16 is wrong there, so compute in fp32
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        elif IEEE:  # fp32 inputs: true fp32 products (the GPU default would be tf32)
            acc += tl.dot(x, w, input_precision="ieee")
        else:
            acc += tl.dot(x, w)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    y_ptrs = y_ptr + offs_m[:, None] * stride_yr + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _grouped_wgrad_jit(
    a_ptr, b_ptr, dw_ptr, sa_ptr, sb_ptr, starts_ptr, sizes_ptr, M, N,
    stride_am, stride_ar, stride_bn, stride_br, stride_de, stride_dm, stride_dn,
    stride_sam, stride_sar, stride_sbn, stride_sbr,
    IS_FP8: tl.constexpr, QBLOCK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    e = tl.program_id(1).to(tl.int64)
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    start = tl.load(starts_ptr + e)
    size = tl.load(sizes_ptr + e)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + (start + offs_r[None, :]) * stride_ar
    b_ptrs = b_ptr + (start + offs_r[:, None]) * stride_br + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for rb in range(0, tl.cdiv(size, BLOCK_K)):
        r_left = size - rb * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & (offs_r[None, :] < r_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_r[:, None] < r_left) & mask_n[None, :], other=0.0)
        if IS_FP8:  # BLOCK_K == QBLOCK and start % QBLOCK == 0: one token tile per step
            tile = start // QBLOCK + rb
            sa = tl.load(sa_ptr + offs_m * stride_sam + tile * stride_sar, mask=mask_m, other=0.0)
            sb = tl.load(sb_ptr + offs_n * stride_sbn + tile * stride_sbr, mask=mask_n, other=0.0)
            acc += tl.dot(a, b, out_dtype=tl.float32) * sa[:, None] * sb[None, :]
        elif UPCAST:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        elif IEEE:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.dot(a, b)
        a_ptrs += BLOCK_K * stride_ar
        b_ptrs += BLOCK_K * stride_br
    dw_ptrs = dw_ptr + e * stride_de + offs_m[:, None] * stride_dm + offs_n[None, :] * stride_dn
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# Two autotuned launchers per kernel: bf16/fp32 tunes BLOCK_K, FP8 fixes it to the quantisation block.
_PRUNE = {"early_config_prune": prune_block_m}
_grouped_gemm_tuned = triton.autotune(gemm_configs(True), key=["N", "K"], prune_configs_by=_PRUNE)(
    _grouped_gemm_jit
)
_grouped_gemm_fp8 = triton.autotune(gemm_configs(False), key=["N", "K"], prune_configs_by=_PRUNE)(
    _grouped_gemm_jit
)
_grouped_wgrad_tuned = triton.autotune(gemm_configs(True), key=["M", "N"])(_grouped_wgrad_jit)
_grouped_wgrad_fp8 = triton.autotune(gemm_configs(False), key=["M", "N"])(_grouped_wgrad_jit)


def _launch_grouped(
    x_RK: torch.Tensor,
    w_EKN: torch.Tensor,
    block_expert: torch.Tensor,
    align: int,
    out_dtype: torch.dtype,
    sx: torch.Tensor | None = None,
    sw: torch.Tensor | None = None,
    block: int = 128,
) -> torch.Tensor:
    R, K = x_RK.shape
    E, K2, N = w_EKN.shape
    if K != K2:
        raise ValueError(f"inner dims differ: x is {R}x{K}, w is {E}x{K2}x{N}")
    if R % align or block_expert.shape[0] != R // align:
        raise ValueError(
            f"x has {R} rows: expected the padded layout ({block_expert.shape[0]} blocks of {align})"
        )
    y_RN = torch.empty((R, N), dtype=out_dtype, device=x_RK.device)
    if R == 0:
        return y_RN
    is_fp8 = sx is not None
    dummy = torch.empty(1, 1, 1, dtype=torch.float32, device=x_RK.device)
    sx_ = sx if is_fp8 else dummy[0]
    sw_ = sw if is_fp8 else dummy
    extra = {"BLOCK_K": block} if is_fp8 else {}

    def grid(meta: dict) -> tuple[int]:
        return (cdiv(R, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

    kernel = _grouped_gemm_fp8 if is_fp8 else _grouped_gemm_tuned
    kernel[grid](
        x_RK, w_EKN, y_RN, sx_, sw_, block_expert, R, N, K,
        x_RK.stride(0), x_RK.stride(1), w_EKN.stride(0), w_EKN.stride(1), w_EKN.stride(2),
        y_RN.stride(0), y_RN.stride(1), sx_.stride(0), sx_.stride(1),
        sw_.stride(0), sw_.stride(1), sw_.stride(2),
        ALIGN=align, IS_FP8=is_fp8, QBLOCK=block, UPCAST=is_interpret(),
        IEEE=x_RK.dtype == torch.float32, **extra,
    )  # fmt: skip
    return y_RN


def _launch_wgrad(
    a_MR: torch.Tensor,
    b_NR: torch.Tensor,
    layout: GroupLayout,
    out_dtype: torch.dtype,
    sa: torch.Tensor | None = None,
    sb: torch.Tensor | None = None,
    block: int = 128,
) -> torch.Tensor:
    M, R = a_MR.shape
    N, R2 = b_NR.shape
    if R != R2 or R != layout.n_rows:
        raise ValueError(f"a has {R} rows, b has {R2}, layout has {layout.n_rows}")
    E = layout.group_sizes_E.shape[0]
    dw_EMN = torch.empty((E, M, N), dtype=out_dtype, device=a_MR.device)
    is_fp8 = sa is not None
    dummy = torch.empty(1, 1, dtype=torch.float32, device=a_MR.device)
    sa_ = sa if is_fp8 else dummy
    sb_ = sb if is_fp8 else dummy
    starts_E = layout.padded_starts_E.to(a_MR.device)
    sizes_E = layout.group_sizes_E.to(a_MR.device)

    def grid(meta: dict) -> tuple[int, int]:
        return (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]), E)

    kernel = _grouped_wgrad_fp8 if is_fp8 else _grouped_wgrad_tuned
    kernel[grid](
        a_MR, b_NR, dw_EMN, sa_, sb_, starts_E, sizes_E, M, N,
        a_MR.stride(0), a_MR.stride(1), b_NR.stride(0), b_NR.stride(1),
        dw_EMN.stride(0), dw_EMN.stride(1), dw_EMN.stride(2),
        sa_.stride(0), sa_.stride(1), sb_.stride(0), sb_.stride(1),
        IS_FP8=is_fp8, QBLOCK=block, UPCAST=is_interpret(), IEEE=a_MR.dtype == torch.float32,
        **({"BLOCK_K": block} if is_fp8 else {}),
    )  # fmt: skip
    return dw_EMN


def grouped_gemm_padded(
    x_RK: torch.Tensor, w_EKN: torch.Tensor, layout: GroupLayout, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """bf16/fp32 grouped GEMM on the padded layout: y[r] = x[r] · w[e(r)] (w: any strides)."""
    block_expert = layout.block_expert.to(x_RK.device)
    return _launch_grouped(x_RK, w_EKN, block_expert, layout.align, out_dtype or x_RK.dtype)


def fp8_grouped_gemm_padded(
    qx_RK: torch.Tensor,
    sx_RKb: torch.Tensor,
    qw_EKN: torch.Tensor,
    sw_EKbNb: torch.Tensor,
    layout: GroupLayout,
    block: int = 128,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """FP8 grouped GEMM on the padded layout (module docstring formula). For the input gradient pass the
    transposed views ``qw.transpose(1, 2)`` and ``sw.transpose(1, 2)``."""
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16 for the Triton kernel, got {block}")
    block_expert = layout.block_expert.to(qx_RK.device)
    return _launch_grouped(qx_RK, qw_EKN, block_expert, layout.align, out_dtype, sx_RKb, sw_EKbNb, block)


def grouped_wgrad_padded(
    x_RM: torch.Tensor, dy_RN: torch.Tensor, layout: GroupLayout, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """bf16/fp32 weight gradient: dw[e] = x_eᵀ · dy_e over each group's real rows of the padded layout."""
    return _launch_wgrad(x_RM.t(), dy_RN.t(), layout, out_dtype)


def fp8_grouped_wgrad_padded(
    qx_MR: torch.Tensor,
    sx_MRb: torch.Tensor,
    qdy_NR: torch.Tensor,
    sdy_NRb: torch.Tensor,
    layout: GroupLayout,
    block: int = 128,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """FP8 weight gradient from operands quantised along the token dim (``quantize_cols`` of the padded
    x_RM and dy_RN: 1×block tiles, never crossing a group since ``align`` % block == 0)."""
    if layout.align % block:
        raise ValueError(f"align ({layout.align}) must be a multiple of block ({block})")
    return _launch_wgrad(qx_MR, qdy_NR, layout, out_dtype, sx_MRb, sdy_NRb, block)


def grouped_gemm(
    x_TK: torch.Tensor, w_EKN: torch.Tensor, group_sizes_E: torch.Tensor, align: int = 128
) -> torch.Tensor:
    """bf16/fp32 grouped GEMM on expert-sorted, unpadded tokens: pads, runs the kernel, gathers back."""
    layout = make_group_layout(group_sizes_E.to(x_TK.device), align)
    y_RN = grouped_gemm_padded(to_padded(x_TK, layout), w_EKN, layout)
    return y_RN[layout.dest_rows_T]
