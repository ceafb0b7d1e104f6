"""MoE grouped GEMM (Triton, interpreter on CPU): ragged groups incl. empty ones, fp32/bf16/FP8."""

import pytest
import torch
from kernel_testutil import randn, rel_err

from kernels._triton_utils import is_interpret
from kernels.grouped_gemm import (
    fp8_grouped_gemm_padded,
    fp8_grouped_wgrad_padded,
    grouped_gemm,
    grouped_gemm_padded,
    grouped_wgrad_padded,
    make_group_layout,
    to_padded,
)
from kernels.reference import (
    dequantize_expert_blocks_ref,
    dequantize_rows_ref,
    grouped_matmul_ref,
    grouped_wgrad_ref,
    quantize_cols_ref,
    quantize_expert_blocks_ref,
    quantize_rows_ref,
)

ALIGN = 32 if is_interpret() else 128


def ragged_sizes(gen: torch.Generator, E: int, max_tokens: int) -> torch.Tensor:
    """Random group sizes with at least one empty expert (index chosen at random) and one > ALIGN."""
    sizes = torch.randint(0, max_tokens, (E,), generator=gen)
    empty, big = torch.randperm(E, generator=gen)[:2].tolist()
    sizes[empty] = 0
    sizes[big] = ALIGN + 1 + int(torch.randint(0, ALIGN, (1,), generator=gen))
    return sizes


def test_layout(gen: torch.Generator) -> None:
    sizes = torch.tensor([3, 0, 40, 32, 0])
    lay = make_group_layout(sizes, 32)
    assert lay.n_rows == 32 + 64 + 32
    assert lay.padded_starts_E.tolist() == [0, 32, 32, 96, 128]
    assert lay.block_expert.tolist() == [0, 2, 2, 3]
    assert lay.dest_rows_T.tolist() == [0, 1, 2, *range(32, 72), *range(96, 128)]
    x = torch.arange(75.0)[:, None]
    xp = to_padded(x, lay)
    assert xp[3:32].abs().sum() == 0 and torch.equal(xp[lay.dest_rows_T], x)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_grouped_gemm(dtype: torch.dtype, tol: float, gen: torch.Generator, device: str) -> None:
    E, D, F = 5, 64, 96
    sizes = ragged_sizes(gen, E, 40)
    x = randn(gen, int(sizes.sum()), D)
    w = torch.randn(E, D, F, generator=gen) / D**0.5
    y = grouped_gemm(x.to(device, dtype), w.to(device, dtype), sizes, align=ALIGN)
    assert y.dtype == dtype and y.shape == (x.shape[0], F)
    ref = grouped_matmul_ref(x.to(dtype), w.to(dtype), sizes)  # same rounded inputs, fp64 math
    assert rel_err(y, ref) < tol


def test_grouped_gemm_transposed_weights_for_input_grad(gen: torch.Generator, device: str) -> None:
    """dx = dy · w[e]ᵀ via a strided view of w_EDF (no copy)."""
    E, D, F = 4, 48, 64
    sizes = ragged_sizes(gen, E, 30)
    dy = randn(gen, int(sizes.sum()), F)
    w = torch.randn(E, D, F, generator=gen)
    lay = make_group_layout(sizes, ALIGN)
    dx = grouped_gemm_padded(to_padded(dy, lay).to(device), w.to(device).transpose(1, 2), lay)
    assert rel_err(dx[lay.dest_rows_T.to(device)], grouped_matmul_ref(dy, w.transpose(1, 2), sizes)) < 1e-5


def test_grouped_wgrad(gen: torch.Generator, device: str) -> None:
    E, D, F = 4, 40, 72
    sizes = ragged_sizes(gen, E, 50)
    x, dy = randn(gen, int(sizes.sum()), D), randn(gen, int(sizes.sum()), F)
    lay = make_group_layout(sizes, ALIGN)
    dw = grouped_wgrad_padded(to_padded(x, lay).to(device), to_padded(dy, lay).to(device), lay)
    ref = grouped_wgrad_ref(x, dy, sizes)
    assert dw.shape == (E, D, F) and rel_err(dw, ref) < 1e-5
    empty = (sizes == 0).nonzero().flatten()
    assert dw[empty].abs().sum() == 0


@pytest.mark.parametrize("block", [32, 16])
def test_fp8_grouped_forward_and_input_grad(block: int, gen: torch.Generator, device: str) -> None:
    E, D, F = 5, 64, 80
    sizes = ragged_sizes(gen, E, 40)
    T = int(sizes.sum())
    x, dy = randn(gen, T, D), randn(gen, T, F)
    w = torch.randn(E, D, F, generator=gen) * 0.05
    lay = make_group_layout(sizes, ALIGN)
    rows = lay.dest_rows_T
    qw, sw = quantize_expert_blocks_ref(w, block)
    wd = dequantize_expert_blocks_ref(qw, sw, block, torch.float64)
    qx, sx = quantize_rows_ref(to_padded(x, lay), block)
    y = fp8_grouped_gemm_padded(
        qx.to(device), sx.to(device), qw.to(device), sw.to(device), lay, block, torch.float32
    )
    xd = dequantize_rows_ref(qx, sx, block, torch.float64)[rows]
    assert rel_err(y[rows.to(device)], grouped_matmul_ref(xd, wd, sizes)) < 1e-5
    assert rel_err(y[rows.to(device)], grouped_matmul_ref(x, w, sizes)) < 0.08
    qd, sd = quantize_rows_ref(to_padded(dy, lay), block)
    dx = fp8_grouped_gemm_padded(
        qd.to(device), sd.to(device), qw.to(device).transpose(1, 2), sw.to(device).transpose(1, 2),
        lay, block,
        torch.float32,
    )  # fmt: skip
    dyd = dequantize_rows_ref(qd, sd, block, torch.float64)[rows]
    assert rel_err(dx[rows.to(device)], grouped_matmul_ref(dyd, wd.transpose(1, 2), sizes)) < 1e-5
    assert rel_err(dx[rows.to(device)], grouped_matmul_ref(dy, w.transpose(1, 2), sizes)) < 0.08


def test_fp8_grouped_wgrad(gen: torch.Generator, device: str) -> None:
    E, D, F, block = 4, 48, 64, 32
    sizes = ragged_sizes(gen, E, 50)
    T = int(sizes.sum())
    x, dy = randn(gen, T, D), randn(gen, T, F)
    lay = make_group_layout(sizes, ALIGN)
    qx, sx = quantize_cols_ref(to_padded(x, lay), block)
    qd, sd = quantize_cols_ref(to_padded(dy, lay), block)
    dw = fp8_grouped_wgrad_padded(qx.to(device), sx.to(device), qd.to(device), sd.to(device), lay, block)
    xd = dequantize_rows_ref(qx, sx, block, torch.float64).t()[lay.dest_rows_T]
    dyd = dequantize_rows_ref(qd, sd, block, torch.float64).t()[lay.dest_rows_T]
    assert rel_err(dw, grouped_wgrad_ref(xd, dyd, sizes)) < 1e-5
    assert rel_err(dw, grouped_wgrad_ref(x, dy, sizes)) < 0.08
    with pytest.raises(ValueError, match="multiple of block"):
        fp8_grouped_wgrad_padded(qx, sx, qd, sd, make_group_layout(sizes, 16), 32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_grouped_dot(gen: torch.Generator) -> None:
    """Real bf16 tl.dot on hardware (garbage under the interpreter: GPU-only) with Hopper autotune configs."""
    E, D, F = 8, 512, 1024
    sizes = ragged_sizes(gen, E, 700)
    x = randn(gen, int(sizes.sum()), D).cuda().bfloat16()
    w = (torch.randn(E, D, F, generator=gen) / D**0.5).cuda().bfloat16()
    y = grouped_gemm(x, w, sizes.cuda(), align=128)
    assert rel_err(y, grouped_matmul_ref(x.cpu(), w.cpu(), sizes)) < 1e-2
