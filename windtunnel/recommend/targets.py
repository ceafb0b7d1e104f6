"""What the recommender is asked for (a target) and what it must respect (constraints, hardware).

Defaults follow the Ling 2.0 family (Ling 2.0 report, arXiv 2510.22115, Sec. 2 and Table 1; docs/DESIGN.md
"Ling 2.0 architecture"): 256 routed experts, top-8, one shared expert, so A = (8 + 1)/(256 + 1) ≈ 3.5 %;
G = 2·d_model/d_expert = 8; head dim 128; vocabulary 157,184; sequence length 4,096; first
max(1, n_layers // 20) layers dense (1 of 20, 1 of 32, 4 of 80); dense FFN width 2.25·d_model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

LING_ACTIVATION_RATIO = 9 / 257
LING_GRANULARITY = 8.0

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}


def parse_count(text: str | float | int) -> float:
    """Parse ``1T``, ``200B``, ``1.5e12``, ``16.26b`` or a number into a float (K/M/B(G)/T/P suffixes)."""
    if isinstance(text, int | float):
        return float(text)
    s = str(text).strip().replace("_", "").replace(",", "")
    m = re.fullmatch(r"([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtTpP]?)", s)
    if not m:
        raise ValueError(f"cannot read {text!r} as a number (examples: 1T, 200B, 1e12)")
    value = float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1.0)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    if value <= 0:
        raise ValueError(f"{text!r} must be positive")
    return value


@dataclass(frozen=True)
class Target:
    """Exactly one of: compute C (FLOPs, C = M·D); total parameters; a model (RunConfig YAML) + tokens."""

    compute: float | None = None
    total_params: float | None = None
    model_path: Path | None = None
    tokens: float | None = None

    def __post_init__(self) -> None:
        given = [self.compute is not None, self.total_params is not None, self.model_path is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one target: compute, total_params, or model_path (with tokens)")
        if self.model_path is not None and self.tokens is None:
            raise ValueError("a fixed model needs a token count (tokens)")
        if self.model_path is None and self.tokens is not None:
            raise ValueError("tokens go with a fixed model; for a compute target D follows from the laws")

    @property
    def kind(self) -> str:
        if self.compute is not None:
            return "compute"
        if self.total_params is not None:
            return "total_params"
        return "model"


@dataclass(frozen=True)
class Constraints:
    """Architecture, parallel-layout and hardware constraints. ``None`` means "free, chosen by the search".

    Architecture: ``activation_ratio`` and ``granularity`` are tuples of allowed values (the search prefers
    the best efficiency leverage among them); ``a_tolerance`` is the relative error allowed between the
    requested A and the A realised by integer expert counts. ``aspect`` bounds d_model / n_layers (Ling 2.0:
    102, 128, 102). Layout: ``tp``/``pp``/``ep`` fixed when given (the search then only proposes n_layers
    divisible by pp and expert counts divisible by ep). Hardware: GPU count, memory, assumed MFU and peak
    TFLOP/s (H100: bf16 989, fp8 1979 dense).
    """

    activation_ratio: tuple[float, ...] = (LING_ACTIVATION_RATIO,)
    granularity: tuple[float, ...] = (LING_GRANULARITY,)
    a_tolerance: float = 0.05
    head_dim: int = 128
    n_kv_heads: int | None = None
    n_experts: int | None = None
    max_experts: int = 512
    n_shared_experts: tuple[int, ...] = (1,)
    n_dense_layers: int | None = None
    dense_ffn_ratio: float = 2.25
    aspect: tuple[float, float] = (64.0, 160.0)
    preferred_aspect: tuple[float, float] = (96.0, 128.0)
    vocab_size: int = 157184
    seq_len: int = 4096
    n_mtp_layers: int = 1
    precision: str = "fp8"
    tp: int | None = None
    pp: int | None = None
    ep: int | None = None
    gpus: int = 1024
    gpu_memory_gb: float = 80.0
    mfu: float = 0.4
    peak_tflops: float = 989.0
    m_tolerance: float = 0.05
    merge_fraction: float = 0.1
    merge_window: int = 8

    def __post_init__(self) -> None:
        for a in self.activation_ratio:
            if not 0 < a <= 1:
                raise ValueError(f"activation ratio {a} must be in (0, 1]")
        for g in self.granularity:
            if g <= 0:
                raise ValueError(f"granularity {g} must be positive")
        if self.aspect[0] > self.aspect[1]:
            raise ValueError(f"aspect range {self.aspect} is empty")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"MFU {self.mfu} must be in (0, 1]")
        for name in ("tp", "pp", "ep"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1")
