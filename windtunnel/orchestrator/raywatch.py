"""Stop a sweep driver's local Ray with the driver, also after ``kill -9``.

``ray.init(address="local")`` starts the GCS, the raylet and their agents as the driver's descendants. On a
normal exit (or an exception) ``ray.shutdown`` stops them. After a SIGKILL of the driver alone the GCS and
the raylet go with it, but the raylet's ``DashboardAgent`` and ``RuntimeEnvAgent`` notice their parent is
gone and then hang in a last report to the dead GCS (``ray._private.process_watcher``), ignoring SIGTERM,
for a minute or more. So the driver starts this watchdog (``start_watchdog``): a small process in its own
session that holds the read end of a pipe from the driver and a list of the driver's descendants (pid and
start time, refreshed every ``REFRESH_S`` seconds by a daemon thread, so agents the raylet starts later are
in it). When the pipe closes (the driver ended, however) the watchdog waits ``GRACE_S`` seconds for Ray's own
shutdown and then SIGKILLs every listed process still alive with the same start time (a reused pid is
never touched), and exits. It runs only for a Ray the driver started itself, never for ``--address``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

REFRESH_S = 2.0
GRACE_S = 3.0


def _descendants() -> list[tuple[int, float]]:
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            out.append((child.pid, child.create_time()))
        except psutil.Error:
            continue
    return out


def start_watchdog() -> subprocess.Popen:
    """Start the watchdog for this process's Ray descendants; it lives until this process ends."""
    read_fd, write_fd = os.pipe()  # both non-inheritable: Ray's processes never hold the write end
    proc = subprocess.Popen(
        [sys.executable, "-m", "windtunnel.orchestrator.raywatch"],
        stdin=read_fd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a kill of the driver's process group leaves it to do its work
    )
    os.close(read_fd)
    watched = {proc.pid}

    def refresh() -> None:
        while True:
            found = [(pid, t) for pid, t in _descendants() if pid not in watched]
            if found:
                try:
                    os.write(write_fd, (json.dumps(found) + "\n").encode())
                except OSError:  # the watchdog is gone
                    return
            time.sleep(REFRESH_S)

    threading.Thread(target=refresh, name="raywatch", daemon=True).start()
    return proc


def _kill_listed(listed: dict[int, float]) -> int:
    import psutil

    n = 0
    for pid, created in listed.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 1e-3:
                p.send_signal(signal.SIGKILL)
                n += 1
        except psutil.Error:
            continue
    return n


def main() -> int:
    listed: dict[int, float] = {}
    for line in sys.stdin:  # ends when the driver's write end closes
        try:
            listed.update({int(pid): float(t) for pid, t in json.loads(line)})
        except (ValueError, TypeError):
            continue
    time.sleep(GRACE_S)
    _kill_listed(listed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
