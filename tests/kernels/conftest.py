"""Run Triton kernels in the CPU interpreter unless a GPU is present.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, so it is set here before any kernel
module is imported; if another test package imported them first, they are reloaded under the interpreter.
"""

import importlib
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    for _name in ("kernels.quant", "kernels.fp8_gemm", "kernels.grouped_gemm", "kernels.permute"):
        if _name in sys.modules:
            importlib.reload(sys.modules[_name])

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def gen() -> torch.Generator:
    """Fresh random inputs each run (the seed is printed on failure via the test id's output)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)
