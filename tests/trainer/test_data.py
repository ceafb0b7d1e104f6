"""Data pipeline: offline corpus manifest, local BPE, cached shards, concurrency, deterministic batches."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from trainer.config import DataConfig, RunConfig
from trainer.data import DataArtifacts, DataError, TokenData, prepare_data
from trainer.data.corpus import build_corpus, default_candidates, stdlib_dir

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]


def make_cfg(cache: Path, vocab: int = 300, seq_len: int = 16, **data: object) -> RunConfig:
    data.setdefault("max_corpus_bytes", 2_000_000)
    return RunConfig.from_dict(
        {
            "model": {"vocab_size": vocab, "d_model": 32, "n_heads": 2, "n_kv_heads": 2, "seq_len": seq_len},
            "data": {"cache_dir": str(cache), **data},
        }
    )


def words_doc(i: int, rng: np.random.Generator, n_words: int = 60) -> str:
    vocab = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "seven", "quiet", "ember"]
    return f"document {i}: " + " ".join(rng.choice(vocab, size=n_words)) + f" end {i}."


def split_docs(art: DataArtifacts, split: str) -> list[str]:
    """Decode a shard back to its documents (cut at the end-of-text id)."""
    tok = Tokenizer.from_file(str(art.tokenizer_path))
    ids = np.fromfile(art.train_path if split == "train" else art.val_path, dtype=art.dtype)
    ends = np.flatnonzero(ids == art.eot_id)
    assert len(ends) and ends[-1] == len(ids) - 1, "every document ends with <|endoftext|>"
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tok.decode(ids[a:b].tolist()) for a, b in zip(starts, ends, strict=True)]


@pytest.fixture(scope="module")
def default_art(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, DataArtifacts, float]:
    cache = tmp_path_factory.mktemp("cache_default")
    cfg = make_cfg(cache, vocab=512, seq_len=32)
    t0 = time.perf_counter()
    art = prepare_data(cfg)
    return cfg, art, time.perf_counter() - t0


# ---- default corpus ---------------------------------------------------------------------------


def test_default_manifest_deterministic_and_capped(tmp_path: Path) -> None:
    cfg = DataConfig(max_corpus_bytes=1_000_000)
    a = build_corpus(cfg, tmp_path / "c1")
    b = build_corpus(cfg, tmp_path / "c2")  # separate caches: the second is rebuilt, not read back
    assert a.manifest_hash == b.manifest_hash and len(a.manifest_hash) == 64
    assert a.entries == b.entries
    assert 0.5e6 < a.total_bytes <= 1_000_000
    # library modules in sorted order come first; test suites are last
    paths = [e.path for e in a.entries]
    assert paths == sorted(paths) and not any("/test/" in p or p.startswith("test/") for p in paths)
    rank = {rel: i for i, (rel, _, _) in enumerate(default_candidates(stdlib_dir()))}
    assert [rank[p] for p in paths] == sorted(rank[p] for p in paths)
    # the hash identifies the content: a different cap (other files) gives another hash
    c = build_corpus(DataConfig(max_corpus_bytes=900_000), tmp_path / "c3")
    assert c.manifest_hash != a.manifest_hash


def test_default_prepare_outputs(default_art: tuple[RunConfig, DataArtifacts, float]) -> None:
    cfg, art, _ = default_art
    meta = json.loads((art.root / "meta.json").read_text())
    assert art.root.name == art.content_hash and art.root.parent == Path(cfg.data.cache_dir).resolve()
    assert art.vocab_size == 512 and art.dtype == "uint16"
    assert Tokenizer.from_file(str(art.tokenizer_path)).token_to_id("<|endoftext|>") == art.eot_id
    assert art.train_path.stat().st_size == 2 * art.n_train_tokens == 2 * meta["n_train_tokens"]
    assert art.val_path.stat().st_size == 2 * art.n_val_tokens
    frac = art.n_val_tokens / (art.n_train_tokens + art.n_val_tokens)
    assert 0.005 < frac < 0.1, frac  # val_fraction 0.02 of the corpus, in slices of many documents
    manifest = json.loads((art.root / "manifest.json").read_text())
    assert manifest["manifest_hash"] == art.manifest_hash
    # the byte-level BPE round-trips the corpus text: each validation document is a slice of one file
    docs = split_docs(art, "val")
    texts = [(stdlib_dir() / p).read_text() for p, _, _ in manifest["files"]]
    assert len(docs) >= 10 and all(any(d in t for t in texts) for d in docs)


def test_cache_hit_fast_and_no_rebuild(default_art: tuple[RunConfig, DataArtifacts, float]) -> None:
    cfg, art, build_s = default_art
    mtime = art.train_path.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = prepare_data(cfg)
    hit_s = time.perf_counter() - t0
    assert again == art
    assert art.train_path.stat().st_mtime_ns == mtime
    assert hit_s < 0.5, f"cache hit took {hit_s:.3f}s (first build {build_s:.2f}s)"


def test_unigram_entropy(default_art: tuple[RunConfig, DataArtifacts, float]) -> None:
    _, art, _ = default_art
    data = TokenData(art, seq_len=32, seed=0)
    counts = np.bincount(np.fromfile(art.train_path, dtype=art.dtype), minlength=art.vocab_size)
    p = counts[counts > 0] / counts.sum()
    assert data.unigram_entropy_nats() == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-9)
    assert 3.0 < data.unigram_entropy_nats() < math.log(art.vocab_size)


# ---- batches ----------------------------------------------------------------------------------


def test_batches_deterministic_in_seed_and_step(default_art: tuple[RunConfig, DataArtifacts, float]) -> None:
    _, art, _ = default_art
    d1, d2 = TokenData(art, seq_len=32, seed=1), TokenData(art, seq_len=32, seed=1)
    x_BT, y_BT = d1.batch(7, 4)
    assert x_BT.shape == y_BT.shape == (4, 32) and x_BT.dtype == y_BT.dtype == torch.int64
    # a "resumed" loader at step 7 gives the same batch, whatever was drawn before
    for step in range(3):
        d2.batch(step, 4)
    x2_BT, y2_BT = d2.batch(7, 4)
    assert torch.equal(x_BT, x2_BT) and torch.equal(y_BT, y2_BT)
    assert not torch.equal(x_BT, d1.batch(8, 4)[0])
    assert not torch.equal(x_BT, TokenData(art, seq_len=32, seed=2).batch(7, 4)[0])
    # y is x shifted by one, and the windows are the train shard's tokens
    assert torch.equal(x_BT[:, 1:], y_BT[:, :-1])
    train = np.fromfile(art.train_path, dtype=art.dtype).astype(np.int64)
    for s, x_T, y_T in zip(d1.batch_starts(7, 4), x_BT, y_BT, strict=True):
        assert np.array_equal(x_T.numpy(), train[s : s + 32]) and y_T[-1].item() == train[s + 32]
    assert x_BT.max().item() < art.vocab_size


def test_val_batches_fixed_and_non_overlapping(default_art: tuple[RunConfig, DataArtifacts, float]) -> None:
    _, art, _ = default_art
    data = TokenData(art, seq_len=32, seed=0)
    vb = data.val_batches(3, 4)
    assert len(vb) == 3 and all(x.shape == (4, 32) for x, _ in vb)
    other = TokenData(art, seq_len=32, seed=99).val_batches(3, 4)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(vb, other, strict=True))
    val = np.fromfile(art.val_path, dtype=art.dtype).astype(np.int64)
    stride = (len(val) - 1) // 12
    assert stride >= 32  # enough val tokens for 12 disjoint windows
    for i, x_T in enumerate(torch.cat([x for x, _ in vb])):
        assert np.array_equal(x_T.numpy(), val[i * stride : i * stride + 32])


# ---- user files -------------------------------------------------------------------------------


def test_jsonl_source_val_disjoint_by_document(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    docs = [words_doc(i, rng) for i in range(80)]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    art = prepare_data(
        make_cfg(tmp_path / "cache", source="files", paths=[str(src)], text_field="body", val_fraction=0.1)
    )
    train, val = split_docs(art, "train"), split_docs(art, "val")
    assert len(val) >= 1 and len(train) >= 1
    data = TokenData(art, seq_len=16, seed=0)
    x_BT, _ = data.batch(0, 1)
    assert data.decode(x_BT[0]) in "<|endoftext|>".join(docs + docs)  # a window of the corpus text
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(docs)
    assert 0.03 < art.n_val_tokens / (art.n_train_tokens + art.n_val_tokens) < 0.2


def test_txt_and_parquet_sources(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    docs = [words_doc(i, rng) for i in range(30)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("<|endoftext|>".join(docs[:10]))
    (tmp_path / "d" / "b.txt").write_text(docs[10])
    pq.write_table(pa.table({"text": docs[11:], "n": list(range(19))}), tmp_path / "d" / "c.parquet")
    art = prepare_data(make_cfg(tmp_path / "cache", source="files", paths=[str(tmp_path / "d")]))
    assert sorted(split_docs(art, "train") + split_docs(art, "val")) == sorted(docs)
    data = TokenData(art, seq_len=16, seed=0)
    assert data.batch(0, 2)[0].shape == (2, 16)
    # a given tokenizer.json is used as it is
    art2 = prepare_data(
        make_cfg(
            tmp_path / "cache2",
            source="files",
            paths=[str(tmp_path / "d")],
            tokenizer=str(art.tokenizer_path),
        )
    )
    assert art2.manifest_hash == art.manifest_hash
    assert np.array_equal(np.fromfile(art2.train_path, "uint16"), np.fromfile(art.train_path, "uint16"))


def write_bin(path: Path, ids: np.ndarray, **sidecar: object) -> None:
    ids.tofile(path)
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar))


def test_bin_source_uint16_split_by_eot(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    eot = 0
    docs = [np.append(rng.integers(1, 1000, size=rng.integers(20, 60)), eot) for _ in range(60)]
    write_bin(
        tmp_path / "a.bin",
        np.concatenate(docs[:30]).astype(np.uint16),
        dtype="uint16",
        vocab_size=1000,
        eot_id=eot,
    )
    write_bin(
        tmp_path / "b.bin",
        np.concatenate(docs[30:]).astype(np.uint16),
        dtype="uint16",
        vocab_size=1000,
        eot_id=eot,
    )
    art = prepare_data(
        make_cfg(tmp_path / "cache", vocab=1024, source="tokens", paths=[str(tmp_path / "*.bin")])
    )
    assert art.dtype == "uint16" and art.vocab_size == 1000 and art.tokenizer_path is None

    def as_docs(path: Path) -> set[tuple[int, ...]]:
        ids = np.fromfile(path, dtype=np.uint16)
        cuts = np.flatnonzero(ids == eot) + 1
        return {tuple(d) for d in np.split(ids, cuts) if len(d)}

    train, val = as_docs(art.train_path), as_docs(art.val_path)
    assert val and train.isdisjoint(val) and train | val == {tuple(d) for d in docs}


def test_bin_source_uint32_vocab_above_65535(tmp_path: Path) -> None:
    ids = np.arange(1000, dtype=np.uint32) * 97 % 70_000  # no eot: tail split
    write_bin(tmp_path / "big.bin", ids, dtype="uint32", vocab_size=70_000)
    art = prepare_data(
        make_cfg(
            tmp_path / "cache",
            vocab=70_000,
            source="tokens",
            paths=[str(tmp_path / "big.bin")],
            val_fraction=0.1,
        )
    )
    assert art.dtype == "uint32" and art.vocab_size == 70_000
    assert art.n_train_tokens == 900 and art.n_val_tokens == 100
    assert np.array_equal(np.fromfile(art.val_path, np.uint32), ids[900:])
    big = int(np.flatnonzero(ids > 65535)[0])
    data = TokenData(art, seq_len=16, seed=0)
    x_BT, _ = data._windows(data._train_N, np.array([big]))
    assert x_BT[0, 0].item() == int(ids[big]) > 65535
    with pytest.raises(DataError, match="model.vocab_size"):
        prepare_data(
            make_cfg(
                tmp_path / "cache",
                vocab=60_000,
                source="tokens",
                paths=[str(tmp_path / "big.bin")],
                val_fraction=0.1,
            )
        )


# ---- errors -----------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"data.paths\[0\]: .*nope.jsonl: no such file"):
        prepare_data(make_cfg(tmp_path / "cache", source="files", paths=[str(missing)]))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        prepare_data(make_cfg(tmp_path / "cache", source="files", paths=[str(tmp_path / "x.csv")]))
    (tmp_path / "r.jsonl").write_text('{"text": "hello"}\n{"content": "x"}\n')
    with pytest.raises(DataError, match=r"r.jsonl:2: no field 'text'"):
        prepare_data(make_cfg(tmp_path / "cache", source="files", paths=[str(tmp_path / "r.jsonl")]))
    (tmp_path / "one.txt").write_text("just one document")
    with pytest.raises(DataError, match="need at least 2"):
        prepare_data(make_cfg(tmp_path / "cache", source="files", paths=[str(tmp_path / "one.txt")]))
    np.arange(10, dtype=np.uint16).tofile(tmp_path / "t.bin")
    with pytest.raises(DataError, match="no sidecar"):
        prepare_data(make_cfg(tmp_path / "cache", source="tokens", paths=[str(tmp_path / "t.bin")]))
    with pytest.raises(DataError, match="data.tokenizer"):
        prepare_data(make_cfg(tmp_path / "cache", tokenizer=str(tmp_path / "missing.json")))
    # nothing half-built is left behind
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]


# ---- concurrency ------------------------------------------------------------------------------

CHILD = """
import json, sys
from trainer.config import RunConfig
from trainer.data import prepare_data
art = prepare_data(RunConfig.from_dict(json.loads(sys.argv[1])))
print(json.dumps({"hash": art.content_hash, "root": str(art.root), "pid": art.meta["built_by_pid"]}))
"""


def test_two_processes_prepare_at_once(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "cache", vocab=400, max_corpus_bytes=600_000)
    arg = json.dumps(cfg.model_dump(mode="json"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, arg],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    res = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert res[0] == res[1]  # same folder, built by one of them
    assert res[0]["pid"] in {p.pid for p in procs}
    root = Path(res[0]["root"])
    assert sorted(p.name for p in root.iterdir()) == [
        "manifest.json",
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
    ]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]
    # identical to a build in this process from scratch
    art = prepare_data(make_cfg(tmp_path / "cache_b", vocab=400, max_corpus_bytes=600_000))
    assert art.content_hash == res[0]["hash"]
    assert (root / "train.bin").read_bytes() == art.train_path.read_bytes()


def test_pickle_reopens_and_rebuild_after_crash(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": words_doc(i, rng)}) + "\n" for i in range(20)))
    cfg = make_cfg(tmp_path / "cache", source="files", paths=[str(src)], val_fraction=0.2)
    art = prepare_data(cfg)
    data = TokenData(art, seq_len=16, seed=5)
    clone = pickle.loads(pickle.dumps(data))
    assert isinstance(clone._train_N, np.memmap) and len(pickle.dumps(data)) < 10_000
    assert torch.equal(clone.batch(4, 3)[0], data.batch(4, 3)[0])
    with pytest.raises(DataError, match="seq_len"):
        TokenData(art, seq_len=art.n_train_tokens, seed=0)
    # a builder killed mid-way leaves a temp folder; the next build removes it and succeeds
    expected = art.train_path.read_bytes()
    shutil.rmtree(art.root)
    stale = art.root.parent / f".tmp-{art.content_hash}-999999"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"junk")
    again = prepare_data(cfg)
    assert not stale.exists() and again.train_path.read_bytes() == expected


def test_edited_file_gets_new_manifest_and_shards(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": words_doc(i, rng)}) + "\n" for i in range(20)))
    cfg = make_cfg(tmp_path / "cache", source="files", paths=[str(src)], val_fraction=0.2)
    first = prepare_data(cfg)
    with open(src, "a") as fh:
        fh.write(json.dumps({"text": "one more document about rivers and stones"}) + "\n")
    second = prepare_data(cfg)
    assert second.manifest_hash != first.manifest_hash and second.root != first.root
    assert second.n_train_tokens + second.n_val_tokens > first.n_train_tokens + first.n_val_tokens
