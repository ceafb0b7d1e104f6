"""The train/validation split: near-duplicates dropped, a validation set of slices from many documents."""

from __future__ import annotations

import random

from trainer.data.split import VAL_SLICE_BYTES, line_set, near_duplicates, plan_split


def _doc(rng: random.Random, n_lines: int, tag: str) -> str:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma"]
    return "\n".join(
        f"{tag} = {' + '.join(rng.choices(words, k=4))}  # {rng.random():.6f}" for _ in range(n_lines)
    )


def test_near_duplicates_are_dropped_and_distinct_documents_kept() -> None:
    rng = random.Random(0)
    base = _doc(rng, 200, "x")
    lines = base.splitlines()
    twin = "\n".join(lines[:180] + [f"y = {i}  # changed line {i}" for i in range(20)])  # J ~ 0.82
    far = "\n".join(lines[:40] + _doc(rng, 160, "z").splitlines())  # J ~ 0.11
    others = [_doc(rng, 100, f"v{i}") for i in range(30)]
    texts = [base, *others[:10], twin, *others[10:], far]
    dropped = near_duplicates(texts)
    assert dropped == {11}, dropped  # the later copy goes, the earlier one and the far cousin stay
    a, b = line_set(base), line_set(twin)
    assert len(a & b) / len(a | b) > 0.5


def test_validation_is_slices_of_many_documents() -> None:
    rng = random.Random(1)
    texts = [_doc(rng, rng.randint(20, 600), f"d{i}") for i in range(400)]
    total = sum(len(t.encode()) for t in texts)
    plans = plan_split(texts, 0.02, "test")
    val = [(i, p) for i, p in enumerate(plans) if p.action == "val"]
    held = sum(p.end - p.start for _, p in val)
    assert 0.02 * total <= held <= 0.02 * total + VAL_SLICE_BYTES
    assert all(p.end - p.start <= VAL_SLICE_BYTES for _, p in val)
    # many documents, none larger than a slice: the big ones cannot dominate
    assert len(val) >= 0.02 * total / VAL_SLICE_BYTES
    for i, p in val:  # slices start and end on line boundaries
        raw = texts[i].encode()
        assert p.start == 0 or raw[p.start - 1 : p.start] == b"\n"
        assert p.end == len(raw) or raw[p.end - 1 : p.end] == b"\n"
    # deterministic and independent of document order
    again = plan_split(list(reversed(texts)), 0.02, "test")
    assert [p for p in reversed(again)] == plans
