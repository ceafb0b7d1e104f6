"""Device peak throughput and model FLOPs utilisation (MFU) for the trainer's reports.

**Peaks.** ``PEAKS`` holds dense (no 2:4 sparsity) tensor-core peak TFLOP/s per GPU from NVIDIA's datasheets,
which print the sparse figure with an asterisk and the dense one beside it (or only the sparse one: dense is
half of it):

- H100 SXM5 and H100 PCIe / H100 NVL: "NVIDIA H100 Tensor Core GPU" datasheet (2023): BF16 1,979* / 1,513* /
  1,671*, FP8 3,958* / 3,026* / 3,341*, TF32 989* / 756* / 835*, FP32 67 / 51 / 60 TFLOP/s (* with sparsity).
- H200 SXM and H200 NVL: "NVIDIA H200 Tensor Core GPU" datasheet (2024): BF16 1,979* / 1,671*, FP8 3,958* /
  3,341*, TF32 989* / 835*, FP32 67 / 60. GH200: "NVIDIA GH200 Grace Hopper Superchip" datasheet, the same
  GPU figures as H100 SXM5.
- A100 (SXM4 and PCIe, 40 and 80 GB): "NVIDIA A100 Tensor Core GPU" datasheet (2021): BF16 312 (624*),
  TF32 156 (312*), FP32 19.5; no FP8 units.
- L40S, L40: "NVIDIA L40S" / "NVIDIA L40" datasheets (2023): BF16 362.05 / 181.05, FP8 733 / 362,
  TF32 183 / 90.5, FP32 91.6 / 90.5 (dense columns). L4: "NVIDIA L4 Tensor Core GPU" datasheet (2023):
  BF16 242*, FP8 485*, TF32 120*, FP32 30.3.

Datasheet peaks are at boost clock; a real 8192^3 BF16 matmul reaches about 80 % of them on an H100
(/work/.library/device/KINDS.md: 798 of 989 TFLOP/s). ``benchmarks/trainer_gpu.py`` measures that ceiling
in the same run so both ratios can be read.

**Which peak.** ``resolve_peak_tflops`` takes, in order: ``run_cfg.parallel.peak_tflops`` (an explicit
per-run value), the environment variable ``WT_PEAK_TFLOPS`` (per machine), then the table for
``torch.cuda.get_device_name()``; a CPU or an unknown GPU gives ``None`` and the loop reports no ``mfu``.
The table's column is chosen by ``mfu_dtype``: bf16 runs use the BF16 peak; **fp8 runs also use the BF16
peak**, the convention under which Ling 2.0 (arXiv 2510.22115, sec. 5.1) reports FP8 as "+15 % MFU" over BF16
(only the GEMMs of attention and FFN run in FP8; against the FP8 peak the same run would show half the MFU);
fp32 runs use the TF32 peak when ``torch.get_float32_matmul_precision()`` lets matmuls use TF32, else the FP32
(CUDA-core) peak.

**Model FLOPs.** MFU = tokens/s x F / (n_gpus x peak), PaLM (Chowdhery et al. 2022, arXiv 2204.02311,
App. B): achieved model FLOP/s over peak, where F counts the FLOPs of the model's own computation per token,
forward and backward (3 x forward), and never re-computation. PaLM's per-token count is 6 N + 12 L H Q T with
N including the (tied) embedding matrix, which in the output layer is a real matmul. Our F is

    F = M(include_mtp=True) + 6 * d_model * V * (1 + n_mtp)

- M: ``trainer.flops.flops_per_token`` (Ling, "Towards Greater Leverage", arXiv 2507.17702, App. C):
  3 x forward of attention projections, attention scores 4 s n_h d_h per layer (QK^T and AV over the full
  s x s, no causal halving, as PaLM's 12 L H Q T = 3 L (4 T H Q)), FFN or active experts + router; the MTP
  modules are included because the trainer runs them.
- 6 d V: the untied output head, 2 d V forward and 4 d V backward per token, once for the main model and once
  per MTP module (each has its own logits). M leaves the head out because Ling's scaling laws do; a GPU
  still spends this time, so MFU counts it. The input embedding is a lookup: no FLOPs.

Causal attention kernels skip about half of the s x s work, so like PaLM's this F over-counts attention a
little at long s; it is a definition, not a measurement, fixed so that MFU compares across runs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from trainer.config import ModelConfig, RunConfig
from trainer.flops import flops_per_token

ENV_PEAK = "WT_PEAK_TFLOPS"
DTYPES = ("bf16", "fp8", "tf32", "fp32")


@dataclass(frozen=True)
class DevicePeak:
    """Dense peak TFLOP/s of one GPU model (``fp8`` None where the GPU has no FP8 tensor cores)."""

    name: str
    bf16: float
    fp8: float | None
    tf32: float
    fp32: float
    source: str

    def get(self, dtype: str) -> float | None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        return getattr(self, dtype)


_H100 = "NVIDIA H100 Tensor Core GPU datasheet"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet"
PEAKS: dict[str, DevicePeak] = {
    p.name: p
    for p in (
        DevicePeak("H100 SXM", bf16=989.4, fp8=1978.9, tf32=494.7, fp32=67.0, source=_H100),
        DevicePeak("H100 PCIe", bf16=756.5, fp8=1513.0, tf32=378.0, fp32=51.0, source=_H100),
        DevicePeak("H100 NVL", bf16=835.5, fp8=1670.5, tf32=417.5, fp32=60.0, source=_H100),
        DevicePeak("H200 SXM", bf16=989.4, fp8=1978.9, tf32=494.7, fp32=67.0, source=_H200),
        DevicePeak("H200 NVL", bf16=835.5, fp8=1670.5, tf32=417.5, fp32=60.0, source=_H200),
        DevicePeak("GH200", bf16=989.4, fp8=1978.9, tf32=494.7, fp32=67.0, source="NVIDIA GH200 datasheet"),
        DevicePeak("A100", bf16=312.0, fp8=None, tf32=156.0, fp32=19.5, source="NVIDIA A100 datasheet"),
        DevicePeak("L40S", bf16=362.05, fp8=733.0, tf32=183.0, fp32=91.6, source="NVIDIA L40S datasheet"),
        DevicePeak("L40", bf16=181.05, fp8=362.0, tf32=90.5, fp32=90.5, source="NVIDIA L40 datasheet"),
        DevicePeak("L4", bf16=121.0, fp8=242.5, tf32=60.0, fp32=30.3, source="NVIDIA L4 datasheet"),
    )
}

# ``torch.cuda.get_device_name()`` strings seen for these GPUs, e.g. "NVIDIA H100 80GB HBM3" (SXM5),
# "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA GH200 480GB", "NVIDIA A100-SXM4-80GB",
# "NVIDIA A100 80GB PCIe", "NVIDIA L40S", "NVIDIA L4". First match wins: specific patterns come first.
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bGH200\b", "GH200"),
    (r"\bH200\b.*\bNVL\b", "H200 NVL"),
    (r"\bH200\b", "H200 SXM"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe"),
    (r"\bH100\b", "H100 SXM"),
    (r"\bA100\b", "A100"),
    (r"\bL40S\b", "L40S"),
    (r"\bL40\b", "L40"),
    (r"\bL4\b", "L4"),
)


def match_device(device_name: str) -> DevicePeak | None:
    """The ``PEAKS`` entry for a ``torch.cuda.get_device_name()`` string, or None if unknown."""
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return PEAKS[key]
    return None


def peak_tflops(device_name: str | None, dtype: str = "bf16") -> float | None:
    """Dense peak TFLOP/s of ``device_name`` for ``dtype`` (bf16 | fp8 | tf32 | fp32); None if unknown."""
    if device_name is None:
        return None
    entry = match_device(device_name)
    return None if entry is None else entry.get(dtype)


def mfu_dtype(precision_dtype: str) -> str:
    """Table column whose peak an MFU of a ``precision.dtype`` run is measured against (module docstring):
    bf16 -> bf16, fp8 -> bf16 (Ling 2.0's convention), fp32 -> tf32 if matmuls may use TF32, else fp32."""
    if precision_dtype in ("bf16", "fp8"):
        return "bf16"
    if precision_dtype == "fp32":
        return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    raise ValueError(f"unknown precision dtype {precision_dtype!r}")


def env_peak_tflops() -> float | None:
    """``WT_PEAK_TFLOPS`` as a float (None when unset or empty); ValueError if it is not a positive number."""
    raw = os.environ.get(ENV_PEAK, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{ENV_PEAK} must be a positive number of TFLOP/s per GPU, got {raw!r}")
    return value


def device_name_of(device: torch.device | str) -> str | None:
    """``torch.cuda.get_device_name`` for a CUDA device; None for anything else (CPU, meta)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device)


def resolve_peak_tflops(run_cfg: RunConfig, device: torch.device | str) -> float | None:
    """Peak TFLOP/s per GPU for this run's MFU: ``parallel.peak_tflops``, else ``WT_PEAK_TFLOPS``, else the
    table entry of ``device`` in the column ``mfu_dtype(precision.dtype)``; None when none applies."""
    if run_cfg.parallel.peak_tflops is not None:
        return run_cfg.parallel.peak_tflops
    env = env_peak_tflops()
    if env is not None:
        return env
    return peak_tflops(device_name_of(device), mfu_dtype(run_cfg.precision.dtype))


def mfu_flops_per_token(model_cfg: ModelConfig) -> float:
    """F, the model FLOPs per trained token that MFU counts (module docstring; PaLM App. B):
    F = M(include_mtp=True) + 6 * d_model * V * (1 + n_mtp)."""
    d_model, vocab = model_cfg.d_model, model_cfg.vocab_size
    head = 6.0 * d_model * vocab * (1 + model_cfg.n_mtp_layers)
    return flops_per_token(model_cfg, include_mtp=True) + head


def mfu(tokens_per_s: float, flops_per_token_F: float, peak_tflops_per_gpu: float, n_gpus: int = 1) -> float:
    """MFU = tokens_per_s * F / (n_gpus * peak * 1e12), tokens/s of the whole (global) batch."""
    if n_gpus < 1 or peak_tflops_per_gpu <= 0:
        raise ValueError(f"need n_gpus >= 1 and peak > 0, got {n_gpus}, {peak_tflops_per_gpu}")
    return tokens_per_s * flops_per_token_F / (n_gpus * peak_tflops_per_gpu * 1e12)
