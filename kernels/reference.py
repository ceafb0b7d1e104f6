"""Plain-PyTorch references that define what every Triton kernel in this package computes.

FP8 recipe (Ling 2.0, arXiv 2510.22115, sec. 5.1; the same tiling as DeepSeek-V3, arXiv 2412.19437,
sec. 3.3.2):
E4M3 values (``torch.float8_e4m3fn``, largest finite value ``FP8_MAX = 448``) with one FP32 scale per tile,

    s = amax(|x_tile|) / FP8_MAX,   q = cast_e4m3(clamp(x / s, -FP8_MAX, FP8_MAX)),   x ≈ dequant(q) = q · s,

where a tile is 1×B along the reduction dimension for activations and gradients ("1×128 tiles") and B×B for
weights ("128×128 blocks"). An all-zero tile gets s = 1. Ragged edges (a dimension not divisible by B) are
zero-padded inside the tile, so they do not change the tile's amax. NaN/inf in a tile makes its scale
non-finite, so the GEMM output is NaN there (it is never silently clipped).

Block-scaled GEMM with FP32 accumulation: for C = A·Bᵀ with A (M×K) and B (N×K) both quantised along K,

    C[m, n] = Σ_kb s_A[m, kb] · s_B[n', kb] · Σ_{k ∈ kb} q_A[m, k] · q_B[n, k],

with n' = n for 1×B tiles of B and n' = n // B for B×B weight blocks. The references below compute this in
float64 from the dequantised operands, which is the same sum (scales factor out of each K-block).
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pad_dim(x: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    size = x.shape[dim]
    pad = cdiv(size, multiple) * multiple - size
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """s = amax / FP8_MAX, and s = 1 for an all-zero tile (so q = 0 there). A NaN/inf amax stays in the scale,
    so a non-finite input poisons its tile's dequantised values instead of being hidden."""
    return torch.where(amax == 0, torch.ones_like(amax), amax / FP8_MAX)


def quantize_rows_ref(x_MK: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise in 1×block tiles along the last dim: ``q_MK`` (E4M3), ``s_MKb`` (FP32, Kb = ⌈K/block⌉)."""
    M, K = x_MK.shape
    x_pad = _pad_dim(x_MK.float(), 1, block)
    Kb = x_pad.shape[1] // block
    x_MKbB = x_pad.view(M, Kb, block)
    s_MKb = scale_from_amax(x_MKbB.abs().amax(dim=2))
    q_MKbB = (x_MKbB / s_MKb[:, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q_MKbB.view(M, Kb * block)[:, :K].contiguous(), s_MKb


def quantize_cols_ref(x_TK: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise along the token dim (1×block tiles of xᵀ), the layout the weight gradient needs.

    Returns ``q_KT`` (E4M3, the transposed layout, contiguous) and ``s_KTb`` (FP32, Tb = ⌈T/block⌉)."""
    return quantize_rows_ref(x_TK.t(), block)


def quantize_blocks_ref(w_NK: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise in block×block tiles: returns ``q_NK`` (E4M3) and ``s_NbKb`` (FP32)."""
    N, K = w_NK.shape
    w_pad = _pad_dim(_pad_dim(w_NK.float(), 0, block), 1, block)
    Nb, Kb = w_pad.shape[0] // block, w_pad.shape[1] // block
    w_NbBKbB = w_pad.view(Nb, block, Kb, block)
    s_NbKb = scale_from_amax(w_NbBKbB.abs().amax(dim=(1, 3)))
    q = (w_NbBKbB / s_NbKb[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(Nb * block, Kb * block)[:N, :K].contiguous(), s_NbKb


def dequantize_rows_ref(
    q_MK: torch.Tensor, s_MKb: torch.Tensor, block: int = 128, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """x ≈ q · s for 1×block tiles along the last dim."""
    K = q_MK.shape[1]
    s_MK = s_MKb.repeat_interleave(block, dim=1)[:, :K]
    return (q_MK.to(dtype) * s_MK.to(dtype)).to(dtype)


def dequantize_blocks_ref(
    q_NK: torch.Tensor, s_NbKb: torch.Tensor, block: int = 128, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """w ≈ q · s for block×block tiles."""
    N, K = q_NK.shape
    s_NK = s_NbKb.repeat_interleave(block, dim=0).repeat_interleave(block, dim=1)[:N, :K]
    return q_NK.to(dtype) * s_NK.to(dtype)


def qdq_rows(x_MK: torch.Tensor, block: int = 128) -> torch.Tensor:
    """dequant(quant(x)) in 1×block tiles along the last dim, in x's dtype (the CPU emulation of FP8)."""
    q, s = quantize_rows_ref(x_MK, block)
    return dequantize_rows_ref(q, s, block).to(x_MK.dtype)


def qdq_blocks(w_NK: torch.Tensor, block: int = 128) -> torch.Tensor:
    """dequant(quant(w)) in block×block tiles, in w's dtype."""
    q, s = quantize_blocks_ref(w_NK, block)
    return dequantize_blocks_ref(q, s, block).to(w_NK.dtype)


def fp8_gemm_ref(
    qa_MK: torch.Tensor,
    sa_MKb: torch.Tensor,
    qb_NK: torch.Tensor,
    sb: torch.Tensor,
    block: int = 128,
    b_scale: str = "block",
) -> torch.Tensor:
    """C = dequant(A) · dequant(B)ᵀ in float64 (module docstring formula).

    ``b_scale="block"``: ``sb`` is ``s_NbKb`` (B×B weight blocks); ``"row"``: ``s_NKb`` (1×B tiles)."""
    a_MK = dequantize_rows_ref(qa_MK, sa_MKb, block, torch.float64)
    if b_scale == "block":
        b_NK = dequantize_blocks_ref(qb_NK, sb, block, torch.float64)
    elif b_scale == "row":
        b_NK = dequantize_rows_ref(qb_NK, sb, block, torch.float64)
    else:
        raise ValueError(f"b_scale must be 'block' or 'row', got {b_scale!r}")
    return a_MK @ b_NK.t()


def group_offsets(group_sizes_E: torch.Tensor) -> list[int]:
    """Start offsets [0, g0, g0+g1, ..., T] of expert-sorted token groups."""
    sizes = [int(g) for g in group_sizes_E.tolist()]
    offs = [0]
    for g in sizes:
        offs.append(offs[-1] + g)
    return offs


def grouped_matmul_ref(x_TD: torch.Tensor, w_EDF: torch.Tensor, group_sizes_E: torch.Tensor) -> torch.Tensor:
    """y[t] = x[t] · w[e(t)] for expert-sorted tokens (group e holds rows offs[e]:offs[e+1]), in float64."""
    offs = group_offsets(group_sizes_E)
    if offs[-1] != x_TD.shape[0]:
        raise ValueError(f"group sizes sum to {offs[-1]}, but x has {x_TD.shape[0]} rows")
    y_TF = x_TD.new_zeros((x_TD.shape[0], w_EDF.shape[2]), dtype=torch.float64)
    for e in range(w_EDF.shape[0]):
        lo, hi = offs[e], offs[e + 1]
        if hi > lo:
            y_TF[lo:hi] = x_TD[lo:hi].double() @ w_EDF[e].double()
    return y_TF


def grouped_wgrad_ref(x_TD: torch.Tensor, dy_TF: torch.Tensor, group_sizes_E: torch.Tensor) -> torch.Tensor:
    """dW[e] = x_eᵀ · dy_e over each expert's token group, in float64 (zero for an expert with no tokens)."""
    offs = group_offsets(group_sizes_E)
    E = len(offs) - 1
    dw_EDF = x_TD.new_zeros((E, x_TD.shape[1], dy_TF.shape[1]), dtype=torch.float64)
    for e in range(E):
        lo, hi = offs[e], offs[e + 1]
        if hi > lo:
            dw_EDF[e] = x_TD[lo:hi].double().t() @ dy_TF[lo:hi].double()
    return dw_EDF


def permute_ref(x_TD: torch.Tensor, expert_idx_TK: torch.Tensor, n_experts: int, align: int) -> torch.Tensor:
    """Token permute: copy token t into one row per slot (t, k), grouped by expert e = expert_idx[t, k] in
    slot order (stable), each expert's group zero-padded to a multiple of ``align`` rows. Returns ``x_RD``."""
    T, K = expert_idx_TK.shape
    e_S = expert_idx_TK.reshape(-1)
    counts_E = torch.bincount(e_S, minlength=n_experts)
    padded_E = (counts_E + align - 1) // align * align
    x_RD = x_TD.new_zeros((int(padded_E.sum()), x_TD.shape[1]))
    row = 0
    for e in range(n_experts):
        slots = (e_S == e).nonzero().flatten()
        x_RD[row : row + len(slots)] = x_TD[slots // K]
        row += int(padded_E[e])
    return x_RD


def unpermute_ref(
    y_RF: torch.Tensor, expert_idx_TK: torch.Tensor, weights_TK: torch.Tensor, n_experts: int, align: int
) -> torch.Tensor:
    """Inverse of ``permute_ref`` (weighted scatter-add):
    out[t] = Σ_k weights[t, k] · y[row(t, k)], float64."""
    T, K = expert_idx_TK.shape
    e_S = expert_idx_TK.reshape(-1)
    w_S = weights_TK.reshape(-1).double()
    counts_E = torch.bincount(e_S, minlength=n_experts)
    padded_E = (counts_E + align - 1) // align * align
    out_TF = torch.zeros((T, y_RF.shape[1]), dtype=torch.float64)
    row = 0
    for e in range(n_experts):
        slots = (e_S == e).nonzero().flatten()
        rows = torch.arange(row, row + len(slots))
        out_TF.index_add_(0, slots // K, y_RF[rows].double() * w_S[slots, None])
        row += int(padded_E[e])
    return out_TF


def quantize_expert_blocks_ref(w_EDF: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """block×block quantisation of each expert's matrix: ``q_EDF`` (E4M3) and ``s_EDbFb`` (FP32)."""
    qs = [quantize_blocks_ref(w_EDF[e], block) for e in range(w_EDF.shape[0])]
    return torch.stack([q for q, _ in qs]), torch.stack([s for _, s in qs])


def dequantize_expert_blocks_ref(
    q_EDF: torch.Tensor, s_EDbFb: torch.Tensor, block: int = 128, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    return torch.stack(
        [dequantize_blocks_ref(q_EDF[e], s_EDbFb[e], block, dtype) for e in range(q_EDF.shape[0])]
    )
