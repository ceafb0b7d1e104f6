"""Token shards: flat ``.bin`` files of token ids (uint16 when vocab <= 65536, else uint32).

Train/validation split of pre-tokenised documents (``choose_val``), deterministic and independent of document
order: with u(doc) = first 64 bits of sha256(doc) / 2^64, documents are held out in increasing u until they
make up ``val_fraction`` of the corpus (identical documents share u and so always land on the same side).
Text corpora are split by ``split.plan_split`` (near-duplicates dropped, validation slices of many documents).
Every document is followed by the end-of-text id.

Pre-tokenised input (``data.source == "tokens"``): ``X.bin`` with a JSON sidecar ``X.bin.json`` or
``X.json``: ``{"dtype": "uint16"|"uint32", "vocab_size": int, "eot_id": int (optional),
"split": "train"|"val" (optional)}``. Split: the sidecars' ``split`` if given; else by document (runs of
tokens ending in ``eot_id``) with the rule above; else, with no document boundaries known, the last
``val_fraction`` of the concatenated token stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import DataConfig
from trainer.data.common import FORMAT_VERSION, DataError, cached_sha256_file, log, read_json, sha256_json
from trainer.data.corpus import expand_paths

TOKEN_SUFFIXES = (".bin",)
ENCODE_BATCH_BYTES = 4 << 20
ENTROPY_CHUNK = 1 << 24


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def doc_u(data: bytes) -> float:
    """u(doc) in [0, 1): the first 64 bits of sha256(doc) as a fraction."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2.0**64


def choose_val(us: list[float], sizes: list[int], val_fraction: float, what: str) -> list[bool]:
    """Per document: held out for validation?

    Documents are taken in increasing u(doc) until they hold ``val_fraction`` of the corpus size
    (documents with equal u, i.e. duplicates, stay together); at least one document on each side.
    """
    if len(us) < 2:
        raise DataError(
            f"{what}: {len(us)} document(s); need at least 2 to hold out a validation document "
            "(give more files, or separate documents with <|endoftext|>)"
        )
    order = sorted(range(len(us)), key=lambda i: us[i])
    target = val_fraction * sum(sizes)
    is_val = [False] * len(us)
    held = 0
    last_u = None
    for i in order:
        if held >= target and us[i] != last_u:
            break
        is_val[i] = True
        held += sizes[i]
        last_u = us[i]
    if all(is_val):
        is_val[order[-1]] = False
    return is_val


def unigram_entropy(counts: np.ndarray) -> float:
    """Shannon entropy H = -sum_v p_v ln p_v (nats), p_v = count_v / N (Shannon 1948, Theorem 2).

    It is the cross-entropy of the best context-free (unigram) predictor of the next token.
    """
    n = counts.sum()
    if n == 0:
        return 0.0
    p = counts[counts > 0].astype(np.float64) / n
    return float(-(p * np.log(p)).sum())


def count_tokens(path: Path, dtype: np.dtype, vocab_size: int) -> np.ndarray:
    mm = np.memmap(path, dtype=dtype, mode="r")
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in range(0, len(mm), ENTROPY_CHUNK):
        counts += np.bincount(mm[i : i + ENTROPY_CHUNK], minlength=vocab_size)[:vocab_size]
    return counts


def _batches(docs: Iterable[str], max_bytes: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def write_text_shards(
    docs: Iterable[str], is_val: list[bool], tokenizer_path: Path, vocab_size: int, eot_id: int, out_dir: Path
) -> dict[str, Any]:
    """Batch-encode documents (Rust thread pool: all cores) into ``train.bin``/``val.bin``."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    dtype = shard_dtype(vocab_size)
    n_tok = {False: 0, True: 0}
    n_doc = {False: 0, True: 0}
    i_doc = 0
    with open(out_dir / "train.bin", "wb") as f_train, open(out_dir / "val.bin", "wb") as f_val:
        for batch in _batches(docs, ENCODE_BATCH_BYTES):
            encodings = tok.encode_batch_fast(batch, add_special_tokens=False)
            parts: dict[bool, list[np.ndarray]] = {False: [], True: []}
            for enc in encodings:
                if i_doc >= len(is_val):
                    raise DataError("corpus changed while it was being read (more documents than before)")
                held_out = is_val[i_doc]
                parts[held_out].append(np.asarray(enc.ids + [eot_id], dtype=dtype))
                n_doc[held_out] += 1
                i_doc += 1
            for held_out, fh in ((False, f_train), (True, f_val)):
                if parts[held_out]:
                    arr = np.concatenate(parts[held_out])
                    arr.tofile(fh)
                    n_tok[held_out] += len(arr)
            if len(batch) < len(is_val):
                log(f"encoded {i_doc}/{len(is_val)} documents, {n_tok[False] + n_tok[True]:,} tokens")
    if i_doc != len(is_val):
        raise DataError(f"corpus changed while it was being read ({i_doc} vs {len(is_val)} documents)")
    return {
        "n_train_tokens": n_tok[False],
        "n_val_tokens": n_tok[True],
        "n_train_docs": n_doc[False],
        "n_val_docs": n_doc[True],
    }


# ---- pre-tokenised shards ---------------------------------------------------------------------


@dataclass(frozen=True)
class TokenShard:
    path: Path
    dtype: str
    vocab_size: int
    eot_id: int | None
    split: str | None
    size: int
    sha256: str


def _sidecar(path: Path) -> dict[str, Any]:
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand.is_file():
            try:
                meta = read_json(cand)
            except ValueError as err:
                raise DataError(f"{cand}: not valid JSON ({err})") from None
            if not isinstance(meta, dict):
                raise DataError(f"{cand}: must be a JSON object")
            return meta
    raise DataError(
        f"{path}: no sidecar {path.name}.json or {path.stem}.json giving "
        '{"dtype": "uint16"|"uint32", "vocab_size": N}'
    )


def token_shards(data_cfg: DataConfig, cache_dir: Path) -> list[TokenShard]:
    """Read and check the ``.bin`` shards named by ``data.paths`` and their sidecars."""
    shards = []
    for path in expand_paths(data_cfg.paths, TOKEN_SUFFIXES, "token"):
        meta = _sidecar(path)
        dtype = meta.get("dtype")
        if dtype not in ("uint16", "uint32"):
            raise DataError(f"{path}: sidecar dtype must be 'uint16' or 'uint32', got {dtype!r}")
        vocab = meta.get("vocab_size")
        if not isinstance(vocab, int) or vocab < 2:
            raise DataError(f"{path}: sidecar vocab_size must be an integer >= 2, got {vocab!r}")
        if dtype == "uint16" and vocab > 65536:
            raise DataError(f"{path}: vocab_size {vocab} does not fit dtype uint16")
        eot = meta.get("eot_id")
        if eot is not None and not (isinstance(eot, int) and 0 <= eot < vocab):
            raise DataError(f"{path}: sidecar eot_id must be an integer in [0, vocab_size), got {eot!r}")
        split = meta.get("split")
        if split not in (None, "train", "val"):
            raise DataError(f"{path}: sidecar split must be 'train' or 'val', got {split!r}")
        size = path.stat().st_size
        if size % np.dtype(dtype).itemsize:
            raise DataError(f"{path}: size {size} is not a multiple of the {dtype} item size")
        shards.append(TokenShard(path, dtype, vocab, eot, split, size, cached_sha256_file(path, cache_dir)))
    for attr in ("vocab_size", "eot_id"):
        values = {getattr(s, attr) for s in shards}
        if len(values) > 1:
            raise DataError(f"data.paths: token shards disagree on {attr}: {sorted(map(str, values))}")
    splits = [s.split for s in shards]
    if any(splits) and not all(splits):
        raise DataError("data.paths: give a split in every sidecar or in none")
    return shards


def tokens_manifest_hash(shards: list[TokenShard]) -> str:
    return sha256_json(
        {
            "format_version": FORMAT_VERSION,
            "source": "tokens",
            "files": [[s.size, s.sha256, s.dtype, s.vocab_size, s.eot_id, s.split] for s in shards],
        }
    )


def write_token_shards(shards: list[TokenShard], val_fraction: float, out_dir: Path) -> dict[str, Any]:
    """Copy user shards into ``train.bin``/``val.bin`` (checked ids, common dtype) by the split rule."""
    vocab = shards[0].vocab_size
    eot = shards[0].eot_id
    dtype = shard_dtype(vocab)
    arrays = [np.memmap(s.path, dtype=s.dtype, mode="r") for s in shards]
    for s, arr in zip(shards, arrays, strict=True):
        for i in range(0, len(arr), ENTROPY_CHUNK):
            top = int(arr[i : i + ENTROPY_CHUNK].max(initial=0))
            if top >= vocab:
                raise DataError(f"{s.path}: token id {top} >= vocab_size {vocab}")
    pieces: list[tuple[bool, np.ndarray]] = []  # (held out?, token run) in order
    if shards[0].split is not None:
        pieces = [(s.split == "val", arr) for s, arr in zip(shards, arrays, strict=True)]
        if all(v for v, _ in pieces) or not any(v for v, _ in pieces):
            raise DataError("data.paths: the sidecar splits must name at least one train and one val shard")
    elif eot is not None:
        docs = []
        for arr in arrays:
            ends = np.flatnonzero(np.asarray(arr) == eot) + 1
            bounds = np.concatenate([[0], ends, [len(arr)]]) if len(arr) else np.zeros(1, dtype=np.int64)
            docs += [arr[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        us = [doc_u(d.astype(np.uint32).tobytes()) for d in docs]
        is_val = choose_val(us, [len(d) for d in docs], val_fraction, "data.paths")
        pieces = list(zip(is_val, docs, strict=True))
    else:
        total = sum(len(a) for a in arrays)
        n_val = max(1, round(total * val_fraction))
        if total - n_val < 2:
            raise DataError(f"data.paths: only {total} tokens; too few to split off validation")
        seen = 0
        for arr in arrays:
            cut = min(max(total - n_val - seen, 0), len(arr))
            pieces += [(False, arr[:cut]), (True, arr[cut:])]
            seen += len(arr)
    n_tok = {False: 0, True: 0}
    n_doc = {False: 0, True: 0}
    with open(out_dir / "train.bin", "wb") as f_train, open(out_dir / "val.bin", "wb") as f_val:
        for held_out, run in pieces:
            if len(run):
                np.asarray(run).astype(dtype).tofile(f_val if held_out else f_train)
                n_tok[held_out] += len(run)
                n_doc[held_out] += 1
    return {
        "n_train_tokens": n_tok[False],
        "n_val_tokens": n_tok[True],
        "n_train_docs": n_doc[False] if eot is not None else None,
        "n_val_docs": n_doc[True] if eot is not None else None,
    }
