"""Which documents train, which validate, which are dropped: near-duplicate removal and a validation set
drawn from many documents.

1. Near-duplicates. A document's line set S is its stripped lines of at least ``MIN_LINE_CHARS``
   characters. Two documents are near-duplicates when their Jaccard similarity J = |S_a ∩ S_b| / |S_a ∪ S_b|
   exceeds ``NEAR_DUP_JACCARD``; candidates come from MinHash locality-sensitive hashing (Broder 1997,
   "On the resemblance and containment of documents"; Leskovec et al., "Mining of Massive Datasets" ch. 3:
   ``MINHASH_BANDS`` bands of ``MINHASH_ROWS`` min-hashes, a pair sharing one band is a candidate, so a pair
   with J = 0.5 is found with probability 1 - (1 - 0.5^2)^8 = 0.90), and J is then computed exactly.
   The later document (corpus order) of a near-duplicate pair is dropped: the stdlib's ~100 codec tables
   (``encodings/cp*.py``) are near-copies of each other, and one held out for validation with its twins
   in training measures memorisation, not language modelling.
2. Validation. Documents are taken in increasing u(doc) (``shards.doc_u``: a hash, independent of order);
   each gives ONE slice of at most ``VAL_SLICE_BYTES`` bytes, cut at line boundaries at an offset set by
   u, until the slices hold ``val_fraction`` of the kept bytes. The rest of a validation document is
   dropped, never trained on. At 2 % of a 31 MB corpus this is ~160 documents instead of ~40 whole files,
   four of which were 45 % of the validation tokens.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from trainer.data.common import DataError
from trainer.data.shards import doc_u

SPLIT_VERSION = 2  # part of the shard cache key: bump when these rules change
MIN_LINE_CHARS = 8
NEAR_DUP_JACCARD = 0.5
MINHASH_BANDS = 8
MINHASH_ROWS = 2
VAL_SLICE_BYTES = 4096
_MERSENNE_61 = (1 << 61) - 1


@dataclass(frozen=True)
class DocPlan:
    """What happens to one document: ``train`` (whole), ``val`` (bytes [start, end)) or ``drop``."""

    action: str
    start: int = 0
    end: int = 0


def line_set(text: str) -> frozenset[str]:
    return frozenset(s for line in text.splitlines() if len(s := line.strip()) >= MIN_LINE_CHARS)


def _minhash_bands(lines: frozenset[str]) -> list[bytes]:
    """MINHASH_BANDS band keys: min over the set of h_k(x) = (a_k·crc32(x) + b_k) mod (2^61 - 1)."""
    k = MINHASH_BANDS * MINHASH_ROWS
    rng = np.random.default_rng(20261206)  # fixed: the same hash functions on every machine
    a_K = rng.integers(1, 1 << 28, size=k, dtype=np.uint64)
    b_K = rng.integers(0, 1 << 28, size=k, dtype=np.uint64)
    x_L = np.fromiter((zlib.crc32(s.encode()) for s in lines), dtype=np.uint64, count=len(lines))
    mins_K = ((a_K[:, None] * x_L[None, :] + b_K[:, None]) % np.uint64(_MERSENNE_61)).min(axis=1)
    bands = mins_K.reshape(MINHASH_BANDS, MINHASH_ROWS)
    return [i.to_bytes(1, "big") + row.tobytes() for i, row in enumerate(bands)]


def near_duplicates(texts: list[str]) -> set[int]:
    """Indices of documents that are near-duplicates (J > NEAR_DUP_JACCARD) of an earlier kept one."""
    sets = [line_set(t) for t in texts]
    buckets: dict[bytes, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        if s:
            for key in _minhash_bands(s):
                buckets[key].append(i)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        for x, i in enumerate(members):
            pairs.update((i, j) for j in members[x + 1 :])
    dropped: set[int] = set()
    for i, j in sorted(pairs):
        if i in dropped or j in dropped:
            continue
        a, b = sets[i], sets[j]
        if len(a & b) > NEAR_DUP_JACCARD * len(a | b):
            dropped.add(j)
    return dropped


def _val_slice(raw: bytes, u: float) -> tuple[int, int]:
    """[start, end) of at most VAL_SLICE_BYTES bytes, on line boundaries, starting at fraction u2 of the
    room left (u2 from u, so the slice position does not correlate with which documents are chosen)."""
    if len(raw) <= VAL_SLICE_BYTES:
        return 0, len(raw)
    u2 = int.from_bytes(hashlib.sha256(repr(u).encode()).digest()[:8], "big") / 2.0**64
    start = int(u2 * (len(raw) - VAL_SLICE_BYTES))
    nl = raw.rfind(b"\n", 0, start)
    start = nl + 1 if nl >= 0 else 0
    end = min(len(raw), start + VAL_SLICE_BYTES)
    nl = raw.rfind(b"\n", start, end)
    if nl > start:
        end = nl + 1
    return start, end


def plan_split(texts: list[str], val_fraction: float, what: str) -> list[DocPlan]:
    """Per document: train, val slice or drop (see the module docstring)."""
    raws = [t.encode("utf-8") for t in texts]
    dropped = near_duplicates(texts)
    kept = [i for i in range(len(raws)) if i not in dropped]
    if len(kept) < 2:
        raise DataError(
            f"{what}: {len(kept)} distinct document(s); need at least 2 to hold out a validation document "
            "(give more files, or separate documents with <|endoftext|>)"
        )
    us = {i: doc_u(raws[i]) for i in kept}
    target = val_fraction * sum(len(raws[i]) for i in kept)
    plans = [DocPlan("drop") for _ in raws]
    for i in kept:
        plans[i] = DocPlan("train")
    held = 0
    n_val = 0
    for i in sorted(kept, key=lambda i: us[i]):
        if held >= target or n_val >= len(kept) - 1:
            break
        start, end = _val_slice(raws[i], us[i])
        if end <= start:
            continue
        plans[i] = DocPlan("val", start, end)
        held += end - start
        n_val += 1
    return plans
