"""trainer.fp8 through its Triton and torch._scaled_mm backends (interpreter on CPU) vs the reference backend.

The backends share numerics (same quantisation, FP32 accumulation), so they must agree to FP32 summation-order
error, far tighter than the FP8 error itself."""

import pytest
import torch
from kernel_testutil import rel_err

from trainer.fp8 import FP8Linear, fp8_grouped_matmul


def _run_linear(backend: str, w: torch.Tensor, x: torch.Tensor, dy: torch.Tensor, block: int):
    lin = FP8Linear(w.shape[1], w.shape[0], block=block, backend=backend)
    lin.weight.data.copy_(w)
    x = x.clone().requires_grad_(True)
    y = lin(x)
    (y * dy).sum().backward()
    return y.detach(), x.grad, lin.weight.grad


@pytest.mark.parametrize("backend", ["triton", "scaled_mm"])
@pytest.mark.parametrize("T,d_in,d_out,block", [(64, 64, 96, 32), (40, 100, 48, 32)])
def test_linear_backends_agree(backend: str, T: int, d_in: int, d_out: int, block: int, gen, device) -> None:
    w = torch.randn(d_out, d_in, generator=gen) * 0.05
    x = torch.randn(T, d_in, generator=gen)
    dy = torch.randn(T, d_out, generator=gen)
    ref = _run_linear("reference", w, x, dy, block)
    got = _run_linear(backend, w.to(device), x.to(device), dy.to(device), block)
    tol = 5e-3 if (backend == "scaled_mm" and device == "cuda") else 1e-5  # bf16 partials on CUDA
    for a, b in zip(got, ref, strict=True):
        assert rel_err(a, b) < tol
    # and the fp8 level against plain fp32
    assert 1e-4 < rel_err(got[0], x @ w.t()) < 0.08


def test_grouped_triton_backend_agrees(gen, device) -> None:
    E, D, F, block = 4, 64, 32, 32
    sizes = torch.tensor([20, 0, 45, 3])
    T = int(sizes.sum())
    x = torch.randn(T, D, generator=gen)
    w = torch.randn(E, D, F, generator=gen) * 0.05
    dy = torch.randn(T, F, generator=gen)
    outs = {}
    for backend, dev in (("reference", "cpu"), ("triton", device)):
        xb = x.to(dev).requires_grad_(True)
        wb = w.to(dev).requires_grad_(True)
        y = fp8_grouped_matmul(xb, wb, sizes, block=block, backend=backend)
        (y * dy.to(dev)).sum().backward()
        outs[backend] = (y.detach(), xb.grad, wb.grad)
    for a, b in zip(outs["triton"], outs["reference"], strict=True):
        assert rel_err(a, b) < 1e-5
    assert outs["triton"][2][1].abs().sum() == 0  # expert with no tokens gets no gradient
