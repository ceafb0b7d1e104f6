"""Fractional-GPU packing (issue #4): runs/hour with k small trials sharing one GPU vs one trial at a time.

The same K real training trials (half dense, half MoE; tiny models of ``benchmarks/orchestrator.py``'s
``BASE`` shape, ``--steps`` optimizer steps each, on the default corpus) run through the real driver
(``windtunnel.orchestrator.driver.run_sweep``: Ray Tune + MLflow) several times in one process and one Ray
session:

- one at a time: ``resources.gpus = 1``, ``concurrency = 1``;
- packed, for each k in ``--ks``: ``resources.gpus = 1/k``, ``concurrency = k`` (k trials on the GPU).

Each mode is its own sweep (MLflow experiment) in one SQLite store, so the trials keep their identity
(``RunConfig.config_hash``) and the benchmark checks that every mode ends with the same finished trials.
Measured per mode: sweep wall time (``run_sweep`` call; Ray is started once, before the first mode),
runs/hour = finished / wall x 3600, the ratio to one-at-a-time, each trial's child-run start/end time from
the store (the largest number of trials alive at once shows the packing really happened), and GPU
utilisation / memory sampled from ``nvidia-smi`` in a thread when it is on the PATH.

    python benchmarks/gpu_packing.py                     # a CUDA GPU: --trials 16 --steps 300 --ks 2,4,8
    python benchmarks/gpu_packing.py --smoke --out /tmp/gpu_packing_smoke.json

Without a CUDA GPU and without ``--smoke`` it exits 2 and writes nothing. ``--smoke`` runs the same code path
on the CPU: Ray is started with one *logical* GPU (``ray.init(num_gpus=1)`` declares it without hardware), the
trials use ``device: cpu`` and the micro model/corpus of ``tests/micro_spec.py``; its numbers measure the code
path, not a GPU. A real run writes ``benchmarks/results/gpu_packing.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# tiny MoE FFNs for the two trial shapes (the dense part stays the base model's)
MOE_GPU = {"n_experts": 8, "top_k": 2, "n_shared_experts": 1, "d_expert": 32, "n_dense_layers": 1}
MOE_MICRO = {"n_experts": 4, "top_k": 2, "n_shared_experts": 1, "d_expert": 16, "n_dense_layers": 0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU code path: logical GPU, micro trials")
    ap.add_argument("--trials", type=int, default=None, help="K trials per mode (default 16; smoke 4)")
    ap.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per trial (default 300; smoke 20)"
    )
    ap.add_argument("--ks", default=None, help="packing factors, comma-separated (default 2,4,8; smoke 2)")
    ap.add_argument("--cpus-per-trial", type=float, default=1.0, help="resources.cpus of every trial")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp8"], default="fp32", help="trial precision (GPU)")
    ap.add_argument("--first", choices=["serial", "packed"], default="serial", help="which mode runs first")
    ap.add_argument("--sample-s", type=float, default=0.5, help="nvidia-smi sampling period")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default results/gpu_packing.json)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (store, checkpoints)")
    args = ap.parse_args(argv)
    args.trials = args.trials or (4 if args.smoke else 16)
    args.steps = args.steps or (20 if args.smoke else 300)
    args.ks = [int(k) for k in (args.ks or ("2" if args.smoke else "2,4,8")).split(",") if k.strip()]
    if args.trials < 2 or any(k < 2 for k in args.ks) or args.steps < 1:
        ap.error("--trials and every k in --ks must be >= 2, --steps >= 1")
    return args


def trial_base(smoke: bool, steps: int, dtype: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sweep ``base`` RunConfig mapping (``steps`` steps of one batch) and the MoE FFN of the MoE trials.

    GPU: ``benchmarks/orchestrator.py``'s ``BASE`` (dense d_model 64, 2 layers, vocab 1024, seq 128, batch 8)
    on ``cuda``; smoke: ``tests/micro_spec.py``'s micro model and 2 MB corpus on the CPU.
    """
    if smoke:
        sys.path.insert(0, str(REPO / "tests"))
        from micro_spec import MICRO_DATA, micro_base

        base = micro_base(tokens=1)
        base["data"] = dict(MICRO_DATA)
        moe = dict(MOE_MICRO)
    else:
        if str(REPO / "benchmarks") not in sys.path:  # run as a script it is sys.path[0] already
            sys.path.insert(0, str(REPO / "benchmarks"))
        from orchestrator import BASE  # benchmarks/orchestrator.py: the orchestrator benchmark's trial shape

        base = json.loads(json.dumps(BASE))
        base["device"] = "cuda"
        base["precision"] = {"dtype": dtype}
        moe = dict(MOE_GPU)
    batch_tokens = base["optim"]["batch_size"] * base["model"]["seq_len"]
    base["optim"] = {**base["optim"], "tokens": steps * batch_tokens}
    return base, moe


def sweep_spec(
    name: str, work: Path, base: dict[str, Any], moe: dict[str, Any], n_trials: int, gpus: float, cpus: float,
    concurrency: int,
) -> Any:  # fmt: skip
    """One mode's sweep: ``n_trials`` trials, the first half dense and the rest MoE, told apart by seed."""
    from windtunnel.orchestrator.spec import parse_spec

    n_dense = n_trials // 2
    return parse_spec(
        {
            "name": name,
            "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
            "workdir": str(work / "runs"),
            "base": base,
            "resources": {"cpus": cpus, "gpus": gpus},
            "concurrency": concurrency,
            "retries": 0,
            "min_runs_to_fit": 10_000,  # no law fitting: this measures trial throughput
            "studies": [
                {"name": "dense", "grid": {"seed": list(range(n_dense))}},
                {
                    "name": "moe",
                    "overrides": {"model.moe": moe},
                    "grid": {"seed": list(range(n_trials - n_dense))},
                },
            ],
        }
    )


class GpuSampler:
    """Samples ``nvidia-smi --query-gpu=utilization.gpu,memory.used`` every ``period_s`` in a thread.

    ``available`` is False (and ``summary()`` None) when nvidia-smi is not on the PATH or fails.
    """

    QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]

    def __init__(self, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, float]] = []  # (utilisation %, memory MiB) of GPU 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.available = shutil.which("nvidia-smi") is not None and self._read() is not None

    def _read(self) -> tuple[float, float] | None:
        try:
            out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=10, check=True).stdout
            util, mem = out.strip().splitlines()[0].split(",")
            return float(util), float(mem)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            sample = self._read()
            if sample is not None:
                self.samples.append(sample)

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread = threading.Thread(target=self._loop, name="nvidia-smi", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        util = [s[0] for s in self.samples]
        return {
            "util_mean_pct": sum(util) / len(util),
            "util_max_pct": max(util),
            "util_busy_share": sum(u > 0 for u in util) / len(util),
            "mem_max_mib": max(s[1] for s in self.samples),
            "n_samples": float(len(self.samples)),
        }


def trial_records(uri: str, sweep: str, t0_epoch: float) -> list[dict[str, Any]]:
    """Each trial child run of ``sweep``: hash, family, status, start/end (s after ``t0_epoch``; MLflow's
    run start = the trial created its run, end = it closed it) and the trainer's own wall time."""
    from mlflow import MlflowClient

    from windtunnel.orchestrator.tracking import effective_status, trial_runs

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return []
    out = []
    for h, run in sorted(trial_runs(client, exp.experiment_id).items()):
        end = run.info.end_time
        out.append(
            {
                "config_hash": h,
                "family": run.data.tags.get("family", ""),
                "status": effective_status(run),
                "start_s": run.info.start_time / 1000 - t0_epoch,
                "end_s": None if end is None else end / 1000 - t0_epoch,
                "train_wall_s": run.data.metrics.get("wt.train_wall_s"),
            }
        )
    return out


def max_overlap(records: list[dict[str, Any]]) -> int:
    """Most trials alive at once: sweep over the [start_s, end_s) intervals (an end sorts before a start at
    the same time, so back-to-back trials do not count as overlapping)."""
    events = []
    for r in records:
        if r["end_s"] is not None:
            events += [(r["start_s"], 1), (r["end_s"], -1)]
    alive = best = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        alive += step
        best = max(best, alive)
    return best


def run_mode(
    label: str, k: int, args: argparse.Namespace, work: Path, base: dict[str, Any], moe: dict[str, Any]
) -> dict[str, Any]:
    """One sweep of the K trials with ``gpus = 1/k`` and ``concurrency = k`` (k = 1: one at a time)."""
    from windtunnel.orchestrator.driver import run_sweep
    from windtunnel.orchestrator.spec import expand

    gpus = 1.0 / k
    spec = sweep_spec(f"gpu_pack_{label}", work, base, moe, args.trials, gpus, args.cpus_per_trial, k)
    plan = expand(spec)
    t0_epoch = time.time()
    t0 = time.perf_counter()
    with GpuSampler(args.sample_s) as sampler:
        outcome = run_sweep(spec, plan, show_progress=False)
    wall = time.perf_counter() - t0
    records = trial_records(outcome.tracking_uri, spec.name, t0_epoch)
    finished = sorted(r["config_hash"] for r in records if r["status"] == "finished")
    train_s = [r["train_wall_s"] for r in records if r["train_wall_s"] is not None]
    ends = [r["end_s"] for r in records if r["end_s"] is not None]
    first_start = min((r["start_s"] for r in records), default=None)
    span = max(ends) - first_start if ends and first_start is not None else None
    return {
        "label": label,
        "k": k,
        "gpus_per_trial": gpus,
        "concurrency": k,
        "cpus_per_trial": args.cpus_per_trial,
        "wall_s": wall,
        "finished": len(finished),
        "runs_per_hour": 3600 * len(finished) / wall,
        "finished_hashes": finished,
        "counts": dict(outcome.counts),
        "max_trials_alive": max_overlap(records),
        # set-up before the first trial ran (data check, Tuner start, k Ray workers importing torch/mlflow)
        "first_trial_start_s": first_start,
        # first trial's start to last trial's end, and runs/hour over it (without the per-sweep set-up)
        "trials_span_s": span,
        "runs_per_hour_in_span": 3600 * len(finished) / span if span else None,
        "mean_trial_train_s": sum(train_s) / len(train_s) if train_s else None,
        "sum_trial_train_s": sum(train_s),
        "gpu": sampler.summary(),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "trials": records,
    }


def start_ray(args: argparse.Namespace) -> dict[str, float]:
    """Start Ray once with one GPU (logical in smoke mode) before the driver would; returns its resources.

    The driver calls ``ray.init`` only when Ray is not yet initialised, so the resources declared here stand.
    """
    # docs/DESIGN.md "Platform": no token file for a local session
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    want_cpus = max(args.ks) * args.cpus_per_trial
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    kwargs["num_gpus"] = 1  # one GPU, also on a machine with more; smoke: declared without hardware
    if args.smoke:  # logical CPUs so k trials fit on a small machine (smoke checks the code path only)
        kwargs["num_cpus"] = max(int(want_cpus + 0.999), os.cpu_count() or 1)
    ray.init(**kwargs)
    res = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    if res.get("CPU", 0.0) < want_cpus:
        print(
            f"warning: k={max(args.ks)} trials x {args.cpus_per_trial} CPUs > {res.get('CPU')} CPUs: "
            "CPUs, not the GPU, will cap the packing",
            file=sys.stderr,
        )
    return res


def print_table(result: dict[str, Any]) -> None:
    cols = [("mode", 6), ("gpu/trial", 9), ("conc", 4), ("done", 4), ("wall s", 7), ("runs/h", 7)]
    cols += [("x serial", 8), ("max alive", 9), ("setup s", 7), ("runs/h span", 11), ("trial s", 7)]
    cols += [("GPU util %", 10), ("GPU MiB", 7)]
    print(" ".join(f"{name:>{w}}" for name, w in cols))
    for m in [result["serial"], *result["packed"].values()]:
        g = m["gpu"] or {}
        cells = [
            m["label"],
            f"{m['gpus_per_trial']:.3f}",
            m["concurrency"],
            m["finished"],
            f"{m['wall_s']:.1f}",
            f"{m['runs_per_hour']:.0f}",
            f"{result['ratios'].get(str(m['k']), 1.0):.2f}",
            m["max_trials_alive"],
            "n/a" if m["first_trial_start_s"] is None else f"{m['first_trial_start_s']:.1f}",
            "n/a" if m["runs_per_hour_in_span"] is None else f"{m['runs_per_hour_in_span']:.0f}",
            "n/a" if m["mean_trial_train_s"] is None else f"{m['mean_trial_train_s']:.1f}",
            f"{g['util_mean_pct']:.0f}/{g['util_max_pct']:.0f}" if g else "n/a",
            f"{g['mem_max_mib']:.0f}" if g else "n/a",
        ]
        print(" ".join(f"{c!s:>{w}}" for c, (_, w) in zip(cells, cols, strict=True)))
    print(
        "x serial = runs/h over one at a time; setup s = sweep start to first trial start; runs/h span ="
        " finished / (last trial end - first trial start); trial s = mean trainer wall time in a trial;"
        " GPU util % = mean/max of nvidia-smi samples"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(
            "gpu_packing: no CUDA GPU present; nothing measured (--smoke runs the code path on the CPU)",
            file=sys.stderr,
        )
        return 2
    out = args.out or (RESULTS / "gpu_packing.json" if not args.smoke else None)
    base, moe = trial_base(args.smoke, args.steps, args.dtype)

    from trainer.config import RunConfig
    from trainer.data import prepare_data

    prepare_data(RunConfig.from_dict(base))  # the corpus/tokenizer cache, before any timing
    work = Path(tempfile.mkdtemp(prefix="wt_gpu_packing_"))
    try:
        resources = start_ray(args)
        order = [("serial", 1)] + [(f"k{k}", k) for k in args.ks]
        if args.first == "packed":
            order = order[1:] + order[:1]
        modes = {label: run_mode(label, k, args, work, base, moe) for label, k in order}
    finally:
        import ray

        ray.shutdown()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    serial = modes.pop("serial")
    packed = {str(m["k"]): m for m in modes.values()}
    ratios = {k: m["runs_per_hour"] / serial["runs_per_hour"] for k, m in packed.items()}
    span_ratios = {
        k: m["runs_per_hour_in_span"] / serial["runs_per_hour_in_span"]
        for k, m in packed.items()
        if m["runs_per_hour_in_span"] and serial["runs_per_hour_in_span"]
    }
    same = all(m["finished_hashes"] == serial["finished_hashes"] for m in packed.values())
    complete = serial["finished"] == args.trials and same
    result = {
        "benchmark": "gpu_packing",
        "smoke": args.smoke,
        "device": "cpu (smoke: logical Ray GPU)" if args.smoke else torch.cuda.get_device_name(0),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "benchmarks/gpu_packing.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "trials": args.trials,
        "steps": args.steps,
        "tokens_per_trial": base["optim"]["tokens"],
        "model": base["model"],
        "moe": moe,
        "dtype": base.get("precision", {}).get("dtype", "fp32"),
        "ray_resources": resources,
        "order": [label for label, _ in order],
        "serial": serial,
        "packed": packed,
        "ratios": ratios,
        "ratios_in_span": span_ratios,
        "same_finished_set": same,
        "all_finished": complete,
    }
    print_table(result)
    print(f"same finished trials in every mode: {same}; all {args.trials} finished: {complete}")
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="wt_gpu_packing_out_")) / "gpu_packing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
