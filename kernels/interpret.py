"""Whether a Triton kernel can run here, answered without importing Triton (CPU installs have none)."""

from __future__ import annotations

import os

import torch


def is_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def triton_usable(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on this tensor: a CUDA tensor, or any tensor under the interpreter."""
    return t.is_cuda or is_interpret()
