"""Median seconds per call, the way the GPU benchmarks time things (device/METHOD.md): warm-up calls, then
CUDA events around each timed call on a GPU (``perf_counter`` on the CPU, for --smoke code-path checks only).

Imported by the benchmark scripts as ``from timing import ...`` (run as a script, ``benchmarks/`` is
sys.path[0]; the scripts also put it there for the tests that import them)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def cuda_median_s(fn: Callable[[], object], warmup: int, reps: int) -> float:
    """Median of ``reps`` CUDA-event timings of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def cpu_median_s(fn: Callable[[], object], warmup: int, reps: int) -> float:
    """Median wall seconds of ``reps`` calls after ``warmup`` untimed ones (a smoke check, not a result)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
