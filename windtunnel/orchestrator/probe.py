"""Throughput probes: a few real training steps of the real trainer at one model shape, timed, and cached in
the tracking store keyed by (shape, hardware fingerprint).

A probe trains ``PROBE_STEPS`` steps of ``trainer.train`` on the run's own data path (``prepare_data``) with
the run's model, batch, precision, schedule kind and thread count, in a temporary workdir (checkpoints are
written as in a trial), beside ``copies - 1`` processes training the same shape (the sweep's other slots), a
validation every ``PROBE_EVAL_EVERY`` steps and a metric point every step. From the
trainer's own per-step ``step_time_s`` and the wall clock between its reports it measures:

- ``step_s``: median training-step time over the steps after the first ``PROBE_WARMUP`` (allocator warm-up);
- ``eval_s``: one validation (+ checkpoint) = wall time of an evaluating step minus its ``step_time_s``;
- ``overhead_s``: the rest of the run's wall time (data load, model build, the final WSM merge and its eval).

The cache is the MLflow experiment ``PROBE_EXPERIMENT``: one run per probe, tags ``probe.shape`` and
``probe.fingerprint`` (hashes), metrics as above. A new CPU, thread count, torch version or GPU changes the
fingerprint, so the next plan probes again instead of reusing another machine's numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.config import RunConfig

PROBE_EXPERIMENT = "windtunnel-probes"
PROBE_STEPS = 10
PROBE_WARMUP = 2
PROBE_EVAL_EVERY = 5


@dataclass(frozen=True)
class ProbeResult:
    """Measured costs of one shape on one machine (seconds)."""

    step_s: float
    eval_s: float
    overhead_s: float
    batch_tokens: int
    run_id: str = ""
    cached: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.batch_tokens / self.step_s


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_fingerprint() -> dict[str, str]:
    """What decides this machine's training speed: CPU model and core count, torch version, GPU name."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": _cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "gpu": gpu,
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def shape_key(cfg: RunConfig, threads: int, copies: int = 1) -> str:
    """Hash of what sets a step's cost: model, batch, precision, device, schedule kind, eval size, threads and
    the number of trials running side by side (not the learning rate, the token count or the seed)."""
    return _digest(
        {
            "model": cfg.model.model_dump(mode="json"),
            "batch_size": cfg.optim.batch_size,
            "micro_batch_size": cfg.optim.micro_batch_size,
            "precision": cfg.precision.model_dump(mode="json"),
            "device": cfg.device,
            "schedule": cfg.schedule.kind,
            "eval_batches": cfg.eval_batches,
            "threads": threads,
            "copies": copies,
        }
    )


def probe_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` cut to ``PROBE_STEPS`` steps, a report every step and an eval every ``PROBE_EVAL_EVERY``."""
    return cfg.with_overrides(
        {
            "optim.tokens": PROBE_STEPS * cfg.batch_tokens,
            "log_interval": 1,
            "eval_interval": PROBE_EVAL_EVERY,
            "name": "probe",
        }
    )


_warm = False  # the first training in a process pays one-off lazy imports and allocator set-up


def run_probe(cfg: RunConfig, threads: int, copies: int = 1) -> ProbeResult:
    """Time ``PROBE_STEPS`` real training steps of ``cfg`` (see the module docstring) while ``copies - 1``
    other processes train the same shape, as the sweep's other slots will (measured on 2 shared cores: two
    side by side each ran 1.7-2.2x slower than one alone). The first probe in a process runs twice and keeps
    the second: a trial worker (``reuse_actors``) pays that warm-up once per sweep, not per run."""
    global _warm
    if not _warm:
        _warm = True
        _timed_probe(cfg, threads)
    with _side_by_side(cfg, threads, copies - 1):
        return _timed_probe(cfg, threads)


@contextmanager
def _side_by_side(cfg: RunConfig, threads: int, n: int) -> Iterator[None]:
    """``n`` processes training ``cfg`` in a loop (this module as ``__main__``), warm before it yields."""
    if n <= 0:
        yield
        return
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="wt-probe-load-") as tmp:
        path = Path(tmp) / "run_config.json"
        path.write_text(cfg.model_dump_json())
        cmd = [sys.executable, "-m", "windtunnel.orchestrator.probe", str(path), str(threads)]
        try:
            for _ in range(n):
                procs.append(
                    subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                )
            for p in procs:
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"probe load process exited with {p.wait()}")
            yield
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=60)


def _timed_probe(cfg: RunConfig, threads: int) -> ProbeResult:
    import torch

    from trainer.loop import train

    pcfg = probe_config(cfg)
    stamps: list[tuple[int, float, dict[str, float]]] = []

    def report(step: int, metrics: dict[str, float]) -> None:
        stamps.append((step, time.perf_counter(), dict(metrics)))

    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        with tempfile.TemporaryDirectory(prefix="wt-probe-") as workdir:
            result = train(pcfg, report=report, workdir=workdir, resume=False)
    finally:
        torch.set_num_threads(old_threads)
    if result.status != "finished":
        raise RuntimeError(f"probe of {cfg.name} did not finish: {result.status} ({result.error})")
    steps = {s: (t, m) for s, t, m in stamps if "step_time_s" in m}
    step_times = [m["step_time_s"] for s, (_, m) in sorted(steps.items()) if s > PROBE_WARMUP]
    step_s = statistics.median(step_times)
    evals = [
        steps[s][0] - steps[s - 1][0] - steps[s][1]["step_time_s"]
        for s in steps
        if s % PROBE_EVAL_EVERY == 0 and s - 1 in steps
    ]
    eval_s = max(0.0, statistics.median(evals)) if evals else 0.0
    n_evals = len([s for s in steps if s % PROBE_EVAL_EVERY == 0 or s == pcfg.steps])
    in_loop = sum(m["step_time_s"] for _, m in steps.values()) + n_evals * eval_s
    return ProbeResult(step_s, eval_s, max(0.0, result.wall_s - in_loop), pcfg.batch_tokens)


class ProbeCache:
    """Probe results in the tracking store (experiment ``PROBE_EXPERIMENT``), keyed by shape + fingerprint."""

    def __init__(self, tracking_uri: str, fingerprint: dict[str, str] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.fingerprint = fingerprint if fingerprint is not None else hardware_fingerprint()
        self.fingerprint_key = _digest(self.fingerprint)
        self._client: Any = None
        self._exp_id: str | None = None

    def _open(self) -> tuple[Any, str]:
        from windtunnel.orchestrator.tracking import ensure_experiment, open_client

        if self._client is None:
            self._client = open_client(self.tracking_uri)
            self._exp_id = ensure_experiment(self._client, PROBE_EXPERIMENT)
        assert self._exp_id is not None
        return self._client, self._exp_id

    def get(self, key: str) -> ProbeResult | None:
        """The cached probe of ``key`` on this hardware, or None; reading creates nothing in the store."""
        from windtunnel.orchestrator.tracking import open_client, with_retry

        if self._client is None:
            client = open_client(self.tracking_uri)
            exp = with_retry(client.get_experiment_by_name, PROBE_EXPERIMENT)
            if exp is None:
                return None
            self._client, self._exp_id = client, exp.experiment_id
        client, exp_id = self._open()
        flt = f"tags.`probe.shape` = '{key}' and tags.`probe.fingerprint` = '{self.fingerprint_key}'"
        runs = with_retry(client.search_runs, [exp_id], flt, max_results=1, order_by=["start_time DESC"])
        if not runs:
            return None
        m = runs[0].data.metrics
        return ProbeResult(
            m["step_s"], m["eval_s"], m["overhead_s"], int(m["batch_tokens"]), runs[0].info.run_id, True
        )

    def put(self, key: str, cfg: RunConfig, probe: ProbeResult) -> ProbeResult:
        from mlflow.entities import Metric, Param

        from windtunnel.orchestrator.tracking import with_retry

        client, exp_id = self._open()
        tags = {"probe.shape": key, "probe.fingerprint": self.fingerprint_key, "mlflow.runName": "probe"}
        run = with_retry(client.create_run, exp_id, tags=tags)
        now = int(time.time() * 1000)
        values = {k: v for k, v in asdict(probe).items() if k not in ("run_id", "cached")}
        params = {f"hw.{k}": v for k, v in self.fingerprint.items()}
        params["model"] = cfg.model.model_dump_json()[:6000]
        with_retry(
            client.log_batch,
            run.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in values.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        with_retry(client.set_terminated, run.info.run_id, "FINISHED")
        return ProbeResult(**{**asdict(probe), "run_id": run.info.run_id})


def _load_main(argv: list[str]) -> None:
    """Train the probe of a RunConfig (JSON file ``argv[0]``, ``argv[1]`` threads) until terminated."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds: temporary workdirs are removed
    cfg = RunConfig.model_validate_json(Path(argv[0]).read_text())
    _timed_probe(cfg, int(argv[1]))
    print("ready", flush=True)
    while True:
        _timed_probe(cfg, int(argv[1]))


if __name__ == "__main__":
    _load_main(sys.argv[1:])
