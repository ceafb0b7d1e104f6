"""``prepare_data(run_cfg) -> DataArtifacts``: corpus -> tokenizer -> train/val token shards, cached.

Cache layout under ``data.cache_dir`` (default ``~/.cache/windtunnel``)::

    index/<source>-<stat key>.json          manifest of a corpus, keyed by (path, size, mtime) of its files
    tokenizers/bpe<v>-<manifest>-v<V>/      trained tokenizer.json, keyed by (manifest hash, vocab size)
    <content hash>/                         meta.json, manifest.json, tokenizer.json, train.bin, val.bin
    locks/<key>.lock                        fcntl locks serialising concurrent builds of one key

The content hash covers the manifest hash, the tokenizer (its identity or file hash), ``val_fraction``,
``FORMAT_VERSION`` and (text sources) ``split.SPLIT_VERSION``: which documents train, which give a validation
slice and which are dropped as near-duplicates is decided by ``split.plan_split``. A shard folder is
built in a temporary folder and renamed into place, under a lock, so concurrent callers (Ray trials)
either build it once or wait and reuse it; a cache hit only stats the corpus files and reads ``meta.json``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import RunConfig
from trainer.data.common import FORMAT_VERSION, DataError, file_lock, log, read_json, sha256_file, sha256_json
from trainer.data.common import write_json_atomic as _write_json
from trainer.data.corpus import build_corpus
from trainer.data.shards import (
    count_tokens,
    shard_dtype,
    token_shards,
    tokens_manifest_hash,
    unigram_entropy,
    write_text_shards,
    write_token_shards,
)
from trainer.data.split import SPLIT_VERSION, DocPlan, plan_split
from trainer.data.tokenizer import copy_tokenizer, get_or_train, load_tokenizer_info


@dataclass(frozen=True)
class DataArtifacts:
    """A finished, cached token data set (read from ``<root>/meta.json``)."""

    root: Path
    manifest_hash: str
    content_hash: str
    tokenizer_path: Path | None
    train_path: Path
    val_path: Path
    vocab_size: int
    eot_id: int | None
    dtype: str
    n_train_tokens: int
    n_val_tokens: int
    unigram_entropy_nats: float
    meta: dict[str, Any]

    @classmethod
    def from_dir(cls, root: Path) -> DataArtifacts:
        meta = read_json(root / "meta.json")
        tok = meta.get("tokenizer")
        return cls(
            root=root,
            manifest_hash=meta["manifest_hash"],
            content_hash=meta["content_hash"],
            tokenizer_path=root / tok if tok else None,
            train_path=root / "train.bin",
            val_path=root / "val.bin",
            vocab_size=int(meta["vocab_size"]),
            eot_id=meta.get("eot_id"),
            dtype=meta["dtype"],
            n_train_tokens=int(meta["n_train_tokens"]),
            n_val_tokens=int(meta["n_val_tokens"]),
            unigram_entropy_nats=float(meta["unigram_entropy_nats"]),
            meta=meta,
        )


def _cache_dir(run_cfg: RunConfig) -> Path:
    path = Path(run_cfg.data.cache_dir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.cache_dir: {path}: cannot create ({err.strerror})") from None
    return path


def _check_vocab(art: DataArtifacts, model_vocab: int) -> DataArtifacts:
    if art.vocab_size > model_vocab:
        raise DataError(
            f"model.vocab_size: {model_vocab} is smaller than the data's vocabulary ({art.vocab_size}, "
            f"{art.root / 'meta.json'})"
        )
    return art


def _build_atomically(cache_dir: Path, content_hash: str, build: Any) -> Path:
    """Run ``build(tmp_dir) -> meta`` once per content hash; concurrent callers wait on a file lock."""
    root = cache_dir / content_hash
    if (root / "meta.json").exists():
        return root
    with file_lock(cache_dir / "locks" / f"{content_hash}.lock"):
        if (root / "meta.json").exists():
            return root
        if root.exists():  # a folder without meta.json cannot come from us (we rename complete ones)
            shutil.rmtree(root)
        for stale in cache_dir.glob(f".tmp-{content_hash}-*"):  # left by a killed builder; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache_dir / f".tmp-{content_hash}-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            t0 = time.perf_counter()
            meta = build(tmp)
            meta.update(content_hash=content_hash, format_version=FORMAT_VERSION)
            meta["build_s"] = round(time.perf_counter() - t0, 3)
            meta["built_by_pid"] = os.getpid()
            _write_json(tmp / "meta.json", meta)
            os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root


def _finish_meta(out_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Add the unigram entropy of the train shard and check both shards are non-empty."""
    if meta["n_train_tokens"] == 0 or meta["n_val_tokens"] == 0:
        raise DataError(
            f"data: split gave {meta['n_train_tokens']} train and {meta['n_val_tokens']} val tokens; "
            "need both > 0"
        )
    counts = count_tokens(out_dir / "train.bin", np.dtype(meta["dtype"]), meta["vocab_size"])
    meta["unigram_entropy_nats"] = unigram_entropy(counts)
    return meta


def _user_tokenizer(path: str | None) -> Path | None:
    if not path:
        return None
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise DataError(f"data.tokenizer: {path}: no such file")
    return resolved


def _planned(docs: Iterator[str], plans: list[DocPlan]) -> Iterator[str]:
    """The documents as ``plan_split`` decided: whole (train), a slice (val), or left out (drop)."""
    for doc, plan in zip(docs, plans, strict=True):
        if plan.action == "train":
            yield doc
        elif plan.action == "val":
            yield doc.encode("utf-8")[plan.start : plan.end].decode("utf-8")


def prepare_data(run_cfg: RunConfig) -> DataArtifacts:
    """Build (or find in the cache) the tokenizer and train/val token shards for ``run_cfg.data``."""
    cache_dir = _cache_dir(run_cfg)
    if run_cfg.data.source == "tokens":
        root = _prepare_tokens(run_cfg, cache_dir)
    else:
        root = _prepare_text(run_cfg, cache_dir)
    return _check_vocab(DataArtifacts.from_dir(root), run_cfg.model.vocab_size)


def _prepare_tokens(run_cfg: RunConfig, cache_dir: Path) -> Path:
    """The cache folder of pre-tokenized shards (``data.source: tokens``), copied in once."""
    data = run_cfg.data
    shards = token_shards(data, cache_dir)
    mhash = tokens_manifest_hash(shards)
    tok_file = _user_tokenizer(data.tokenizer)  # optional, only to decode samples
    tok_key = sha256_file(tok_file) if tok_file else None
    key = {"v": FORMAT_VERSION, "m": mhash, "val": data.val_fraction, "tok": tok_key}
    content_hash = sha256_json(key)[:24]

    def build_tokens(out_dir: Path) -> dict[str, Any]:
        log(f"copying {len(shards)} token shard(s) into {cache_dir / content_hash}")
        stats = write_token_shards(shards, data.val_fraction, out_dir)
        _write_json(
            out_dir / "manifest.json",
            {
                "source": "tokens",
                "manifest_hash": mhash,
                "files": [[str(s.path), s.size, s.sha256] for s in shards],
            },
        )
        vocab = shards[0].vocab_size
        meta = {
            "source": "tokens",
            "manifest_hash": mhash,
            "vocab_size": vocab,
            "eot_id": shards[0].eot_id,
            "dtype": shard_dtype(vocab).name,
            "tokenizer": copy_tokenizer(tok_file, out_dir).name if tok_file else None,
            "val_fraction": data.val_fraction,
            **stats,
        }
        return _finish_meta(out_dir, meta)

    return _build_atomically(cache_dir, content_hash, build_tokens)


def _prepare_text(run_cfg: RunConfig, cache_dir: Path) -> Path:
    """The cache folder of a text corpus: split, tokenizer (trained or the user's), encoded shards."""
    data = run_cfg.data
    model_vocab = run_cfg.model.vocab_size
    corpus = build_corpus(data, cache_dir)
    mhash = corpus.manifest_hash
    user_tok = _user_tokenizer(data.tokenizer)
    tok_id = "file-" + sha256_file(user_tok) if user_tok else f"bpe-{model_vocab}"
    key = {"v": FORMAT_VERSION, "m": mhash, "tok": tok_id, "val": data.val_fraction, "split": SPLIT_VERSION}
    content_hash = sha256_json(key)[:24]

    def build_text(out_dir: Path) -> dict[str, Any]:
        log(f"corpus '{corpus.source}': {len(corpus.entries)} files, {corpus.total_bytes / 1e6:.1f} MB")
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        plans = plan_split(list(corpus.documents()), data.val_fraction, f"data.source={corpus.source}")
        is_val = [p.action == "val" for p in plans if p.action != "drop"]
        timings["split_s"] = time.perf_counter() - t0
        if user_tok is None:
            tok_src = get_or_train(cache_dir, mhash, model_vocab, corpus.documents(), len(plans))
        else:
            tok_src = user_tok
        timings["tokenizer_s"] = time.perf_counter() - t0 - sum(timings.values())
        vocab, eot = load_tokenizer_info(tok_src)
        if vocab > model_vocab:
            raise DataError(
                f"model.vocab_size: {model_vocab} is smaller than the tokenizer's vocabulary ({vocab})"
            )
        tok_path = copy_tokenizer(tok_src, out_dir)
        n_drop = len(plans) - len(is_val)
        log(f"encoding {len(is_val)} documents ({sum(is_val)} validation slices, {n_drop} near-dups dropped)")
        stats = write_text_shards(_planned(corpus.documents(), plans), is_val, tok_path, vocab, eot, out_dir)
        stats["n_dropped_near_duplicates"] = n_drop
        timings["encode_s"] = time.perf_counter() - t0 - sum(timings.values())
        _write_json(out_dir / "manifest.json", corpus.to_json())
        meta = {
            "source": corpus.source,
            "manifest_hash": mhash,
            "vocab_size": vocab,
            "eot_id": eot,
            "dtype": shard_dtype(vocab).name,
            "tokenizer": tok_path.name,
            "val_fraction": data.val_fraction,
            "corpus_bytes": corpus.total_bytes,
            "python_version": corpus.python_version,
            **stats,
        }
        meta = _finish_meta(out_dir, meta)
        timings["entropy_s"] = time.perf_counter() - t0 - sum(timings.values())
        meta["timings"] = {k: round(v, 3) for k, v in timings.items()}
        log(
            f"done: {meta['n_train_tokens']:,} train / {meta['n_val_tokens']:,} val tokens, "
            f"unigram entropy {meta['unigram_entropy_nats']:.3f} nats"
        )
        return meta

    return _build_atomically(cache_dir, content_hash, build_text)
