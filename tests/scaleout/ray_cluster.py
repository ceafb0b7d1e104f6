"""A real multi-node Ray cluster on one machine, for tests: a head and worker nodes as separate processes.

Each node is one ``ray start --block`` process started in its own session (process group), with its own
``--num-cpus``, a custom resource that names it, and free ports picked at run time (GCS, node manager,
object manager, dashboard, agents, metrics and a private worker-port range), so that it cannot collide
with another Ray on the machine. All nodes share one short ``--temp-dir`` under /tmp (Unix socket paths
must stay under 108 bytes).

Ray's raylet starts its worker processes in new sessions, so a node's process group does not hold its
workers: ``RayNode.kill()`` SIGKILLs the whole process tree under the ``ray start`` process (found via
/proc), which is what a machine dying looks like to the rest of the cluster. Teardown never calls
``ray stop`` (it would stop every Ray on the machine, other people's included).

Node state is read from the GCS with ``ray._raylet.GcsClient.get_all_node_info`` (the call ``ray status``
and Serve use; no driver needs to connect, so it takes milliseconds and can be polled).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

RAY_BIN = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1 (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_range(n: int = 40, lo: int = 24000, hi: int = 32000) -> tuple[int, int]:
    """``n`` consecutive free ports below the Linux ephemeral range (32768+), chosen at random; above
    23000-23999, where the head's Ray Client server starts one server per connected client (a worker-port
    range there made ``ray://`` connections fail with "Starting Ray client server failed")."""
    for _ in range(200):
        base = random.randrange(lo, hi - n)
        if all(_port_free(p) for p in range(base, base + n)):
            return base, base + n - 1
    raise RuntimeError(f"no {n} consecutive free ports in [{lo}, {hi})")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name (field 2) is in parentheses and may hold spaces: split after the last ")"
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


@dataclass
class RayNode:
    """One Ray node: a ``ray start --block`` process and everything it started."""

    name: str  # also the name of the node's custom resource (value 1)
    proc: subprocess.Popen
    log_path: Path
    node_id: str = ""  # hex, filled in once the node has registered with the GCS
    killed: bool = False

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def kill(self) -> float:
        """SIGKILL the node's whole process tree (a machine dying); returns time.time() of the kill.

        The tree is frozen with SIGSTOP first (and looked at again until no new child appears), so that a
        process forked during the kill cannot escape as an orphan.
        """
        t = time.time()
        self.killed = True
        pids: set[int] = set()
        for _ in range(5):
            new = set(self.pids()) - pids
            if not new:
                break
            pids |= new
            _signal_all(new, signal.SIGSTOP)
        _signal_all(pids, signal.SIGKILL)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        return t

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class LocalRayCluster:
    """A Ray head plus worker nodes on this machine, each node its own process tree and resources."""

    root: Path  # the shared --temp-dir (short path under /tmp)
    env: dict[str, str]
    port: int = 0
    client_port: int = 0  # the head's Ray Client server (``ray://127.0.0.1:<client_port>``)
    nodes: list[RayNode] = field(default_factory=list)
    _gcs: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ports(self) -> list[str]:
        lo, hi = free_port_range()
        args = ["--min-worker-port", str(lo), "--max-worker-port", str(hi)]
        for opt in (
            "--node-manager-port",
            "--object-manager-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
        ):
            args += [opt, str(free_port())]
        return args

    def _start(self, name: str, args: list[str], num_cpus: int) -> RayNode:
        log = self.root / f"{name}.log"
        cmd = [
            RAY_BIN,
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(num_cpus),
            "--resources",
            json.dumps({name: 1}),
            "--temp-dir",
            str(self.root),
            "--object-store-memory",
            str(100 * 2**20),
            "--disable-usage-stats",
            "--include-log-monitor",
            "false",  # worker logs stay in the node's log files instead of streaming to the driver
            *args,
            *self._ports(),
        ]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        node = RayNode(name, proc, log)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int = 1, name: str = "wt_head", timeout: float = 90.0) -> RayNode:
        """Start the head node (GCS on a free port) and wait until it is alive; tried twice (see add_node)."""
        for attempt in range(2):
            self.port, self.client_port = free_port(), free_port()
            args = ["--head", "--port", str(self.port), "--include-dashboard", "false"]
            args += ["--ray-client-server-port", str(self.client_port)]
            head = self._start(name, [*args, "--dashboard-port", str(free_port())], num_cpus)
            try:
                self.wait_node(head, timeout)
                return head
            except (RuntimeError, TimeoutError):
                head.kill()
                self.nodes.remove(head)
                self._gcs = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def add_node(self, name: str, num_cpus: int = 1, timeout: float = 90.0, attempts: int = 2) -> RayNode:
        """Start a worker node and wait until it is alive. ``ray start`` gives a raylet 30 s (fixed in Ray)
        to register; on a loaded machine that can run out, so a failed start is tried again once."""
        for attempt in range(attempts):
            node = self._start(name, ["--address", self.address], num_cpus)
            try:
                self.wait_node(node, timeout)
                return node
            except (RuntimeError, TimeoutError):
                node.kill()
                self.nodes.remove(node)
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def worker(self, name: str = "wt_worker", num_cpus: int = 1) -> RayNode:
        """A live worker node: the last one started if it was not killed, else a new one."""
        live = [n for n in self.nodes[1:] if not n.killed and n.proc.poll() is None]
        if live:
            return live[-1]
        return self.add_node(f"{name}_{len(self.nodes)}", num_cpus=num_cpus)

    def gcs(self) -> Any:
        if self._gcs is None:
            from ray._raylet import GcsClient

            self._gcs = GcsClient(address=self.address)
        return self._gcs

    def node_table(self) -> list[dict[str, Any]]:
        """Every node the GCS knows: ``node_id`` (hex), ``alive``, ``resources``, ``is_head``."""
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        rows = []
        for node_id, info in self.gcs().get_all_node_info(timeout=5).items():
            rows.append(
                {
                    "node_id": node_id.hex(),
                    "alive": info.state == GcsNodeInfo.ALIVE,
                    "resources": dict(info.resources_total),
                    "is_head": bool(info.is_head_node),
                }
            )
        return rows

    def wait_node(self, node: RayNode, timeout: float) -> None:
        """Wait until ``node`` is registered and alive (its custom resource identifies it)."""
        deadline = time.monotonic() + timeout
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray node {node.name} exited:\n{node.log_tail()}")
            try:
                for row in self.node_table():
                    if row["alive"] and node.name in row["resources"]:
                        node.node_id = row["node_id"]
                        return
            except Exception as err:  # noqa: BLE001 - the GCS may not be up yet
                last_err = err
                self._gcs = None
            time.sleep(0.25)
        raise TimeoutError(
            f"ray node {node.name} not alive after {timeout}s ({last_err!r}):\n{node.log_tail()}"
        )

    def ray_status_nodes(self, want: int, timeout: float = 60.0) -> list[str]:
        """Active node ids from the public ``ray status`` CLI, polled until it lists ``want`` of them (its
        numbers come from the autoscaler monitor, refreshed every few seconds)."""
        active: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                [RAY_BIN, "status", "--address", self.address],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
            block = out.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in out else ""
            active = [w.removeprefix("node_") for w in block.split() if w.startswith("node_")]
            if len(active) >= want:
                break
            time.sleep(2.0)
        return active

    def alive_ids(self) -> set[str]:
        return {r["node_id"] for r in self.node_table() if r["alive"]}

    def wait_dead(self, node: RayNode, timeout: float = 120.0) -> float:
        """Poll the GCS until it marks ``node`` dead; returns time.time() at that moment."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.node_id not in self.alive_ids():
                return time.time()
            time.sleep(0.1)
        raise TimeoutError(f"the GCS still lists {node.name} alive {timeout}s after it was killed")

    def shutdown(self) -> None:
        """Kill every node's process tree (workers first, head last); never ``ray stop``."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None or len(node.pids()) > 1:
                try:
                    node.kill()
                except (subprocess.TimeoutExpired, OSError):
                    pass
        self._gcs = None


def ray_env() -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    """A Ray head node (1 CPU, resource ``wt_head``) in its own processes; add nodes with ``add_node``.

    Module scope: the head is shared by the tests of a module; each test adds (and may kill) its own worker
    node. Everything is killed in the finalizer, even when a test fails.
    """
    pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # for the in-process GcsClient too
    root = Path(tempfile.mkdtemp(prefix="wtray", dir="/tmp"))
    cluster = LocalRayCluster(root=root, env=ray_env())
    try:
        cluster.start_head(num_cpus=1)
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def worker_node(ray_cluster: LocalRayCluster) -> RayNode:
    """A second node (1 CPU, custom resource ``wt_worker_<n>``) joined to ``ray_cluster``.

    Tests of a module share it while it lives; a test that kills it gets a new one next time. The
    ``ray_cluster`` finalizer kills it.
    """
    return ray_cluster.worker()
