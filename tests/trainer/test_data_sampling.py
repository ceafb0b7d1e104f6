"""Training windows without replacement: within an epoch no token is predicted twice, the stream is spread
over the whole split, and batches stay a pure function of (seed, step)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.config import RunConfig
from trainer.data import TokenData, prepare_data


def _data(tmp_path: Path, n_tokens: int, seq_len: int, seed: int = 0) -> TokenData:
    rng = np.random.default_rng(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tok.bin"
    rng.integers(0, 250, size=n_tokens, dtype=np.uint16).tofile(path)
    (tmp_path / "tok.bin.json").write_text(
        json.dumps({"dtype": "uint16", "vocab_size": 256, "split": "train"})
    )
    val = tmp_path / "val.bin"
    rng.integers(0, 250, size=2000, dtype=np.uint16).tofile(val)
    (tmp_path / "val.bin.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 256, "split": "val"}))
    cfg = RunConfig.from_dict(
        {
            "model": {
                "vocab_size": 256,
                "d_model": 16,
                "n_layers": 1,
                "n_heads": 2,
                "n_kv_heads": 2,
                "seq_len": seq_len,
            },
            "data": {"source": "tokens", "paths": [str(path), str(val)], "cache_dir": str(tmp_path / "c")},
        }
    )
    return TokenData(prepare_data(cfg), seq_len=seq_len, seed=seed)


def test_one_epoch_predicts_every_token_at_most_once(tmp_path: Path) -> None:
    T, B = 16, 8
    data = _data(tmp_path, 10_007, T)
    n, E = data.n_train_tokens, data.windows_per_epoch
    assert E == n // T - 1
    starts = np.concatenate([data.batch_starts(step, B) for step in range(E // B)])
    assert len(set(starts.tolist())) == len(starts)
    assert starts.min() >= 0 and starts.max() + T + 1 <= n
    # the predicted positions (start+1 .. start+T) of different windows never overlap
    covered = np.zeros(n, dtype=np.int64)
    for s in starts:
        covered[s + 1 : s + T + 1] += 1
    assert covered.max() == 1 and covered.sum() == len(starts) * T
    # mixed: the first few steps already reach both ends of the split
    early = np.concatenate([data.batch_starts(step, B) for step in range(4)])
    assert early.min() < n // 4 and early.max() > 3 * n // 4


def test_epochs_reshuffle_and_batches_resume(tmp_path: Path) -> None:
    T, B = 16, 8
    data = _data(tmp_path, 4_003, T, seed=3)
    E = data.windows_per_epoch
    steps = 3 * E // B + 2
    all_starts = [data.batch_starts(step, B) for step in range(steps)]
    # a fresh loader (a resumed run) at any step gives the same windows, in any order of calls
    fresh = _data(tmp_path / "again", 4_003, T, seed=3)
    for step in reversed(range(steps)):
        assert np.array_equal(fresh.batch_starts(step, B), all_starts[step])
    flat = np.concatenate(all_starts)
    first, second = flat[:E], flat[E : 2 * E]
    assert len(set((first % T).tolist())) == 1 and len(set((second % T).tolist())) == 1  # one offset o_e
    assert not np.array_equal(first, second)  # a new permutation each epoch
    other_seed = _data(tmp_path / "seed4", 4_003, T, seed=4)
    assert not np.array_equal(other_seed.batch_starts(0, B), all_starts[0])
