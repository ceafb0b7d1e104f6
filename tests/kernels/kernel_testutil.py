"""Helpers shared by the kernel tests."""

import torch

# E4M3: 3 mantissa bits -> round-to-nearest relative error <= 2^-4 for normals;
# subnormal step 2^-9 (in units of the tile scale)
E4M3_REL = 2.0**-4
E4M3_SUBNORMAL_HALF_STEP = 2.0**-10


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN/inf anywhere never passes (returns inf)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out64).all():
        return float("inf")
    return float((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300))


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0, device: str = "cpu") -> torch.Tensor:
    """Gaussian values with a random per-row magnitude spread (exercises per-tile scales)."""
    x = torch.randn(*shape, generator=gen)
    rows = torch.exp(torch.randn(shape[0], *([1] * (len(shape) - 1)), generator=gen))
    return (x * rows * scale).to(device)
