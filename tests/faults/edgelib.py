"""Helpers of the sweep-edge fault tests: run the real ``windtunnel`` CLI, fingerprint a store, make a folder
read-only for real (a read-only tmpfs as root, where ``chmod`` does not stop writes; ``chmod`` otherwise)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "windtunnel.cli", *args]


def cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``windtunnel ARGS`` in ``cwd``; stdout and stderr captured."""
    return subprocess.run(run_cmd(args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str, command: str = "run") -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"windtunnel {command}: error:")]


def digest(path: Path) -> str | None:
    """sha256 of a file's bytes (None when absent): a store that is unchanged has the same digest."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def make_store(db: Path) -> None:
    """A migrated SQLite tracking store with one experiment and one finished run (a store in use)."""
    from windtunnel.orchestrator.tracking import open_client

    client = open_client(f"sqlite:///{db}")
    exp = client.create_experiment("earlier")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "loss", 1.0, step=1)
    client.set_terminated(run.info.run_id)


@contextlib.contextmanager
def read_only_folder(prepare: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A folder filled by ``prepare``, then made read-only (as root: a tmpfs remounted read-only; what
    ``prepare`` writes must be closed or the remount is refused: copy a store in, do not open it there)."""
    root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="wt-ro-", dir="/tmp"))
    mounted = False
    if root:
        cmd = ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(folder)]
        mounted = (
            shutil.which("mount") is not None and subprocess.run(cmd, capture_output=True).returncode == 0
        )
        if not mounted:
            shutil.rmtree(folder)
            import pytest

            pytest.skip("as root a read-only folder needs a tmpfs mount, which failed here")
    try:
        if prepare is not None:
            prepare(folder)
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        else:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        else:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(folder, ignore_errors=True)
