"""Retries around the MLflow tracking store: which errors are transient, bounded back-off, HTTP settings,
and artifact uploads that fail with one clear line (re-exported by ``windtunnel.orchestrator.tracking``).

Transient (retried): SQLite "database is locked" and the SQLAlchemy errors around it; a tracking server or
database that is unreachable (refused/reset connections, timeouts, HTTP 429/502/503/504). Everything else,
HTTP 500 included (e.g. a full artifact disk behind the server), is raised at once.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient

from windtunnel.errors import ArtifactStoreError, one_line

T = TypeVar("T")

DEFAULT_DEADLINE_S = 300.0  # how long a caller waits for an unreachable/locked store (WT_TRACKING_DEADLINE_S)

# MLflow's own HTTP retries (urllib3) by default: 7 retries, back-off factor 2, 120 s timeout, i.e. minutes
# inside one call (and minutes of retried HTTP 500s for an artifact upload to a full disk). Trials keep
# them short and do the long wait themselves, where they can buffer. A value the user set is kept.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

_LOCKED = (
    "database is locked",
    "database table is locked",
    "database schema is locked",
    "pendingrollbackerror",  # SQLAlchemy, after a flush failed on a locked database
    "session's transaction has been rolled back",
    "can't reconnect until invalid transaction is rolled back",
)
_UNREACHABLE = (
    "connection refused",
    "connection reset",
    "connection aborted",
    "remotedisconnected",
    "remote end closed connection",
    "failed to establish a new connection",
    "newconnectionerror",
    "read timed out",
    "connect timeout",
    "timed out",
    "too many 502 error responses",
    "too many 503 error responses",
    "too many 504 error responses",
    "too many 429 error responses",
    "temporary failure in name resolution",
    # a PostgreSQL/MySQL backend that restarts under a server or a direct SQLAlchemy URI
    "server closed the connection unexpectedly",
    "could not connect to server",
    "connection to server at",
    "terminating connection due to administrator command",
    "the database system is starting up",
    "the database system is shutting down",
)


def configure_http_retries() -> None:
    """Set MLflow's HTTP retry/timeout environment variables to ``HTTP_DEFAULTS`` where the user did not."""
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


configure_http_retries()


def deadline_s() -> float:
    """The wait for an unavailable store: ``WT_TRACKING_DEADLINE_S`` (seconds), default 300."""
    try:
        return float(os.environ.get("WT_TRACKING_DEADLINE_S", DEFAULT_DEADLINE_S))
    except ValueError:
        return DEFAULT_DEADLINE_S


def transient_kind(err: BaseException) -> str | None:
    """``"locked"`` (SQLite busy), ``"unreachable"`` (server/database away) or None (a real error).

    Judged on the exception chain's types and messages: MLflow wraps both SQLAlchemy's
    ``OperationalError`` and requests' ``ConnectionError`` into ``MlflowException`` text.
    """
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = f"{type(e).__name__}: {e}".lower()
        if any(s in text for s in _LOCKED):
            return "locked"
        if isinstance(e, ConnectionError | TimeoutError) or any(s in text for s in _UNREACHABLE):
            return "unreachable"
        e = e.__cause__ or e.__context__
    return None


def backoff_s(attempt: int, base_s: float = 0.05, max_s: float = 5.0) -> float:
    """Exponential back-off with jitter: ``min(max_s, base_s * 2**attempt) * U(0.5, 1.5)``."""
    return min(max_s, base_s * 2 ** min(attempt, 30)) * (0.5 + random.random())


def with_retry(
    fn: Callable[..., T],
    *args: Any,
    attempts: int | None = None,
    base_s: float = 0.05,
    max_sleep_s: float = 5.0,
    retry_deadline_s: float | None = None,
    **kw: Any,
) -> T:
    """Call ``fn(*args, **kw)``; retry transient store errors (``transient_kind``) with ``backoff_s``.

    Gives up (re-raising the last error) after ``attempts`` calls when given, and in any case once
    ``retry_deadline_s`` (default ``deadline_s()``) has passed; other errors are raised at once.
    """
    limit = deadline_s() if retry_deadline_s is None else retry_deadline_s
    t0 = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn(*args, **kw)
        except Exception as err:  # noqa: BLE001 - MlflowException, sqlalchemy or requests errors
            attempt += 1
            kind = transient_kind(err)
            if kind is None or (attempts is not None and attempt >= attempts):
                raise
            pause = backoff_s(attempt - 1, base_s, max_sleep_s)
            if time.monotonic() - t0 + pause > limit:
                raise
            RETRY_STATS[kind] = RETRY_STATS.get(kind, 0) + 1
            time.sleep(pause)


RETRY_STATS: dict[str, int] = {}  # transient errors retried in this process, by kind (for tests/benchmarks)


def log_artifact(
    client: MlflowClient, run_id: str, local_path: str | Path, artifact_path: str | None = None
) -> None:
    """``client.log_artifact`` with transient retries; failures become one-line ``ArtifactStoreError``.

    The metrics and runs already in the store are unaffected by a failed artifact upload (separate stores).
    """
    path = Path(local_path)
    try:
        with_retry(client.log_artifact, run_id, str(path), artifact_path)
    except Exception as err:  # noqa: BLE001
        raise ArtifactStoreError(_artifact_error(client, run_id, path, artifact_path, err)) from err


def _artifact_error(
    client: MlflowClient, run_id: str, path: Path, artifact_path: str | None, err: BaseException
) -> str:
    size = path.stat().st_size if path.exists() else 0
    try:
        root = client.get_run(run_id).info.artifact_uri
    except Exception:  # noqa: BLE001 - the store may be the problem
        root = f"run {run_id}"
    dest = f"{root.rstrip('/')}/{artifact_path + '/' if artifact_path else ''}{path.name}"
    detail = one_line(err)
    if isinstance(err, OSError) and err.errno is not None:  # a local (file://) artifact store
        cause = f"{os.strerror(err.errno)} ({getattr(err, 'filename', None) or dest})"
    elif "too many 500 error responses" in detail or " 500 " in detail:
        cause = (
            "the tracking server failed to write it (HTTP 500): its artifact store is full or not "
            "writable, see the server's log"
        )
    else:
        cause = detail[:300]
    return (
        f"cannot store artifact {path} ({size:,} bytes) at {dest}: {cause}; "
        "runs and metrics already logged are not affected"
    )
