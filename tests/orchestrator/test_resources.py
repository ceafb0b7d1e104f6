"""Trials that ask for more than the Ray cluster has are refused up front, naming the field (Tune would keep
them pending forever without a word: a sweep with ``resources.gpus: 0.5`` on a CPU machine hung before)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from micro_spec import MICRO_DATA, micro_base

from windtunnel.orchestrator.raycluster import check_cluster_fits
from windtunnel.orchestrator.spec import SpecError, parse_spec


def _spec(resources: dict) -> dict:
    return {
        "name": "res",
        "data": dict(MICRO_DATA),
        "base": micro_base(4_000),
        "resources": resources,
        "studies": [{"name": "g", "grid": {"optim.lr": [1e-3]}}],
    }


@pytest.mark.parametrize(
    ("resources", "cluster", "message"),
    [
        (
            {"cpus": 1, "gpus": 0.5},
            {"CPU": 2.0},
            "resources.gpus: 0.5 GPU per trial, but the Ray cluster has 0 GPUs",
        ),
        (
            {"cpus": 4},
            {"CPU": 2.0, "GPU": 1.0},
            "resources.cpus: 4 CPU per trial, but the Ray cluster has 2 CPUs",
        ),
        ({"cpus": 1, "gpus": 2}, {"CPU": 16.0, "GPU": 1.0}, "resources.gpus: 2 GPU per trial"),
    ],
)
def test_requests_beyond_the_cluster_are_refused(resources: dict, cluster: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace(".", r"\.")):
        check_cluster_fits(parse_spec(_spec(resources)), cluster)


@pytest.mark.parametrize(
    ("resources", "cluster"),
    [
        ({"cpus": 1, "gpus": 0.25}, {"CPU": 2.0, "GPU": 1.0}),
        ({"cpus": 2}, {"CPU": 2.0}),
        ({"cpus": 1}, {"CPU": 1.0}),
    ],
)
def test_requests_within_the_cluster_pass(resources: dict, cluster: dict) -> None:
    check_cluster_fits(parse_spec(_spec(resources)), cluster)


@pytest.mark.slow
def test_cli_gpu_sweep_on_a_cpu_machine_exits_2_with_one_line(tmp_path: Path) -> None:
    """End to end: one line, exit 2, before the store is touched (Tune would keep the trial pending)."""
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(_spec({"cpus": 1, "gpus": 0.5})))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "windtunnel.cli", "run", str(path), "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("windtunnel run: error: resources.gpus: 0.5 GPU per trial"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was created


class _Unreachable:
    """Stands in for the ``ray`` module in a unit test of ``connect_cluster``'s own logic (what it passes,
    what it turns a failure into); the real Ray Client path is tests/scaleout/test_ray_cluster.py."""

    def __init__(self) -> None:
        self.kwargs: dict = {}

    def init(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        raise ConnectionError("ray client connection timeout")


def test_unreachable_cluster_is_one_line_and_client_mode_carries_the_tune_env() -> None:
    from windtunnel.orchestrator.raycluster import TUNE_ENV, connect_cluster

    fake = _Unreachable()
    with pytest.raises(SpecError) as err:
        connect_cluster(fake, "ray://10.0.0.1:10001")
    assert str(err.value) == (
        "--address ray://10.0.0.1:10001: cannot connect to the Ray cluster "
        "(ConnectionError: ray client connection timeout)"
    )
    assert set(fake.kwargs["runtime_env"]["env_vars"]) == set(TUNE_ENV)
    assert fake.kwargs["log_to_driver"] is False
    with pytest.raises(SpecError, match="^--address 10.0.0.1:6379: cannot connect"):
        connect_cluster(fake, "10.0.0.1:6379")
    assert "runtime_env" not in fake.kwargs  # a cluster node: the driver's own environment is the Tuner's
