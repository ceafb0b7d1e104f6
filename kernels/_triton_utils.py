"""Shared helpers for the Triton kernels: interpreter detection and autotune config lists.

Under ``TRITON_INTERPRET=1`` (CPU tests) every kernel gets one small config: the interpreter is slow and
autotuning there would only benchmark Python. On a GPU the configs are Hopper-oriented (H100: 132 SMs,
228 KB shared memory per SM): 128-wide tiles, 4–8 warps, 3–4 pipeline stages.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.interpret import is_interpret, triton_usable

__all__ = ["is_interpret", "triton_usable"]


def gemm_configs(tune_block_k: bool) -> list[triton.Config]:
    """Autotune configs for (grouped) GEMMs; BLOCK_K tuned, or fixed by the caller (FP8: quant block)."""
    if is_interpret():
        kw = {"BLOCK_M": 32, "BLOCK_N": 32, "GROUP_M": 4}
        if tune_block_k:
            kw["BLOCK_K"] = 32
        return [triton.Config(kw, num_warps=4, num_stages=1)]
    shapes = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
        (128, 128, 8, 3),
        (128, 128, 4, 4),
        (128, 256, 8, 3),
        (64, 128, 4, 4),
        (64, 256, 8, 3),
    ]
    configs = []
    for bm, bn, warps, stages in shapes:
        kw = {"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}
        if tune_block_k:
            for bk in (64, 128):
                configs.append(triton.Config({**kw, "BLOCK_K": bk}, num_warps=warps, num_stages=stages))
        else:
            configs.append(triton.Config(kw, num_warps=warps, num_stages=stages))
    return configs


def prune_block_m(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep configs whose BLOCK_M divides the group alignment ``ALIGN`` (a row tile lies in one expert)."""
    align = kwargs.get("ALIGN", named_args.get("ALIGN"))
    kept = [c for c in configs if align % c.kwargs["BLOCK_M"] == 0]
    return kept or configs[:1]


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (row tile, column tile) in grouped order: GROUP_M row tiles share each sweep over the
    column tiles, so their B tiles stay in L2 (the standard Triton GEMM swizzle)."""
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * n_n
    first_m = (pid // group) * GROUP_M
    size_m = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    return pid_m, pid_n
