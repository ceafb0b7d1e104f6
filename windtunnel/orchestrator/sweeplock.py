"""One driver per sweep: an exclusive ``fcntl.flock`` on ``<workdir>/<sweep>/.driver.lock``.

The lock is held for the driver's life and released by the kernel when its file is closed, on any exit,
``kill -9`` included, so a stale lock cannot block the next run (the file may stay; its lock does not).
The file holds the holder's ``pid`` and ``host`` for the message a second driver prints:
``sweep X is already running (pid N, host H)``. The descriptor is not inherited by child processes (Ray's),
so the lock ends with the driver itself. ``flock`` on network file systems (NFS) is only as good as the
file system's lock support: run one sweep's drivers against one workdir on a local disk or a lock-aware share.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from windtunnel.errors import SweepBusy

LOCK_NAME = ".driver.lock"


class SweepLock:
    """``with SweepLock(sweep_dir, name):`` holds the sweep's lock or raises ``SweepBusy``."""

    def __init__(self, sweep_dir: Path, sweep: str) -> None:
        self.path = Path(sweep_dir) / LOCK_NAME
        self.sweep = sweep
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC by default (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise SweepBusy(
                f"sweep {self.sweep} is already running (pid {holder.get('pid', '?')}, "
                f"host {holder.get('host', '?')}); lock {self.path}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays for the next driver
            self.fd = None

    def __enter__(self) -> SweepLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, object]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
