"""A sweep cannot be fooled (real Ray Tune, MLflow SQLite, the trainer, the ``windtunnel`` CLI):

- two drivers of one sweep: the second exits 2 naming the first (pid, host; the first is SIGSTOPped while
  the second runs, so it holds its lock however slow the machine) and runs nothing; the first is then
  SIGKILLed alone (not its process group): its Ray processes, the agents included, are gone within
  seconds (``raywatch``); a new driver is not blocked by the dead one's lock, finishes the sweep, and every
  metric of every run holds each step exactly once (a WSM run's last ``val_loss`` included);
- a sweep re-run after its data file's content changed (same path, same YAML), and again after its base
  model changed, reuses nothing and runs every trial anew; an unchanged re-run reuses all, and says why.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from edgelib import ENV, cli, error_lines, run_cmd
from micro_spec import MICRO_DATA, micro_base
from mlflow import MlflowClient

from windtunnel.orchestrator.tracking import effective_status, open_client

pytestmark = [pytest.mark.slow, pytest.mark.faults]

STEPS = 80  # 40,960 tokens of 8 x 64


def _contested_spec() -> dict[str, Any]:
    base = micro_base(STEPS * 512)
    base["schedule"] = {"kind": "wsm"}  # the last val_loss is the merged model's
    return {
        "name": "contested",
        "data": dict(MICRO_DATA),
        "base": base,
        "concurrency": 1,
        "min_runs_to_fit": 99,
        "studies": [{"name": "lr", "grid": {"optim.lr": [1e-3, 3e-3]}}],
    }


def _trial_runs(uri: str, name: str) -> list[Any]:
    client = open_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`windtunnel.role` = 'trial'")


def _leftovers(driver: int, since: float) -> list[str]:
    """Processes of the killed driver's session, and watchdogs started after it."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            in_session = os.getsid(p.pid) == driver
        except OSError:
            continue
        watchdog = "windtunnel.orchestrator.raywatch" in " ".join(p.info["cmdline"] or [])
        if in_session or (watchdog and p.info["create_time"] >= since):
            out.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:80]}")
    return out


@pytest.fixture(scope="module")
def contested(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("contested")
    spec_path = tmp / "contested.yaml"
    spec_path.write_text(yaml.safe_dump(_contested_spec()))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    lock = tmp / "wt_runs" / "contested" / ".driver.lock"
    args = ["run", str(spec_path), "--no-progress"]
    first = subprocess.Popen(
        run_cmd(args),
        cwd=tmp,
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = psutil.Process(first.pid).create_time()
    facts: dict[str, Any] = {"uri": uri, "pid": first.pid}
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:  # a trial is training under the first driver
            time.sleep(1.0)
            try:
                if json.loads(lock.read_text() or "{}").get("pid") == first.pid and _trial_runs(
                    uri, "contested"
                ):
                    break
            except Exception:  # noqa: BLE001 - the store may be mid-creation
                continue
        # stopped, the first driver keeps its lock (and its trials train on) however long the second one takes
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None, "the first driver ended before a trial started"
        t0 = time.perf_counter()
        facts["second"] = cli(args, tmp, timeout=240)
        facts["second_s"] = time.perf_counter() - t0
        os.kill(first.pid, signal.SIGKILL)  # the driver alone, as `kill -9 PID` does
        first.wait()
        t_kill = time.perf_counter()
        left = _leftovers(first.pid, started)
        while left and time.perf_counter() - t_kill < 60:
            time.sleep(0.5)
            left = _leftovers(first.pid, started)
        facts["left"], facts["gone_after_s"] = left, time.perf_counter() - t_kill
        print(  # for RELIABILITY.md's timings (pytest -s)
            f"[contested] second driver refused in {facts['second_s']:.1f} s; "
            f"Ray processes gone {facts['gone_after_s']:.1f} s after kill -9 of the driver"
        )
        facts["third"] = cli(args, tmp, timeout=600)
    finally:
        for line in _leftovers(first.pid, started):  # never leave a process behind, whatever failed
            with_pid = int(line.split()[0])
            try:
                os.kill(with_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return facts


def test_second_driver_exits_2_naming_the_running_one(contested: dict[str, Any]) -> None:
    second = contested["second"]
    assert second.returncode == 2, (second.stdout[-2000:], second.stderr[-2000:])
    (line,) = error_lines(second.stderr)
    host = socket.gethostname()
    assert f"sweep contested is already running (pid {contested['pid']}, host {host})" in line
    assert "Traceback" not in second.stderr and "launched" not in second.stdout


def test_kill9_of_the_driver_leaves_no_ray_process(contested: dict[str, Any]) -> None:
    assert contested["left"] == [], contested["left"]
    assert contested["gone_after_s"] < 30


def test_rerun_after_kill9_is_not_blocked_and_logs_each_step_once(contested: dict[str, Any]) -> None:
    third = contested["third"]
    assert third.returncode == 0, third.stderr[-3000:]
    client = MlflowClient(contested["uri"])
    runs = _trial_runs(contested["uri"], "contested")
    assert len(runs) == 2 and all(effective_status(r) == "finished" for r in runs)
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            dup = [s for s, n in Counter(steps).items() if n > 1]
            assert not dup, (key, dup)
        loss = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        assert loss == list(range(5, STEPS + 1, 5))
        val = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert val == list(range(10, STEPS + 1, 10))  # the last one is the merged model's, once
        unmerged = client.get_metric_history(run.info.run_id, "val_loss_unmerged")
        assert [m.step for m in unmerged] == [STEPS]
        assert run.data.metrics["rt.loss"] == pytest.approx(run.data.metrics["val_loss"])


def _corpus(path: Path, first: int) -> None:
    """A text corpus of 40 stdlib modules (documents joined by the end-of-text marker) from module ``first``
    on in name order: another ``first`` gives other bytes under the same path."""
    files = sorted(Path(os.__file__).parent.glob("*.py"))[first : first + 40]
    path.write_text("<|endoftext|>".join(f.read_text(errors="replace")[:20_000] for f in files))


def test_changed_data_or_base_model_reuses_nothing(tmp_path: Path) -> None:
    from trainer.config import RunConfig
    from trainer.flops import flops_per_token

    corpus = tmp_path / "corpus.txt"
    _corpus(corpus, 0)
    base = micro_base(10_240)
    m = float(flops_per_token(RunConfig.from_dict(base).model))
    spec: dict[str, Any] = {
        "name": "content",
        "data": {"source": "files", "paths": [str(corpus)], "val_fraction": 0.1},
        "base": base,
        "concurrency": 1,
        "min_runs_to_fit": 99,
        "studies": [
            {"name": "grid", "grid": {"optim.lr": [3e-3]}},
            {
                "name": "search",
                "search": {
                    "budgets": [10_240 * m],
                    "lr": {"low": 1e-3, "high": 1e-2},
                    "num_samples": 2,
                    "scheduler": "none",
                },
            },
        ],
    }
    spec_path = tmp_path / "content.yaml"
    args = ["run", str(spec_path), "--no-progress"]

    def run() -> str:
        spec_path.write_text(yaml.safe_dump(spec))
        out = cli(args, tmp_path, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    assert "(0 already done, 3 launched)" in run()
    _corpus(corpus, 40)  # the same path and YAML, other content
    out = run()
    assert "(0 already done, 3 launched)" in out and "not reused: 3 stored runs" in out
    spec["base"]["model"]["d_ffn"] = 64  # another base model under the same sweep name
    out = run()
    assert "(0 already done, 3 launched)" in out and "not reused: 6 stored runs" in out
    out = run()  # unchanged: everything is reused, and the summary says why
    assert "(3 already done, 0 launched)" in out
    assert "reused 3 stored results, each with the same resolved config, same data manifest" in out
    runs = _trial_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "content")
    assert len(runs) == 9 and all(effective_status(r) == "finished" for r in runs)
    manifests = Counter(r.data.tags["manifest_hash"] for r in runs)
    assert sorted(manifests.values()) == [3, 6]  # the first content, then the second (two base models)
    assert len({r.data.tags["trial_key"] for r in runs}) == 9
