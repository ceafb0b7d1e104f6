"""Shared helpers of the data pipeline: errors, progress lines, hashing, file locks, atomic writes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EOT_TOKEN = "<|endoftext|>"
"""End-of-text special token: separates documents in every shard."""

FORMAT_VERSION = 1
"""Bump when the on-disk layout or the corpus/split rules change: it is part of every cache key."""


class DataError(ValueError):
    """Bad data input (missing path, unsupported format, too little text); the message says what to fix."""


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """One progress line on stderr (long steps only)."""
    print(f"[windtunnel.data +{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object, independent of dict ordering."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` so that readers never see a half-written file (tmp file + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (``fcntl.flock``) held for the duration of the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def cached_sha256_file(path: Path, cache_dir: Path) -> str:
    """sha256 of a file, remembered under ``cache_dir/index`` by (path, size, mtime_ns, inode)."""
    st = path.stat()
    key = sha256_json([str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino])[:32]
    memo = cache_dir / "index" / f"sha-{key}.txt"
    if memo.exists():
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    digest = sha256_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.tmp-{os.getpid()}")
    tmp.write_text(digest)
    os.replace(tmp, memo)
    return digest
