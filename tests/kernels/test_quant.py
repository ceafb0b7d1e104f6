"""Block-wise E4M3 quantisation: the PyTorch reference's properties, and the Triton quantisers against it."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_testutil import E4M3_REL, E4M3_SUBNORMAL_HALF_STEP, randn, rel_err

from kernels.quant import (
    quantize_blocks,
    quantize_cols,
    quantize_rows,
    triton_quantize_blocks,
    triton_quantize_rows,
)
from kernels.reference import (
    FP8_DTYPE,
    FP8_MAX,
    dequantize_blocks_ref,
    dequantize_rows_ref,
    quantize_blocks_ref,
    quantize_cols_ref,
    quantize_expert_blocks_ref,
    quantize_rows_ref,
)


@settings(max_examples=25, deadline=None)
@given(
    M=st.integers(1, 9),
    K=st.integers(1, 300),
    block=st.sampled_from([16, 32, 128]),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-20, 20),
)
def test_rows_elementwise_error_bound(M: int, K: int, block: int, seed: int, log_scale: float) -> None:
    """|dequant(quant(x)) - x| <= 2^-4 |x| + 2^-10 s per element (E4M3 rounding), scales = tile amax / 448."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * 2.0**log_scale
    q, s = quantize_rows_ref(x, block)
    assert q.dtype == FP8_DTYPE and q.shape == (M, K) and s.shape == (M, -(-K // block))
    amax = torch.nn.functional.pad(x.abs(), (0, s.shape[1] * block - K)).view(M, -1, block).amax(2)
    torch.testing.assert_close(s, amax / FP8_MAX, rtol=1e-6, atol=0)
    xd = dequantize_rows_ref(q, s, block, torch.float64)
    s_MK = s.double().repeat_interleave(block, 1)[:, :K]
    bound = E4M3_REL * x.double().abs() + E4M3_SUBNORMAL_HALF_STEP * s_MK
    assert torch.isfinite(xd).all()
    assert ((xd - x.double()).abs() <= bound * (1 + 1e-6)).all()
    # the tile's largest element maps to +-448 exactly
    assert q.float().abs().amax() == FP8_MAX


def test_zero_tiles_and_saturation() -> None:
    x = torch.zeros(3, 256)
    x[1, 130] = 5.0
    q, s = quantize_rows_ref(x, 128)
    assert torch.equal(s[0], torch.ones(2)) and s[1, 0] == 1.0
    assert s[1, 1] == pytest.approx(5.0 / 448)
    assert q.float()[1, 130] == 448.0 and q.float().abs().sum() == 448.0
    w = torch.zeros(200, 100)
    qw, sw = quantize_blocks_ref(w, 128)
    assert torch.equal(sw, torch.ones(2, 1)) and not qw.float().any()


def test_non_finite_input_poisons_its_tile() -> None:
    x = torch.ones(2, 64)
    x[0, 3] = float("nan")
    x[1, 40] = float("inf")
    q, s = quantize_rows_ref(x, 32)
    xd = dequantize_rows_ref(q, s, 32)
    assert torch.isnan(xd[0, :32]).all() and torch.isfinite(xd[0, 32:]).all()
    assert not torch.isfinite(xd[1, 32:]).all() and torch.isfinite(xd[1, :32]).all()


def test_blocks_reference(gen: torch.Generator) -> None:
    w = torch.randn(200, 130, generator=gen) * 0.02
    q, s = quantize_blocks_ref(w, 64)
    assert s.shape == (4, 3)
    torch.testing.assert_close(s[1, 2], w[64:128, 128:].abs().amax() / FP8_MAX)
    wd = dequantize_blocks_ref(q, s, 64, torch.float64)
    assert rel_err(wd, w) < 0.05
    assert ((wd - w.double()).abs() <= E4M3_REL * w.double().abs() + 1e-3 * s.max().item()).all()


def test_cols_is_rows_of_transpose(gen: torch.Generator) -> None:
    x = torch.randn(150, 40, generator=gen)
    q, s = quantize_cols_ref(x, 32)
    q2, s2 = quantize_rows_ref(x.t().contiguous(), 32)
    assert q.shape == (40, 150) and s.shape == (40, 5)
    assert torch.equal(q.float(), q2.float()) and torch.equal(s, s2)


def test_dispatch_on_cpu_is_reference(gen: torch.Generator) -> None:
    x = randn(gen, 8, 100)
    for fn, ref in ((quantize_rows, quantize_rows_ref), (quantize_blocks, quantize_blocks_ref)):
        (q, s), (qr, sr) = fn(x, 32), ref(x, 32)
        assert torch.equal(q.float(), qr.float()) and torch.equal(s, sr)
    q, s = quantize_cols(x, 32)
    qr, sr = quantize_cols_ref(x, 32)
    assert torch.equal(q.float(), qr.float()) and torch.equal(s, sr)


@pytest.mark.parametrize("M,K,block", [(40, 200, 64), (64, 256, 128), (7, 33, 16)])
def test_triton_quantize_rows(M: int, K: int, block: int, gen: torch.Generator, device: str) -> None:
    """Scales must match exactly; values are compared loosely on the CPU (the interpreter's fp32->fp8 cast is
    wrong upstream, docs/DESIGN.md "Platform") and bit-exactly on a GPU (test_triton_quant_bitexact_gpu)."""
    x = randn(gen, M, K, device=device)
    q, s = triton_quantize_rows(x, block)
    qr, sr = quantize_rows_ref(x.cpu(), block)
    torch.testing.assert_close(s.cpu(), sr, rtol=1e-6, atol=0)
    assert rel_err(dequantize_rows_ref(q.cpu(), s.cpu(), block), x) < 0.15
    # transposed (strided) input: the weight-gradient layout
    qt, st_ = triton_quantize_rows(x.t(), block)
    torch.testing.assert_close(st_.cpu(), quantize_cols_ref(x.cpu(), block)[1], rtol=1e-6, atol=0)
    assert rel_err(dequantize_rows_ref(qt.cpu(), st_.cpu(), block), x.t()) < 0.15


def test_triton_quantize_blocks(gen: torch.Generator, device: str) -> None:
    w = randn(gen, 200, 130, scale=0.02, device=device)
    q, s = triton_quantize_blocks(w, 64)
    qr, sr = quantize_blocks_ref(w.cpu(), 64)
    torch.testing.assert_close(s.cpu(), sr, rtol=1e-6, atol=0)
    assert rel_err(dequantize_blocks_ref(q.cpu(), s.cpu(), 64), w) < 0.15


def test_triton_quantize_stacked_expert_blocks(gen: torch.Generator, device: str) -> None:
    """One launch for all experts of a stacked (E, N, K) weight; per-expert scales as the reference."""
    w = randn(gen, 3, 64, 96, scale=0.05, device=device)
    q, s = triton_quantize_blocks(w, 32)
    assert q.shape == (3, 64, 96) and s.shape == (3, 2, 3)
    qr, sr = quantize_expert_blocks_ref(w.cpu(), 32)
    torch.testing.assert_close(s.cpu(), sr, rtol=1e-6, atol=0)
    for e in range(3):
        assert rel_err(dequantize_blocks_ref(q[e].cpu(), s[e].cpu(), 32), w[e]) < 0.15
    qc, sc = quantize_blocks(w.cpu(), 32)  # CPU dispatch of a stacked weight
    assert torch.equal(sc, sr) and torch.equal(qc.float(), qr.float())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_quant_bitexact_gpu(gen: torch.Generator) -> None:
    x = randn(gen, 512, 1000, device="cuda").bfloat16()
    q, s = triton_quantize_rows(x, 128)
    qr, sr = quantize_rows_ref(x, 128)
    assert torch.equal(s, sr) and torch.equal(q.view(torch.uint8), qr.view(torch.uint8))
    w = randn(gen, 384, 300, device="cuda")
    q, s = triton_quantize_blocks(w, 128)
    qr, sr = quantize_blocks_ref(w, 128)
    assert torch.equal(s, sr) and torch.equal(q.view(torch.uint8), qr.view(torch.uint8))
