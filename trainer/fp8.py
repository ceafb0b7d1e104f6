"""FP8 training layers (Ling 2.0 sec. 5.1): block-scaled E4M3 linear, MoE expert matmuls, safeguard.

Recipe: activations and gradients in 1×B tiles along the reduction dim, weights in B×B blocks, FP32 scales
(s = amax/448), FP32 accumulation, output in the input's dtype. For y = x·Wᵀ (x_TK, W_NK):

    forward      y  = Q₁(x) · Q_B(W)ᵀ
    input grad   dx = Q₁(dy) · Q_B(W)                    (dy in 1×B tiles along N)
    weight grad  dW = Q₁ᵀ(dy)ᵀ · Q₁ᵀ(x)                  (both in 1×B tiles along the token dim T)

where Q₁ / Q_B / Q₁ᵀ quantise–dequantise in 1×B row tiles / B×B blocks / 1×B tiles along tokens
(``kernels.reference`` defines them). Backends: ``"reference"`` (CPU: quantise–dequantise emulation in
PyTorch, the same numerics as the kernels up to FP32 summation order), ``"triton"`` (``kernels.fp8_gemm`` /
``kernels.grouped_gemm``), ``"scaled_mm"`` (dense only: ``torch._scaled_mm`` per K-block), ``"auto"``: triton
on CUDA, reference elsewhere.

Safeguard (Ling 2.0 sec. 5.1): per op and layer, underflow share = #{x ≠ 0 and Q(x) = 0} / #{x ≠ 0} and
distortion = cos(x, Q(x)), computed only on steps where a module's ``fp8_monitor`` flag is set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kernels.reference import qdq_blocks, qdq_rows

BACKENDS = ("auto", "reference", "triton", "scaled_mm")


def _resolve(backend: str, t: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"FP8 backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if t.is_cuda else "reference"
    return backend


def quant_error_stats(x: torch.Tensor, x_qdq: torch.Tensor) -> tuple[float, float]:
    """(underflow share, cosine similarity) of x and its quantise–dequantise x_qdq (module docstring)."""
    x64 = x.detach().double().flatten()
    q64 = x_qdq.detach().double().flatten()
    nonzero = x64 != 0
    n_nonzero = int(nonzero.sum())
    underflow = float((nonzero & (q64 == 0)).sum()) / n_nonzero if n_nonzero else 0.0
    denom = x64.norm() * q64.norm()
    cosine = float((x64 @ q64) / denom) if denom > 0 else 1.0
    return underflow, cosine


def _qdq_expert_blocks(w_EDF: torch.Tensor, block: int) -> torch.Tensor:
    return torch.stack([qdq_blocks(w_EDF[e], block) for e in range(w_EDF.shape[0])])


# ---------------------------------------------------------------------------------------------------------
# dense FP8 linear
# ---------------------------------------------------------------------------------------------------------
class _FP8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x_TK: torch.Tensor, w_NK: torch.Tensor, block: int, backend: str, stats: dict | None
    ):
        ctx.block, ctx.backend, ctx.stats = block, backend, stats
        ctx.save_for_backward(x_TK, w_NK)
        if backend == "reference":
            x_q = qdq_rows(x_TK.float(), block)
            w_q = qdq_blocks(w_NK.float(), block)
            if stats is not None:
                stats["act"] = quant_error_stats(x_TK, x_q)
                stats["weight"] = quant_error_stats(w_NK, w_q)
            return (x_q @ w_q.t()).to(x_TK.dtype)
        from kernels.fp8_gemm import fp8_gemm, scaled_mm_blockwise
        from kernels.quant import quantize_blocks, quantize_rows

        qx, sx = quantize_rows(x_TK, block)
        qw, sw = quantize_blocks(w_NK, block)
        if stats is not None:
            stats["act"] = quant_error_stats(x_TK, qdq_rows(x_TK.float(), block))
            stats["weight"] = quant_error_stats(w_NK, qdq_blocks(w_NK.float(), block))
        gemm = fp8_gemm if backend == "triton" else scaled_mm_blockwise
        return gemm(qx, sx, qw, sw, block, "block", out_dtype=x_TK.dtype)

    @staticmethod
    def backward(ctx: Any, dy_TN: torch.Tensor):
        x_TK, w_NK = ctx.saved_tensors
        block, backend, stats = ctx.block, ctx.backend, ctx.stats
        if stats is not None:
            stats["grad"] = quant_error_stats(dy_TN, qdq_rows(dy_TN.float(), block))
        if backend == "reference":
            w_q = qdq_blocks(w_NK.float(), block)
            dx = qdq_rows(dy_TN.float(), block) @ w_q
            dw = qdq_rows(dy_TN.t().float(), block) @ qdq_rows(x_TK.t().float(), block).t()
            return dx.to(x_TK.dtype), dw.to(w_NK.dtype), None, None, None
        from kernels.fp8_gemm import fp8_gemm, scaled_mm_blockwise
        from kernels.quant import quantize_blocks, quantize_cols, quantize_rows

        gemm = fp8_gemm if backend == "triton" else scaled_mm_blockwise
        qw, sw = quantize_blocks(w_NK, block)
        qdy, sdy = quantize_rows(dy_TN, block)
        dx = gemm(qdy, sdy, qw.t(), sw.t(), block, "block", out_dtype=x_TK.dtype)
        qdy_t, sdy_t = quantize_cols(dy_TN, block)
        qx_t, sx_t = quantize_cols(x_TK, block)
        dw = gemm(qdy_t, sdy_t, qx_t, sx_t, block, "row", out_dtype=torch.float32)
        return dx, dw.to(w_NK.dtype), None, None, None


def fp8_linear(
    x: torch.Tensor, w_NK: torch.Tensor, block: int = 128, backend: str = "auto", stats: dict | None = None
) -> torch.Tensor:
    """y = x·Wᵀ in FP8 (module docstring), autograd through x and W; any leading dims on x."""
    lead = x.shape[:-1]
    x_TK = x.reshape(-1, x.shape[-1])
    y_TN = _FP8LinearFn.apply(x_TK, w_NK, block, _resolve(backend, x), stats)
    return y_TN.reshape(*lead, w_NK.shape[0])


class FP8Linear(nn.Linear):
    """``nn.Linear`` whose matmuls run in block-scaled FP8 (E4M3, 1×block activations, block×block weights).

    Same constructor as ``nn.Linear(in_features, out_features, bias=False)`` plus ``block`` and ``backend``.
    The weight stays in its own (master) dtype; it is quantised on the fly every forward. Set
    ``fp8_monitor = True`` to record safeguard statistics of the next forward/backward in ``fp8_stats``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        block: int = 128,
        backend: str = "auto",
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if backend not in BACKENDS:
            raise ValueError(f"FP8 backend must be one of {BACKENDS}, got {backend!r}")
        self.block = block
        self.backend = backend
        self.fp8_monitor = False
        self.fp8_stats: dict[str, tuple[float, float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = None
        if self.fp8_monitor:
            stats = self.fp8_stats = {}
        y = fp8_linear(x, self.weight, self.block, self.backend, stats)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}, backend={self.backend}"


# ---------------------------------------------------------------------------------------------------------
# MoE: FP8 grouped matmul over expert-sorted tokens
# ---------------------------------------------------------------------------------------------------------
def _segments(group_sizes_E: torch.Tensor) -> list[tuple[int, int, int]]:
    out, lo = [], 0
    for e, g in enumerate(group_sizes_E.tolist()):
        if g:
            out.append((e, lo, lo + int(g)))
        lo += int(g)
    return out


def _triton_align(block: int) -> int:
    from kernels.interpret import is_interpret

    return max(block, 32 if is_interpret() else 128)


class _FP8GroupedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x_TD, w_EDF, group_sizes_E, block: int, backend: str, stats: dict | None):
        ctx.block, ctx.backend, ctx.stats = block, backend, stats
        ctx.save_for_backward(x_TD, w_EDF, group_sizes_E)
        if stats is not None:
            stats["act"] = quant_error_stats(x_TD, qdq_rows(x_TD.float(), block))
            stats["weight"] = quant_error_stats(w_EDF, _qdq_expert_blocks(w_EDF.float(), block))
        if backend == "reference":
            x_q = qdq_rows(x_TD.float(), block)
            y_TF = x_TD.new_zeros((x_TD.shape[0], w_EDF.shape[2]), dtype=torch.float32)
            for e, lo, hi in _segments(group_sizes_E):
                # w_EDF[e] is (D, F) = Wᵀ of a linear F×D: its B×B blocks are the same tiles either way
                y_TF[lo:hi] = x_q[lo:hi] @ qdq_blocks(w_EDF[e].float(), block)
            return y_TF.to(x_TD.dtype)
        if backend != "triton":
            raise ValueError(f"fp8_grouped_matmul supports backends reference|triton, got {backend!r}")
        from kernels.grouped_gemm import fp8_grouped_gemm_padded, make_group_layout, to_padded
        from kernels.quant import quantize_blocks, quantize_rows

        layout = make_group_layout(group_sizes_E, _triton_align(block))
        qx, sx = quantize_rows(to_padded(x_TD, layout), block)
        qw, sw = quantize_blocks(w_EDF, block)
        y_RF = fp8_grouped_gemm_padded(qx, sx, qw, sw, layout, block, out_dtype=x_TD.dtype)
        return y_RF[layout.dest_rows_T.to(x_TD.device)]

    @staticmethod
    def backward(ctx: Any, dy_TF: torch.Tensor):
        x_TD, w_EDF, group_sizes_E = ctx.saved_tensors
        block, backend, stats = ctx.block, ctx.backend, ctx.stats
        if stats is not None:
            stats["grad"] = quant_error_stats(dy_TF, qdq_rows(dy_TF.float(), block))
        if backend == "reference":
            dy_q = qdq_rows(dy_TF.float(), block)
            dx_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
            dw_EDF = torch.zeros(w_EDF.shape, dtype=torch.float32, device=w_EDF.device)
            for e, lo, hi in _segments(group_sizes_E):
                dx_TD[lo:hi] = dy_q[lo:hi] @ qdq_blocks(w_EDF[e].float(), block).t()
                # token-dim tiles start at the group start (the padded kernel layout aligns groups to B)
                x_q_DT = qdq_rows(x_TD[lo:hi].t().float(), block)
                dy_q_FT = qdq_rows(dy_TF[lo:hi].t().float(), block)
                dw_EDF[e] = x_q_DT @ dy_q_FT.t()
            return dx_TD.to(x_TD.dtype), dw_EDF.to(w_EDF.dtype), None, None, None, None
        from kernels.grouped_gemm import (
            fp8_grouped_gemm_padded,
            fp8_grouped_wgrad_padded,
            make_group_layout,
            to_padded,
        )
        from kernels.quant import quantize_blocks, quantize_cols, quantize_rows

        layout = make_group_layout(group_sizes_E, _triton_align(block))
        rows = layout.dest_rows_T.to(x_TD.device)
        qw, sw = quantize_blocks(w_EDF, block)
        dy_RF = to_padded(dy_TF, layout)
        x_RD = to_padded(x_TD, layout)
        qdy, sdy = quantize_rows(dy_RF, block)
        dx_RD = fp8_grouped_gemm_padded(
            qdy, sdy, qw.transpose(1, 2), sw.transpose(1, 2), layout, block, x_TD.dtype
        )
        qx_t, sx_t = quantize_cols(x_RD, block)
        qdy_t, sdy_t = quantize_cols(dy_RF, block)
        dw_EDF = fp8_grouped_wgrad_padded(qx_t, sx_t, qdy_t, sdy_t, layout, block, torch.float32)
        return dx_RD[rows], dw_EDF.to(w_EDF.dtype), None, None, None, None


def fp8_grouped_matmul(
    x_TD: torch.Tensor,
    w_EDF: torch.Tensor,
    group_sizes_E: torch.Tensor,
    block: int = 128,
    backend: str = "auto",
    stats: dict | None = None,
    stats_name: str | None = None,
) -> torch.Tensor:
    """y_TF with y[t] = x[t] · w[e(t)] in FP8, for tokens sorted by expert (group e is rows
    [Σ_{e'<e} g_e', Σ_{e'≤e} g_e'); experts with zero tokens allowed). Autograd through x, w; x's dtype out.

    x in 1×block tiles along D, each expert's (D, F) matrix in block×block blocks; backward as in the module
    docstring (dx with dy in 1×block tiles along F; dW_e with x_e and dy_e in 1×block tiles along tokens,
    tiles starting at the group's first token). Pass a dict as ``stats`` to record safeguard statistics
    (with ``stats_name``, e.g. "w_gate", they go to ``stats[stats_name]``, so one module can hold several)."""
    if group_sizes_E.dim() != 1 or group_sizes_E.shape[0] != w_EDF.shape[0]:
        raise ValueError(f"group_sizes_E must have one entry per expert ({w_EDF.shape[0]})")
    gs = group_sizes_E.detach().to(device="cpu", dtype=torch.int64)
    if int(gs.sum()) != x_TD.shape[0]:
        raise ValueError(f"group sizes sum to {int(gs.sum())}, but x has {x_TD.shape[0]} rows")
    if stats is not None and stats_name is not None:
        stats = stats.setdefault(stats_name, {})
    return _FP8GroupedFn.apply(x_TD, w_EDF, gs, block, _resolve(backend, x_TD), stats)


# ---------------------------------------------------------------------------------------------------------
# safeguard
# ---------------------------------------------------------------------------------------------------------
_OP_SUFFIX = {"act": "", "weight": ".weight", "grad": ".grad"}


def set_fp8_monitor(model: nn.Module, enabled: bool) -> int:
    """Turn safeguard sampling on/off on every module with an ``fp8_monitor`` flag; returns how many."""
    n = 0
    for module in model.modules():
        if hasattr(module, "fp8_monitor"):
            module.fp8_monitor = enabled
            n += 1
    return n


def fp8_safeguard_stats(
    model: nn.Module, underflow_alert: float | None = None, cosine_alert: float | None = None
) -> dict[str, float]:
    """Safeguard statistics of the last sampled step, from every module with a non-empty ``fp8_stats`` dict.

    Keys: ``fp8/underflow/<module>`` and ``fp8/cosine/<module>`` for its input activation (``<module>.<name>``
    for a matrix recorded under ``stats_name``), the same with
    ``.weight`` and ``.grad`` (output gradient) appended for the other ops; ``fp8/underflow_max``,
    ``fp8/cosine_min`` and ``fp8/alerts`` = number of (op, layer) entries with underflow > ``underflow_alert``
    plus those with cosine < ``cosine_alert`` (defaults: PrecisionConfig's). Empty if nothing was sampled."""
    if underflow_alert is None or cosine_alert is None:
        from trainer.config import PrecisionConfig

        defaults = PrecisionConfig()
        underflow_alert = defaults.underflow_alert if underflow_alert is None else underflow_alert
        cosine_alert = defaults.cosine_alert if cosine_alert is None else cosine_alert
    out: dict[str, float] = {}
    alerts = 0
    underflows, cosines = [], []
    for name, module in model.named_modules():
        stats = getattr(module, "fp8_stats", None)
        if not stats:
            continue
        flat = []  # (op, sub-name): ops of the module itself, or of a named matrix inside it
        for op, value in stats.items():
            if isinstance(value, dict):
                flat += [(sub_op, f".{op}", v) for sub_op, v in value.items()]
            else:
                flat.append((op, "", value))
        for op, sub, (underflow, cosine) in flat:
            key = f"{name}{sub}{_OP_SUFFIX.get(op, '.' + op)}"
            out[f"fp8/underflow/{key}"] = underflow
            out[f"fp8/cosine/{key}"] = cosine
            underflows.append(underflow)
            cosines.append(cosine)
            alerts += int(underflow > underflow_alert) + int(cosine < cosine_alert)
    if out:
        out["fp8/underflow_max"] = max(underflows)
        out["fp8/cosine_min"] = min(cosines)
        out["fp8/alerts"] = float(alerts)
    return out
