"""Text corpora: the offline default corpus and user text files, each with a content manifest.

Default corpus (``data.source == "default"``): the running Python installation's own standard-library
source (``sysconfig.get_paths()["stdlib"]``, ``*.py``), real text that is on every machine without a
network and that no one here wrote. Files are taken in a fixed order -- library modules first, then the
test suites (``test``/``tests``/``idle_test`` folders), each group by sorted relative path -- skipping
``site-packages``, ``__pycache__``, files that are not valid UTF-8 and empty files, and stopping before
the first file that would take the total past ``max_corpus_bytes``. One file is one document.

User text (``data.source == "files"``): ``.txt``/``.md``/``.rst`` (one file is one document, or several if
separated by ``<|endoftext|>``), ``.jsonl``/``.ndjson`` (one document per line, field ``text_field``) and
``.parquet`` (one document per row, column ``text_field``). Folders are searched recursively, globs expanded.

The manifest lists (path, size, sha256) per file; the manifest hash covers the ordered (size, sha256)
pairs, the source kind, the extraction parameters and ``FORMAT_VERSION`` -- i.e. the content, not where
it lives. A stat index (path, size, mtime) -> manifest avoids re-reading the files on cache hits.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import DataConfig
from trainer.data.common import (
    EOT_TOKEN,
    FORMAT_VERSION,
    DataError,
    read_json,
    sha256_bytes,
    sha256_file,
    sha256_json,
    write_json_atomic,
)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_TEXT_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
TEST_DIR_NAMES = frozenset({"test", "tests", "idle_test"})
SKIP_DIR_NAMES = frozenset({"site-packages", "__pycache__"})


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative to the stdlib for the default corpus, absolute for user files
    size: int
    sha256: str


@dataclass(frozen=True)
class Corpus:
    """An ordered list of files whose documents make up the corpus, and the hash of their content."""

    source: str
    root: str  # stdlib folder for the default corpus, "" for user files
    entries: tuple[ManifestEntry, ...]
    params: dict[str, Any] = field(default_factory=dict)
    python_version: str = ""

    @property
    def manifest_hash(self) -> str:
        return manifest_hash(self.source, self.params, self.entries)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "root": self.root,
            "params": self.params,
            "python_version": self.python_version,
            "manifest_hash": self.manifest_hash,
            "total_bytes": self.total_bytes,
            "files": [[e.path, e.size, e.sha256] for e in self.entries],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Corpus:
        entries = tuple(ManifestEntry(p, int(s), h) for p, s, h in obj["files"])
        return cls(obj["source"], obj["root"], entries, obj["params"], obj.get("python_version", ""))

    def file_path(self, entry: ManifestEntry) -> Path:
        return Path(self.root, entry.path) if self.root else Path(entry.path)

    def documents(self) -> Iterator[str]:
        """Yield the corpus documents in manifest order (non-empty strings, no end-of-text markers)."""
        for entry in self.entries:
            path = self.file_path(entry)
            if self.source == "default":
                data = path.read_bytes()
                if sha256_bytes(data) != entry.sha256:
                    raise DataError(f"{path}: changed since its manifest was made; delete the data cache")
                yield data.decode("utf-8")
            else:
                yield from _file_documents(path, self.params["text_field"])


def manifest_hash(source: str, params: dict[str, Any], entries: tuple[ManifestEntry, ...]) -> str:
    """sha256 of the content: source kind, extraction parameters and the ordered (size, sha256) pairs."""
    payload = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "params": params,
        "files": [[e.size, e.sha256] for e in entries],
    }
    return sha256_json(payload)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_candidates(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of the stdlib's ``*.py`` files in corpus order: library, then tests."""
    found: list[tuple[bool, str, int, int]] = []
    base = len(str(root)) + 1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIR_NAMES]
        rel_dir = dirpath[base:]
        is_test = not TEST_DIR_NAMES.isdisjoint(rel_dir.split(os.sep))
        for name in filenames:
            if name.endswith(".py"):
                st = os.stat(os.path.join(dirpath, name))
                rel = f"{rel_dir}/{name}" if rel_dir else name
                found.append((is_test, rel.replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
    found.sort(key=lambda t: (t[0], t[1]))
    return [(rel, size, mtime) for _, rel, size, mtime in found]


def _index_lookup(index_dir: Path, key: str) -> Corpus | None:
    path = index_dir / f"{key}.json"
    if path.exists():
        try:
            return Corpus.from_json(read_json(path))
        except (OSError, ValueError, KeyError):
            return None
    return None


def default_corpus(data_cfg: DataConfig, cache_dir: Path) -> Corpus:
    """Manifest of the default stdlib corpus, capped at ``data_cfg.max_corpus_bytes``."""
    root = stdlib_dir()
    if not root.is_dir():
        raise DataError(f"data.source=default: the Python stdlib folder {root} does not exist")
    candidates = default_candidates(root)
    stat_key = sha256_json(
        {
            "v": FORMAT_VERSION,
            "root": str(root),
            "cap": data_cfg.max_corpus_bytes,
            "files": candidates,
        }
    )
    index_dir = cache_dir / "index"
    hit = _index_lookup(index_dir, f"default-{stat_key[:32]}")
    if hit is not None:
        return hit
    entries: list[ManifestEntry] = []
    total = 0
    for rel, size, _ in candidates:
        if size == 0:
            continue
        if total + size > data_cfg.max_corpus_bytes:
            break
        data = (root / rel).read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        entries.append(ManifestEntry(rel, len(data), sha256_bytes(data)))
        total += len(data)
    if not entries:
        raise DataError(
            f"data.source=default: no readable *.py files under {root} within "
            f"data.max_corpus_bytes={data_cfg.max_corpus_bytes}"
        )
    version = ".".join(map(str, sys.version_info[:3]))
    corpus = Corpus("default", str(root), tuple(entries), {}, version)
    write_json_atomic(index_dir / f"default-{stat_key[:32]}.json", corpus.to_json())
    return corpus


def expand_paths(paths: list[str], suffixes: tuple[str, ...], what: str) -> list[Path]:
    """Files named by ``data.paths`` (files, folders searched recursively, globs), in a stable order."""
    out: list[Path] = []
    for i, raw in enumerate(paths):
        p = Path(raw).expanduser()
        if any(c in raw for c in "*?["):
            matches = sorted(glob.glob(str(p), recursive=True))
            if not matches:
                raise DataError(f"data.paths[{i}]: {raw}: the pattern matches no file")
            files = [Path(m) for m in matches if Path(m).is_file()]
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not files:
                raise DataError(
                    f"data.paths[{i}]: {raw}: folder holds no {what} files ({', '.join(suffixes)})"
                )
        elif p.is_file():
            files = [p]
        else:
            raise DataError(f"data.paths[{i}]: {raw}: no such file or directory")
        for f in files:
            if f.suffix.lower() not in suffixes:
                raise DataError(
                    f"data.paths[{i}]: {f}: unsupported file type '{f.suffix}' for {what} "
                    f"(supported: {', '.join(suffixes)})"
                )
            out.append(f.resolve())
    return out


def files_corpus(data_cfg: DataConfig, cache_dir: Path) -> Corpus:
    """Manifest of user text files (``data.source == "files"``)."""
    files = expand_paths(data_cfg.paths, SUPPORTED_TEXT_SUFFIXES, "text")
    params = {"text_field": data_cfg.text_field}
    stats = [os.stat(f) for f in files]
    stat_key = sha256_json(
        {
            "v": FORMAT_VERSION,
            "params": params,
            "files": [
                [str(f), st.st_size, st.st_mtime_ns, st.st_ino] for f, st in zip(files, stats, strict=True)
            ],
        }
    )
    index_dir = cache_dir / "index"
    hit = _index_lookup(index_dir, f"files-{stat_key[:32]}")
    if hit is not None:
        return hit
    entries = tuple(
        ManifestEntry(str(f), st.st_size, sha256_file(f)) for f, st in zip(files, stats, strict=True)
    )
    corpus = Corpus("files", "", entries, params)
    write_json_atomic(index_dir / f"files-{stat_key[:32]}.json", corpus.to_json())
    return corpus


def build_corpus(data_cfg: DataConfig, cache_dir: Path) -> Corpus:
    if data_cfg.source == "default":
        return default_corpus(data_cfg, cache_dir)
    if data_cfg.source == "files":
        return files_corpus(data_cfg, cache_dir)
    raise DataError(f"data.source: '{data_cfg.source}' is not a text source")


def _file_documents(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not valid UTF-8 text ({err})") from None
        for doc in text.split(EOT_TOKEN):
            if doc.strip():
                yield doc
    elif suffix in JSONL_SUFFIXES:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(record, dict) or text_field not in record:
                    raise DataError(f"{path}:{lineno}: no field '{text_field}' (set data.text_field)")
                doc = record[text_field]
                if not isinstance(doc, str):
                    raise DataError(f"{path}:{lineno}: field '{text_field}' is not a string")
                if doc.strip():
                    yield doc
    elif suffix in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise DataError(
                f"{path}: no column '{text_field}' (columns: {', '.join(pf.schema_arrow.names)}; "
                "set data.text_field)"
            )
        for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
            for doc in batch.column(0).to_pylist():
                if isinstance(doc, str) and doc.strip():
                    yield doc
    else:  # expand_paths only lets supported suffixes through
        raise DataError(f"{path}: unsupported file type '{path.suffix}'")
