"""GPU benchmark: our FP8 block-scaled GEMM and MoE grouped GEMM against what a researcher would use instead.

Shapes (Ling-1T, docs/DESIGN.md "Ling 2.0 architecture"): dense FFN up-projection M×N×K = 8192×18432×8192
(8192 tokens, d_model 8192, d_ffn 18432) and square 8192³; MoE expert GEMM: 8 local experts of 256 (expert
parallel), d_model 8192 → d_expert 2048, ~1024 token-slots per expert (ragged). TFLOP/s = 2·M·N·K / time
(grouped: real tokens only, so our padding to 128 rows counts against us). Timing: CUDA events, warm-up,
median of repeats.

    python benchmarks/kernels_gpu.py            # on a CUDA GPU; writes benchmarks/results/kernels_gpu.json
    TRITON_INTERPRET=1 python benchmarks/kernels_gpu.py --smoke --out /tmp/k.json   # CPU code-path check only

Without a GPU (and without --smoke) it exits with status 2 and a message; it never invents numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (imported by tests too)
from timing import cpu_median_s, cuda_median_s  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _timer(smoke: bool, warmup: int, reps: int) -> Callable[[Callable[[], object]], float]:
    """Median seconds per call: CUDA events on a GPU, perf_counter in --smoke mode (a tenth of the reps)."""
    if smoke:
        return lambda fn: cpu_median_s(fn, warmup=1, reps=max(1, reps // 10))
    return lambda fn: cuda_median_s(fn, warmup=warmup, reps=reps)


def _try(timer: Callable, fn: Callable[[], object], flops: float, errors: dict, name: str) -> float | None:
    try:
        return flops / timer(fn) / 1e12
    except Exception as err:  # a baseline this torch/GPU does not support is recorded, not fatal
        errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        return None


def bench_dense(M: int, N: int, K: int, device: str, timer: Callable, block: int = 128) -> dict:
    from kernels.fp8_gemm import fp8_gemm
    from kernels.quant import quantize_blocks, quantize_rows

    gen = torch.Generator().manual_seed(0)
    x_MK = torch.randn(M, K, generator=gen).to(device, torch.bfloat16)
    w_NK = (torch.randn(N, K, generator=gen) * 0.02).to(device, torch.bfloat16)
    qx, sx = quantize_rows(x_MK, block)
    qw, sw = quantize_blocks(w_NK, block)
    flops = 2.0 * M * N * K
    errors: dict[str, str] = {}
    ours = _try(
        timer, lambda: fp8_gemm(qx, sx, qw, sw, block, "block", torch.bfloat16), flops, errors, "ours"
    )
    ours_q = _try(
        timer,
        lambda: fp8_gemm(*quantize_rows(x_MK, block), qw, sw, block, "block", torch.bfloat16),
        flops, errors, "ours+act_quant",
    )  # fmt: skip
    base: dict[str, float | None] = {}
    base["torch_bf16_matmul"] = _try(timer, lambda: x_MK @ w_NK.t(), flops, errors, "torch_bf16_matmul")
    # row-wise scaled fp8 (one scale per row of x and of W): a coarser recipe than ours, cuBLASLt
    xr_amax = x_MK.float().abs().amax(1, keepdim=True).clamp_min(1e-12)
    wr_amax = w_NK.float().abs().amax(1, keepdim=True).clamp_min(1e-12)
    qx_r = (x_MK.float() * (448.0 / xr_amax)).to(torch.float8_e4m3fn)
    qw_r = (w_NK.float() * (448.0 / wr_amax)).to(torch.float8_e4m3fn)
    sxr, swr = (xr_amax / 448.0).contiguous(), (wr_amax / 448.0).t().contiguous()
    base["torch_scaled_mm_rowwise"] = _try(
        timer,
        lambda: torch._scaled_mm(qx_r, qw_r.t(), scale_a=sxr, scale_b=swr, out_dtype=torch.bfloat16),
        flops, errors, "torch_scaled_mm_rowwise",
    )  # fmt: skip
    base["torch_scaled_mm_blockwise"] = _scaled_mm_blockwise_native(qx, sx, qw, sw, timer, flops, errors)
    return {
        "op": "fp8_gemm",
        "shape": f"{M}x{N}x{K}",
        "ours_tflops": ours,
        "ours_with_act_quant_tflops": ours_q,
        "baselines": base,
        "errors": errors,
    }


def _scaled_mm_blockwise_native(qx, sx, qw, sw, timer, flops, errors) -> float | None:
    """torch.nn.functional.scaled_mm with BlockWise1x128 × BlockWise128x128 (the same recipe as ours), where
    this torch and GPU support it. Scale layouts differ between versions: try the plausible ones."""
    F = torch.nn.functional
    if not hasattr(F, "scaled_mm") or not hasattr(F, "ScalingType"):
        errors["torch_scaled_mm_blockwise"] = "torch.nn.functional.scaled_mm not available"
        return None
    st = F.ScalingType
    layouts = {
        "sx outer-major": (sx.t().contiguous().t(), sw),
        "sx row-major": (sx.contiguous(), sw),
        "both transposed": (sx.t().contiguous().t(), sw.t().contiguous().t()),
    }
    tried = []
    for name, (sa, sb) in layouts.items():

        def fn(sa=sa, sb=sb):
            return F.scaled_mm(
                qx, qw.t(), sa, st.BlockWise1x128, sb, st.BlockWise128x128, output_dtype=torch.bfloat16
            )

        try:
            fn()
        except Exception as err:
            tried.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            continue
        return _try(timer, fn, flops, errors, "torch_scaled_mm_blockwise")
    errors["torch_scaled_mm_blockwise"] = " | ".join(tried)
    return None


def bench_grouped(
    E: int, tokens_per_expert: int, D: int, F_: int, device: str, timer: Callable
) -> list[dict]:
    from kernels.grouped_gemm import (
        fp8_grouped_gemm_padded,
        grouped_gemm_padded,
        make_group_layout,
        to_padded,
    )
    from kernels.quant import quantize_blocks, quantize_rows

    gen = torch.Generator().manual_seed(0)
    # ragged loads around the mean (+-50%), as a router produces
    sizes_E = (tokens_per_expert * (0.5 + torch.rand(E, generator=gen))).long()
    T = int(sizes_E.sum())
    x_TD = torch.randn(T, D, generator=gen).to(device, torch.bfloat16)
    w_EDF = (torch.randn(E, D, F_, generator=gen) * 0.02).to(device, torch.bfloat16)
    w_EFD_t = w_EDF.transpose(1, 2).contiguous().transpose(1, 2)  # column-major per expert (cuBLAS layout)
    align = 128
    layout = make_group_layout(sizes_E.to(device), align)
    x_RD = to_padded(x_TD, layout)
    flops = 2.0 * T * D * F_
    shape = f"E={E} T={T} D={D} F={F_}"
    offs_E = torch.cumsum(sizes_E, 0).to(device, torch.int32)
    starts = [0, *torch.cumsum(sizes_E, 0).tolist()[:-1]]

    def loop_bf16():
        return [
            x_TD[s : s + int(g)] @ w_EDF[e]
            for e, (s, g) in enumerate(zip(starts, sizes_E.tolist(), strict=True))
        ]

    errors: dict[str, str] = {}
    base: dict[str, float | None] = {
        "torch_bf16_loop_over_experts": _try(timer, loop_bf16, flops, errors, "torch_bf16_loop_over_experts"),
    }
    base["torch_grouped_mm_bf16"] = _try(
        timer, lambda: torch._grouped_mm(x_TD, w_EFD_t, offs=offs_E), flops, errors, "torch_grouped_mm_bf16"
    )
    ours_bf16 = _try(timer, lambda: grouped_gemm_padded(x_RD, w_EDF, layout), flops, errors, "ours_bf16")
    row_bf16 = {"op": "grouped_gemm_bf16", "shape": shape, "ours_tflops": ours_bf16, "baselines": dict(base),
                "errors": dict(errors)}  # fmt: skip

    block = 128
    qx, sx = quantize_rows(x_RD, block)
    qw, sw = quantize_blocks(w_EDF, block)
    errors8: dict[str, str] = {}
    ours_fp8 = _try(
        timer,
        lambda: fp8_grouped_gemm_padded(qx, sx, qw, sw, layout, block, torch.bfloat16),
        flops,
        errors8,
        "ours",
    )
    base8 = dict(base)
    if hasattr(torch, "_scaled_grouped_mm"):  # row-wise fp8 grouped GEMM (torch's MoE FP8 path)
        x_amax = x_TD.float().abs().amax(1).clamp_min(1e-12)
        w_amax = w_EDF.float().abs().amax(1).clamp_min(1e-12)  # per expert, per output column: (E, F)
        qx_r = (x_TD.float() * (448.0 / x_amax[:, None])).to(torch.float8_e4m3fn)
        qw_r = (w_EDF.float() * (448.0 / w_amax[:, None, :])).to(torch.float8_e4m3fn)
        qw_r = qw_r.transpose(1, 2).contiguous().transpose(1, 2)
        sxr, swr = (x_amax / 448.0).contiguous(), (w_amax / 448.0).contiguous()
        base8["torch_scaled_grouped_mm_rowwise"] = _try(
            timer,
            lambda: torch._scaled_grouped_mm(qx_r, qw_r, sxr, swr, offs=offs_E, out_dtype=torch.bfloat16),
            flops, errors8, "torch_scaled_grouped_mm_rowwise",
        )  # fmt: skip
    row_fp8 = {"op": "grouped_gemm_fp8", "shape": shape, "ours_tflops": ours_fp8, "baselines": base8,
               "errors": errors8}  # fmt: skip
    return [row_bf16, row_fp8]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:8.1f}"


def print_table(rows: list[dict]) -> str:
    lines = [f"{'op':<20} {'shape':<28} {'ours':>8}  baselines (TFLOP/s; ratio ours/baseline)"]
    for r in rows:
        parts = []
        for name, v in r["baselines"].items():
            ratio = f"{r['ours_tflops'] / v:.2f}x" if (v and r["ours_tflops"]) else "-"
            parts.append(f"{name}={_fmt(v).strip()} ({ratio})")
        lines.append(f"{r['op']:<20} {r['shape']:<28} {_fmt(r['ours_tflops'])}  " + "; ".join(parts))
        if r.get("ours_with_act_quant_tflops") is not None:
            lines.append(f"{'':<20} {'(incl. activation quant)':<28} {_fmt(r['ours_with_act_quant_tflops'])}")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args(argv)

    if args.smoke:
        from kernels._triton_utils import is_interpret

        if not is_interpret():
            print("kernels_gpu --smoke needs TRITON_INTERPRET=1 (CPU interpreter)", file=sys.stderr)
            return 2
        if args.out is None:
            print("kernels_gpu --smoke needs --out: smoke timings are not results", file=sys.stderr)
            return 2
        device, name = "cpu", "cpu smoke (Triton interpreter; timings meaningless)"
        dense_shapes = [(64, 96, 128)]
        grouped = (4, 40, 128, 64)
    else:
        if not torch.cuda.is_available():
            print(
                "kernels_gpu: no CUDA GPU present - this benchmark measures GPU kernels, only on a GPU. "
                "Nothing was measured or written. (Use --smoke with TRITON_INTERPRET=1 to check code paths.)",
                file=sys.stderr,
            )
            return 2
        device, name = "cuda", torch.cuda.get_device_name()
        dense_shapes = [(8192, 18432, 8192), (8192, 8192, 8192)]
        grouped = (8, 1024, 8192, 2048)

    timer = _timer(args.smoke, warmup=10, reps=args.reps)
    rows = [bench_dense(M, N, K, device, timer) for M, N, K in dense_shapes]
    rows += bench_grouped(*grouped, device=device, timer=timer)
    print(f"device: {name}")
    print_table(rows)
    out = args.out or RESULTS / "kernels_gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "command": "python benchmarks/kernels_gpu.py" + (" --smoke" if args.smoke else ""),
        "rows": rows,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
