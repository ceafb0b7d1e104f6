"""MoE token permute / unpermute (Triton) around the grouped GEMM.

Each token t picks K experts ``expert_idx_TK``; its K "slots" s = t·K + k are sorted by expert (stable, so a
group keeps token order) and each expert's group is zero-padded to a multiple of ``align`` rows
(``grouped_gemm.make_group_layout``; experts with zero tokens get zero rows). Then

    permute:    x_pad[row(s)] = x[s // K]                          (gather into the padded layout)
    unpermute:  out[t] = Σ_k weights[t, k] · y_pad[row(t·K + k)]  (weighted scatter-add, per-token gather)

The unpermute sums each token's K rows in a fixed order in FP32, so it is deterministic (no atomics).
References: ``reference.permute_ref`` / ``unpermute_ref``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._triton_utils import triton_usable
from kernels.grouped_gemm import GroupLayout, make_group_layout
from kernels.reference import cdiv


@dataclass(frozen=True)
class Permutation:
    """Where each token-slot goes: ``slot_rows_S[t·K + k]`` is its row in the padded, expert-sorted layout."""

    layout: GroupLayout
    slot_rows_S: torch.Tensor  # int64 [T·K]
    sorted_slots_S: torch.Tensor  # int64 [T·K], slots in expert-sorted order
    top_k: int


def make_permutation(expert_idx_TK: torch.Tensor, n_experts: int, align: int = 128) -> Permutation:
    """Sort token-slots by expert and pad each expert's group to ``align`` rows."""
    T, K = expert_idx_TK.shape
    e_S = expert_idx_TK.reshape(-1).to(torch.int64)
    sorted_slots_S = torch.argsort(e_S, stable=True)
    group_sizes_E = torch.bincount(e_S, minlength=n_experts)
    layout = make_group_layout(group_sizes_E, align)
    slot_rows_S = torch.empty_like(e_S)
    slot_rows_S[sorted_slots_S] = layout.dest_rows_T
    return Permutation(layout=layout, slot_rows_S=slot_rows_S, sorted_slots_S=sorted_slots_S, top_k=K)


@triton.jit
def _permute_kernel(
    x_ptr, out_ptr, rows_ptr, D, stride_xt, stride_xd, stride_or, stride_od,
    TOP_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    s = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs_d < D
    row = tl.load(rows_ptr + s)
    t = s // TOP_K
    v = tl.load(x_ptr + t * stride_xt + offs_d * stride_xd, mask=mask)
    tl.store(out_ptr + row * stride_or + offs_d * stride_od, v, mask=mask)


@triton.jit
def _unpermute_kernel(
    y_ptr, w_ptr, out_ptr, rows_ptr, D, stride_yr, stride_yd, stride_ot, stride_od,
    TOP_K: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs_d < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for k in range(TOP_K):
        row = tl.load(rows_ptr + t * TOP_K + k)
        gate = tl.load(w_ptr + t * TOP_K + k).to(tl.float32)
        y = tl.load(y_ptr + row * stride_yr + offs_d * stride_yd, mask=mask, other=0.0)
        acc += gate * y.to(tl.float32)
    tl.store(out_ptr + t * stride_ot + offs_d * stride_od, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _block_d(D: int) -> int:
    return min(1024, triton.next_power_of_2(max(D, 16)))


def permute(x_TD: torch.Tensor, perm: Permutation) -> torch.Tensor:
    """Gather tokens into the padded expert-sorted layout ``x_RD`` (padding rows are zero)."""
    T, D = x_TD.shape
    x_RD = x_TD.new_zeros((perm.layout.n_rows, D))
    if not triton_usable(x_TD):
        x_RD[perm.slot_rows_S] = x_TD.repeat_interleave(perm.top_k, dim=0)
        return x_RD
    rows = perm.slot_rows_S.to(x_TD.device)
    S = rows.shape[0]
    if S:
        grid = (S, cdiv(D, _block_d(D)))
        _permute_kernel[grid](
            x_TD, x_RD, rows, D, x_TD.stride(0), x_TD.stride(1), x_RD.stride(0), x_RD.stride(1),
            TOP_K=perm.top_k, BLOCK_D=_block_d(D),
        )  # fmt: skip
    return x_RD


def unpermute(y_RD: torch.Tensor, perm: Permutation, weights_TK: torch.Tensor) -> torch.Tensor:
    """Weighted combine back to token order: out[t] = Σ_k weights[t, k] · y[row(t, k)], in y's dtype."""
    T, K = weights_TK.shape
    D = y_RD.shape[1]
    if not triton_usable(y_RD):
        rows_TK = perm.slot_rows_S.view(T, K)
        out = (y_RD[rows_TK].float() * weights_TK[:, :, None].float()).sum(dim=1)
        return out.to(y_RD.dtype)
    out_TD = torch.empty((T, D), dtype=y_RD.dtype, device=y_RD.device)
    if T:
        w = weights_TK.contiguous()
        rows = perm.slot_rows_S.to(y_RD.device)
        grid = (T, cdiv(D, _block_d(D)))
        _unpermute_kernel[grid](
            y_RD, w, out_TD, rows, D, y_RD.stride(0), y_RD.stride(1), out_TD.stride(0), out_TD.stride(1),
            TOP_K=K, BLOCK_D=_block_d(D),
        )  # fmt: skip
    return out_TD
