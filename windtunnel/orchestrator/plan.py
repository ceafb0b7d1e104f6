"""The cost planner: every planned run's training FLOPs and estimated wall time, the sweep's totals, and the
budget check that ``windtunnel plan`` and ``windtunnel run --budget`` apply before anything starts.

FLOPs per run: ``expand.trial_flops`` (C_train = D * F, the trainer's own accounting incl. the output layer)
plus its validations, n_evals * eval_batches * micro_batch * seq_len * F / 3 (forward only).

Wall time per run, one of two sources (the ``source`` column says which):
- ``probed`` / ``cached``: a timed probe of the real trainer at the run's shape on this machine (probe.py),
  with as many trials training side by side as the sweep has slots (CPU sweeps):
  t = steps * step_s + n_evals * eval_s + overhead_s + ``TRIAL_OVERHEAD_S``;
- ``extrapolated``: shapes too big to probe here (a GPU run on a machine without one, or a CPU probe longer
  than ``MAX_PROBE_S``): t = FLOPs / rate + overhead, rate = n_gpus * peak * ``ASSUMED_MFU`` on a GPU (peak:
  ``parallel.peak_tflops``, ``WT_PEAK_TFLOPS`` or the table in ``trainer.hardware``, else an H100 SXM) and, on
  the CPU, the best FLOP/s a probed shape of this sweep reached (else ``CPU_FLOPS_PER_THREAD``) x threads.

Sweep wall time = ``SWEEP_FIXED_S`` + the makespan of longest-first packing of all runs on the sweep's slots
(min(concurrency, local CPUs / CPUs per trial) for a CPU sweep; ``concurrency`` for a GPU one), the order the
driver's ``GroupedSearcher`` hands out work. Searched groups count ``num_samples`` full runs each: ASHA/median
pruning stops some early, so their estimate is an upper bound.
"""

from __future__ import annotations

import heapq
import math
import os
import re
from dataclasses import dataclass, field

from trainer.config import RunConfig
from trainer.hardware import PEAKS, env_peak_tflops, mfu_dtype, mfu_flops_per_token
from trainer.points import point_specs
from windtunnel.errors import SpecError
from windtunnel.orchestrator.expand import trial_flops
from windtunnel.orchestrator.probe import PROBE_STEPS, ProbeCache, ProbeResult, run_probe, shape_key
from windtunnel.orchestrator.progress import format_seconds
from windtunnel.orchestrator.spec import Plan, SweepSpec

TRIAL_OVERHEAD_S = 0.4  # orchestrator cost per trial (40 short trials, ~0.4 s each, 2026-12-06)
# ray.init 4-5 s + importing torch, ray.tune, mlflow ~9 s (docs/DESIGN.md "Platform") + the final fit
SWEEP_FIXED_S = 15.0
MAX_PROBE_S = 30.0  # a CPU probe expected to take longer is extrapolated instead
# docs/DESIGN.md "Platform": 12.5k tokens/s of a 0.68M-parameter model (F ~ 4.5e6 FLOPs/token) on 1 thread
CPU_FLOPS_PER_THREAD = 5.0e10
ASSUMED_MFU = 0.35  # GPU runs that cannot be probed here: model FLOPs utilisation assumed
DEFAULT_GPU = "H100 SXM"
GPU_RUN_OVERHEAD_S = 30.0  # GPU run start: process, CUDA context, data load, model build (assumed)


@dataclass
class PlanRow:
    """One fixed trial, or one search group (``n_runs`` = its ``num_samples`` runs of the same shape)."""

    study: str
    kind: str
    ident: str
    cfg: RunConfig
    n_runs: int = 1
    pruned_by: str = "none"
    flops: float = 0.0  # per run
    est_s: float = math.nan  # per run
    source: str = ""

    @property
    def total_flops(self) -> float:
        return self.flops * self.n_runs


@dataclass
class SweepEstimate:
    sweep: str
    rows: list[PlanRow]
    slots: int
    gpus_per_trial: float
    wall_s: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def total_flops(self) -> float:
        return sum(r.total_flops for r in self.rows)

    @property
    def n_runs(self) -> int:
        return sum(r.n_runs for r in self.rows)

    @property
    def run_s(self) -> float:
        return sum(r.est_s * r.n_runs for r in self.rows)

    @property
    def gpu_hours(self) -> float:
        return self.run_s * self.gpus_per_trial / 3600.0

    @property
    def upper_bound(self) -> bool:
        return any(r.pruned_by != "none" for r in self.rows)


def n_evals(cfg: RunConfig) -> int:
    """Validations of one run: every ``eval_interval`` steps, at the last step and one per point below the
    end (``trainer.points``)."""
    steps = cfg.steps
    points = sum(1 for p in point_specs(cfg) if p.step < steps)
    return steps // cfg.eval_interval + (1 if steps % cfg.eval_interval else 0) + points


def run_flops(cfg: RunConfig) -> float:
    """``expand.trial_flops`` + validation forwards, n_evals * eval_batches * micro * seq_len * F / 3."""
    micro = cfg.optim.micro_batch_size or cfg.optim.batch_size
    eval_tokens = n_evals(cfg) * cfg.eval_batches * micro * cfg.model.seq_len
    return trial_flops(cfg) + eval_tokens * mfu_flops_per_token(cfg.model) / 3.0


def plan_rows(plan: Plan) -> list[PlanRow]:
    rows = [PlanRow(t.study, t.kind, t.config_hash, t.run_cfg) for t in plan.trials]
    for g in plan.searches:
        rows.append(
            PlanRow(
                g.study, "search", f"C={g.budget:.3g}", g.base_cfg, g.search.num_samples, g.search.scheduler
            )
        )
    for r in rows:
        r.flops = run_flops(r.cfg)
    return rows


def _uses_gpu(cfg: RunConfig) -> bool:
    return cfg.device.startswith("cuda") or cfg.device == "auto" and _cuda_available()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_rate(cfg: RunConfig, n_gpus: float) -> tuple[float, str]:
    """FLOP/s assumed for a GPU run that is not probed: n_gpus * peak * ``ASSUMED_MFU``."""
    peak, where = cfg.parallel.peak_tflops, "parallel.peak_tflops"
    if peak is None:
        peak, where = env_peak_tflops(), "WT_PEAK_TFLOPS"
    if peak is None:
        dtype = mfu_dtype(cfg.precision.dtype)
        peak, where = PEAKS[DEFAULT_GPU].get(dtype) or PEAKS[DEFAULT_GPU].bf16, f"{DEFAULT_GPU} {dtype}"
    return (
        n_gpus * peak * 1e12 * ASSUMED_MFU,
        f"{n_gpus:g} GPU x {peak:g} TFLOP/s ({where}) x MFU {ASSUMED_MFU}",
    )


def probed_seconds(cfg: RunConfig, p: ProbeResult) -> float:
    """t = steps * step_s * (batch / probed batch) + n_evals * eval_s + overhead_s + ``TRIAL_OVERHEAD_S``."""
    train_s = cfg.steps * cfg.batch_tokens / p.tokens_per_s
    return train_s + n_evals(cfg) * p.eval_s + p.overhead_s + TRIAL_OVERHEAD_S


def _slots(spec: SweepSpec, gpu: bool) -> int:
    if gpu:
        return spec.concurrency
    local = max(1, int((os.cpu_count() or 1) // spec.resources.cpus))
    return max(1, min(spec.concurrency, local))


def makespan(durations: list[float], slots: int) -> float:
    """Longest-first packing of ``durations`` on ``slots`` identical workers (LPT); its finishing time."""
    free = [0.0] * max(1, slots)
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def _probe_all(
    rows: list[PlanRow], spec: SweepSpec, cache: ProbeCache | None, copies: int, new_probes: bool = True
) -> float:
    """Probe (or read from the cache) every row small enough, ``copies`` trials side by side; returns the
    best FLOP/s seen (0 if none). ``new_probes=False``: cached probes only, nothing is trained."""
    threads = max(1, int(spec.resources.cpus))
    best_rate = 0.0
    done: dict[str, ProbeResult] = {}
    for r in sorted(rows, key=lambda r: r.flops / max(1, r.cfg.steps)):
        if _uses_gpu(r.cfg) and not _cuda_available():
            continue
        key = shape_key(r.cfg, threads, copies)
        step_flops = r.flops / max(1, r.cfg.steps)
        rate_guess = best_rate or CPU_FLOPS_PER_THREAD * threads
        if key not in done and PROBE_STEPS * step_flops / rate_guess > MAX_PROBE_S and not _uses_gpu(r.cfg):
            continue
        if key not in done:
            hit = cache.get(key) if cache is not None else None
            if hit is None and not new_probes:
                continue
            if hit is None:
                hit = run_probe(r.cfg, threads, copies)
                if cache is not None:
                    hit = cache.put(key, r.cfg, hit)
            done[key] = hit
        p = done[key]
        r.est_s = probed_seconds(r.cfg, p)
        r.source = "cached" if p.cached else "probed"
        best_rate = max(best_rate, p.tokens_per_s * mfu_flops_per_token(r.cfg.model))
    return best_rate


def estimate(
    spec: SweepSpec,
    plan: Plan,
    cache: ProbeCache | None,
    probe: bool = True,
    rows: list[PlanRow] | None = None,
    new_probes: bool = True,
) -> SweepEstimate:
    """Per-run FLOPs and seconds and the sweep's wall time (module docstring). ``probe=False``: FLOPs only;
    ``new_probes=False``: wall time only from probes already cached (none cached, no GPU rows: FLOPs only)."""
    rows = plan_rows(plan) if rows is None else rows
    gpu = any(_uses_gpu(r.cfg) for r in rows)
    gpus = spec.resources.gpus if spec.resources.gpus > 0 else (1.0 if gpu else 0.0)
    est = SweepEstimate(spec.name, rows, _slots(spec, gpu), gpus)
    if not probe:
        return est
    cpu_rate = _probe_all(rows, spec, cache, 1 if gpu else est.slots, new_probes)
    if not new_probes and cpu_rate == 0.0 and not gpu:
        for r in rows:
            r.est_s, r.source = math.nan, ""
        return est
    threads = max(1, int(spec.resources.cpus))
    for r in rows:
        if r.source:
            continue
        if _uses_gpu(r.cfg):
            world = r.cfg.parallel.tp * r.cfg.parallel.pp * r.cfg.parallel.dp
            rate, how = gpu_rate(r.cfg, spec.resources.gpus if spec.resources.gpus > 0 else world)
            r.est_s, r.source = r.flops / rate + GPU_RUN_OVERHEAD_S, "extrapolated"
            note = f"GPU rows extrapolated: FLOPs / ({how}) + {GPU_RUN_OVERHEAD_S:g} s start-up"
        else:
            rate = cpu_rate or CPU_FLOPS_PER_THREAD * threads
            r.est_s, r.source = r.flops / rate + TRIAL_OVERHEAD_S, "extrapolated"
            note = f"CPU rows extrapolated at {rate:.3g} FLOP/s (best probed rate of this sweep, or assumed)"
        if note not in est.notes:
            est.notes.append(note)
    durations = [r.est_s for r in rows for _ in range(r.n_runs)]
    est.wall_s = SWEEP_FIXED_S + makespan(durations, est.slots)
    return est


# ---- budgets --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    kind: str  # "flops" | "hours" | "gpu_hours"
    value: float

    def describe(self) -> str:
        if self.kind == "hours":
            return f"{format_seconds(self.value * 3600.0)} of wall time"
        return f"{self.value:.3g} FLOPs" if self.kind == "flops" else f"{self.value:g} GPU-h"


_UNITS = {"h": 1.0, "hr": 1.0, "hours": 1.0, "hour": 1.0, "m": 1 / 60, "min": 1 / 60, "s": 1 / 3600}


def parse_budget(text: str) -> Budget:
    """``1e15`` / ``1e15flops`` (FLOPs), ``2h`` / ``90m`` / ``600s`` (wall time), ``10gpu-h`` (GPU-hours)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z-]*)\s*", text)
    if m is None:
        raise SpecError(f"--budget: {text!r} is not a number with an optional unit (1e15, 2h, 10gpu-h)")
    value, unit = float(m.group(1)), m.group(2).lower()
    if value <= 0:
        raise SpecError(f"--budget: must be > 0, got {text!r}")
    if unit in ("", "flop", "flops"):
        return Budget("flops", value)
    if unit in ("gpu-h", "gpuh", "gpu-hours", "gpu-hour", "gpu_h"):
        return Budget("gpu_hours", value)
    if unit in _UNITS:
        return Budget("hours", value * _UNITS[unit])
    raise SpecError(
        f"--budget: unknown unit {unit!r} (use FLOPs like 1e15, hours like 2h, or GPU-hours like 10gpu-h)"
    )


def over_budget(est: SweepEstimate, budget: Budget) -> str | None:
    """The one-line refusal when the sweep's estimate exceeds ``budget``, else None."""
    bound = " (an upper bound: pruning may stop searched trials early)" if est.upper_bound else ""
    if budget.kind == "flops":
        have = est.total_flops
        shown = f"{have:.3g} FLOPs"
    elif budget.kind == "hours":
        have = est.wall_s / 3600.0
        shown = f"{format_seconds(est.wall_s)} of wall time"
    else:
        if est.gpus_per_trial <= 0:
            raise SpecError("--budget: this sweep uses no GPUs; give FLOPs (1e15) or hours (2h)")
        have = est.gpu_hours
        shown = f"{have:.3g} GPU-h"
    if have <= budget.value:
        return None
    return f"sweep {est.sweep} needs {shown}{bound}, over the budget of {budget.describe()}; nothing launched"
