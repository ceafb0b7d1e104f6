"""Connecting the sweep driver to Ray: local, an existing cluster (``--address auto|HOST:PORT``) or Ray Client
(``--address ray://HOST:PORT``, the ``ray[client]`` extra: the driver is not a cluster node and Tune's
``Tuner.fit`` runs in a remote task). Also the up-front check that trials fit the cluster, and the progress
poller that stands in for Tune's callbacks under Ray Client."""

from __future__ import annotations

import logging
import os
from typing import Any

from windtunnel.errors import SpecError, one_line
from windtunnel.orchestrator.spec import SweepSpec

# Tune's environment for a quiet, Ctrl-C-friendly sweep; under Ray Client (ray://) the Tuner runs in a remote
# task, so the same variables travel to the cluster in the job's runtime_env
TUNE_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Ctrl-C raises KeyboardInterrupt and ends the whole sweep; unfinished trials resume on the next run
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}


def ray_client_mode(address: str | None) -> bool:
    """``--address ray://host:port``: Ray Client (``ray[client]``), the driver is not on the cluster."""
    return bool(address) and str(address).startswith("ray://")


def connect_cluster(ray: Any, address: str) -> None:
    """``ray.init`` on an existing cluster; a cluster that cannot be reached is one line (``SpecError``)."""
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.ERROR}
    if ray_client_mode(address):
        kwargs["runtime_env"] = {"env_vars": {k: os.environ.get(k, v) for k, v in TUNE_ENV.items()}}
        kwargs["log_to_driver"] = False  # the remote Tuner's own log lines; the progress table stands
    try:
        ray.init(**kwargs)
    except Exception as err:  # noqa: BLE001 - any failure to connect is the user's address
        msg = one_line(f"{type(err).__name__}: {err}")[:300]
        raise SpecError(f"--address {address}: cannot connect to the Ray cluster ({msg})") from None


class StorePoller:
    """Refreshes the live progress table from the tracking store every ``interval_s`` (trials by state, as
    ``windtunnel status`` counts them): used under Ray Client, where Tune's callbacks run on the cluster."""

    def __init__(self, progress: Any, live: Any, uri: str, exp_id: str, interval_s: float = 2.0) -> None:
        import threading

        self.progress, self.live, self.uri, self.exp_id = progress, live, uri, exp_id
        self.interval_s = interval_s
        self._client: Any = None  # opened on the first poll, then reused
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wt-store-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()

    def poll(self) -> None:
        from windtunnel.orchestrator.tracking import effective_status, open_client, trial_runs

        try:
            if self._client is None:
                self._client = open_client(self.uri)
            runs = trial_runs(self._client, self.exp_id)
        except Exception:  # noqa: BLE001 - a busy store: the next poll reads it
            return
        self.progress.already_done = {}
        for key, run in runs.items():
            self.progress.set_state(key, effective_status(run))
        self.live.update(self.progress.table())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()


def check_cluster_fits(spec: SweepSpec, cluster: dict[str, float]) -> None:
    """A trial asking for more CPUs or GPUs than the whole Ray cluster has would wait forever, silently (Tune
    keeps it pending): refuse it up front, naming the field. (An autoscaling cluster that would add GPUs later
    is not supported: start its GPU nodes first.)"""
    for name, want, key in (("cpus", spec.resources.cpus, "CPU"), ("gpus", spec.resources.gpus, "GPU")):
        have = float(cluster.get(key, 0.0))
        if want > 0 and have + 1e-9 < want:
            raise SpecError(
                f"resources.{name}: {want:g} {key} per trial, but the Ray cluster has {have:g} {key}s"
                + (" (no GPU: set resources.gpus: 0 on a CPU machine)" if key == "GPU" and have == 0 else "")
            )
