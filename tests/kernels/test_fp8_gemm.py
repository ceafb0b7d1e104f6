"""FP8 block-scaled GEMM (Triton, interpreter on CPU) against the float64 dequantised reference."""

import pytest
import torch
from kernel_testutil import randn, rel_err

from kernels.fp8_gemm import fp8_gemm, scaled_mm_blockwise
from kernels.reference import (
    dequantize_blocks_ref,
    dequantize_rows_ref,
    fp8_gemm_ref,
    quantize_blocks_ref,
    quantize_cols_ref,
    quantize_rows_ref,
)

# (M, N, K, block): aligned, ragged in every dim, and the tiny-model case d=64 < block
SHAPES = [(64, 128, 256, 128), (50, 70, 100, 32), (33, 64, 64, 64), (16, 48, 40, 16)]


@pytest.mark.parametrize("M,N,K,block", SHAPES)
def test_forward(M: int, N: int, K: int, block: int, gen: torch.Generator, device: str) -> None:
    """y = x Wᵀ: kernel vs dequantised fp64 (tight), vs unquantised fp64 (fp8 level, a few %)."""
    x = randn(gen, M, K)
    w = torch.randn(N, K, generator=gen) * 0.02
    qx, sx = quantize_rows_ref(x, block)
    qw, sw = quantize_blocks_ref(w, block)
    y = fp8_gemm(qx.to(device), sx.to(device), qw.to(device), sw.to(device), block, "block", torch.float32)
    assert y.shape == (M, N) and y.dtype == torch.float32
    assert rel_err(y, fp8_gemm_ref(qx, sx, qw, sw, block, "block")) < 1e-5
    assert rel_err(y, x.double() @ w.double().t()) < 0.08


@pytest.mark.parametrize("M,N,K,block", SHAPES[:2])
def test_input_grad_transposed_weight(
    M: int, N: int, K: int, block: int, gen: torch.Generator, device: str
) -> None:
    """dx = dy W, with B = Wᵀ passed as a strided view of the fp8 weight and its transposed block scales."""
    dy = randn(gen, M, N)
    w = torch.randn(N, K, generator=gen) * 0.02
    qd, sd = quantize_rows_ref(dy, block)
    qw, sw = quantize_blocks_ref(w, block)
    dx = fp8_gemm(
        qd.to(device), sd.to(device), qw.to(device).t(), sw.to(device).t(), block, "block", torch.float32
    )
    ref = dequantize_rows_ref(qd, sd, block, torch.float64) @ dequantize_blocks_ref(
        qw, sw, block, torch.float64
    )
    assert dx.shape == (M, K)
    assert rel_err(dx, ref) < 1e-5
    assert rel_err(dx, dy.double() @ w.double()) < 0.08


@pytest.mark.parametrize("T,N,K,block", [(256, 64, 96, 128), (100, 40, 50, 32)])
def test_weight_grad_token_tiles(
    T: int, N: int, K: int, block: int, gen: torch.Generator, device: str
) -> None:
    """dW = dyᵀ x with both operands in 1×block tiles along the token dim ("row" scales for B)."""
    dy = randn(gen, T, N)
    x = randn(gen, T, K)
    qd, sd = quantize_cols_ref(dy, block)
    qx, sx = quantize_cols_ref(x, block)
    dw = fp8_gemm(qd.to(device), sd.to(device), qx.to(device), sx.to(device), block, "row", torch.float32)
    assert dw.shape == (N, K)
    assert rel_err(dw, fp8_gemm_ref(qd, sd, qx, sx, block, "row")) < 1e-5
    assert rel_err(dw, dy.double().t() @ x.double()) < 0.08


def test_scaled_mm_decomposition_matches(gen: torch.Generator) -> None:
    """Block-scaled GEMM as a sum of row-wise torch._scaled_mm calls, one per K-block (runs on CPU)."""
    x, w = randn(gen, 40, 200), torch.randn(72, 200, generator=gen)
    qx, sx = quantize_rows_ref(x, 64)
    qw, sw = quantize_blocks_ref(w, 64)
    assert rel_err(scaled_mm_blockwise(qx, sx, qw, sw, 64, "block"), fp8_gemm_ref(qx, sx, qw, sw, 64)) < 1e-5
    qd, sd = quantize_cols_ref(x, 32)
    assert (
        rel_err(scaled_mm_blockwise(qd, sd, qd, sd, 32, "row"), fp8_gemm_ref(qd, sd, qd, sd, 32, "row"))
        < 1e-5
    )


def test_nan_input_is_not_hidden(device: str) -> None:
    x = torch.ones(16, 32)
    x[3, 5] = float("nan")
    qx, sx = quantize_rows_ref(x, 32)
    qw, sw = quantize_blocks_ref(torch.ones(16, 32), 32)
    y = fp8_gemm(qx.to(device), sx.to(device), qw.to(device), sw.to(device), 32, "block", torch.float32)
    assert torch.isnan(y[3]).all() and torch.isfinite(y[0]).all()
    assert rel_err(y, torch.full((16, 16), 32.0)) == float("inf")


def test_shape_errors() -> None:
    qx, sx = quantize_rows_ref(torch.randn(8, 64), 32)
    qw, sw = quantize_blocks_ref(torch.randn(16, 64), 32)
    with pytest.raises(ValueError, match="inner dims"):
        fp8_gemm(qx, sx, qw[:, :32], sw, 32)
    with pytest.raises(ValueError, match="power of two"):
        fp8_gemm(qx, sx, qw, sw, 24)
    with pytest.raises(ValueError, match="sb has shape"):
        fp8_gemm(qx, sx, qw, sw, 32, "row")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_out_and_autotune(gen: torch.Generator) -> None:
    x = randn(gen, 1000, 1536, device="cuda").bfloat16()
    w = (torch.randn(2048, 1536, generator=gen) * 0.02).cuda()
    qx, sx = quantize_rows_ref(x, 128)
    qw, sw = quantize_blocks_ref(w, 128)
    y = fp8_gemm(qx, sx, qw, sw, 128, "block", torch.bfloat16)
    ref = fp8_gemm_ref(qx, sx, qw, sw, 128)
    assert y.dtype == torch.bfloat16 and rel_err(y, ref) < 1e-2
    assert rel_err(scaled_mm_blockwise(qx, sx, qw, sw, 128), ref) < 5e-3  # bf16 partials on CUDA
