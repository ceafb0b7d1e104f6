"""Data pipeline benchmark: cold build of the default corpus, cache hit, tokenisation and batch sampling.

Measures (in one run, same machine):
  * cold ``prepare_data`` on the default stdlib corpus (default ``max_corpus_bytes``, vocab 4096) in an
    empty cache, with its stage timings, token counts and the train shard's unigram entropy;
  * a cache hit (median of 5 calls), which every Ray trial pays;
  * tokenisation: ``Tokenizer.encode_batch_fast`` (Rust thread pool) vs a researcher's per-document
    ``Tokenizer.encode`` loop, on the same documents;
  * batch sampling: ``TokenData.batch`` (one vectorised gather from the memmap) vs the nanoGPT-style
    ``torch.stack([torch.from_numpy(data[i:i+T+1].astype(np.int64)) for i in ix])`` loop.

    python benchmarks/data_pipeline.py [--vocab 4096] [--max-bytes N] [--encode-mb 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainer.config import RunConfig
from trainer.data import TokenData, prepare_data
from trainer.data.corpus import build_corpus

RESULTS = Path(__file__).resolve().parent / "results"


def nanogpt_batch(data_N: np.ndarray, starts_B: np.ndarray, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    x_BT = torch.stack([torch.from_numpy(data_N[i : i + T].astype(np.int64)) for i in starts_B])
    y_BT = torch.stack([torch.from_numpy(data_N[i + 1 : i + 1 + T].astype(np.int64)) for i in starts_B])
    return x_BT, y_BT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-bytes", type=int, default=None, help="default: DataConfig's default")
    ap.add_argument("--encode-mb", type=float, default=8.0, help="text used for the tokenisation comparison")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows: list[tuple[str, str]] = []
    out: dict[str, object] = {}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data: dict[str, object] = {"cache_dir": tmp}
        if args.max_bytes:
            data["max_corpus_bytes"] = args.max_bytes
        cfg = RunConfig.from_dict(
            {"model": {"vocab_size": args.vocab, "seq_len": args.seq_len}, "data": data}
        )
        t0, c0 = time.perf_counter(), time.process_time()
        art = prepare_data(cfg)
        build_s, build_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        hits = []
        for _ in range(5):
            t0 = time.perf_counter()
            prepare_data(cfg)
            hits.append(time.perf_counter() - t0)
        hit_s = statistics.median(hits)
        meta = art.meta
        n_tok = art.n_train_tokens + art.n_val_tokens
        out["load_avg_1m_before"] = load0
        out["build"] = {
            "max_corpus_bytes": cfg.data.max_corpus_bytes,
            "corpus_bytes": meta["corpus_bytes"],
            "files": len(json.loads((art.root / "manifest.json").read_text())["files"]),
            "vocab_size": art.vocab_size,
            "n_train_tokens": art.n_train_tokens,
            "n_val_tokens": art.n_val_tokens,
            "bytes_per_token": meta["corpus_bytes"] / n_tok,
            "unigram_entropy_nats": art.unigram_entropy_nats,
            "build_s": build_s,
            "build_cpu_s": build_cpu_s,
            "stage_s": meta["timings"],
            "cache_hit_s_median": hit_s,
            "manifest_hash": art.manifest_hash,
        }
        rows += [
            ("corpus", f"{meta['corpus_bytes'] / 1e6:.1f} MB stdlib, {out['build']['files']} files"),  # type: ignore[index]
            ("tokens train / val", f"{art.n_train_tokens:,} / {art.n_val_tokens:,}"),
            ("bytes per token", f"{meta['corpus_bytes'] / n_tok:.2f}"),
            (
                "unigram entropy (nats)",
                f"{art.unigram_entropy_nats:.3f}  (ln V = {np.log(art.vocab_size):.3f})",
            ),
            (
                "cold build (s)",
                f"{build_s:.1f}  " + ", ".join(f"{k} {v:.1f}" for k, v in meta["timings"].items()),
            ),
            ("cold build CPU time (s, all threads)", f"{build_cpu_s:.1f}"),
            ("cache hit (s, median of 5)", f"{hit_s:.3f}"),
        ]

        # ---- tokenisation: batch (all cores) vs per-document loop ----------------------------
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(art.tokenizer_path))
        docs, size = [], 0
        for doc in build_corpus(cfg.data, Path(tmp)).documents():
            docs.append(doc)
            size += len(doc.encode())
            if size >= args.encode_mb * 1e6:
                break
        t0, c0 = time.perf_counter(), time.process_time()
        fast = tok.encode_batch_fast(docs, add_special_tokens=False)
        batch_s, batch_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        slow = [tok.encode(d, add_special_tokens=False) for d in docs]
        loop_s, loop_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        assert all(a.ids == b.ids for a, b in zip(fast, slow, strict=True))
        out["encode"] = {
            "mb": size / 1e6,
            "batch_fast_s": batch_s,
            "per_doc_loop_s": loop_s,
            "batch_fast_cpu_s": batch_cpu_s,
            "per_doc_loop_cpu_s": loop_cpu_s,
            "speedup": loop_s / batch_s,
        }
        rows.append(
            (
                "encode %.1f MB: batch vs loop (s)" % (size / 1e6),
                f"{batch_s:.2f} vs {loop_s:.2f}  ({loop_s / batch_s:.2f}x; "
                f"CPU {batch_cpu_s:.1f} vs {loop_cpu_s:.1f})",
            )
        )

        # ---- batch sampling: vectorised gather vs nanoGPT-style loop ----------------------------
        td = TokenData(art, seq_len=args.seq_len, seed=0)
        train_N = np.memmap(art.train_path, dtype=art.dtype, mode="r")
        n_steps = 300
        t0 = time.perf_counter()
        for step in range(n_steps):
            td.batch(step, args.batch)
        ours_ms = (time.perf_counter() - t0) / n_steps * 1e3
        t0 = time.perf_counter()
        for step in range(n_steps):
            x_BT, y_BT = nanogpt_batch(train_N, td.batch_starts(step, args.batch), args.seq_len)
        ref_ms = (time.perf_counter() - t0) / n_steps * 1e3
        x2_BT, y2_BT = td.batch(n_steps - 1, args.batch)
        assert torch.equal(x_BT, x2_BT) and torch.equal(y_BT, y2_BT)
        out["batch"] = {
            "batch": args.batch,
            "seq_len": args.seq_len,
            "tokendata_ms": ours_ms,
            "nanogpt_loop_ms": ref_ms,
            "speedup": ref_ms / ours_ms,
        }
        rows.append(
            (
                f"batch {args.batch}x{args.seq_len}: TokenData vs nanoGPT loop (ms)",
                f"{ours_ms:.3f} vs {ref_ms:.3f}  ({ref_ms / ours_ms:.2f}x)",
            )
        )

    out["load_avg_1m_after"] = os.getloadavg()[0]
    rows.append(
        ("1-min load average before / after (2 cores)", f"{load0:.1f} / {out['load_avg_1m_after']:.1f}")
    )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_pipeline.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'data_pipeline.json'}")


if __name__ == "__main__":
    main()
