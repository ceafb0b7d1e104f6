"""``TokenData``: random training windows and fixed validation windows over memory-mapped token shards.

Training windows, sampled without replacement: the train split is cut into E = N_train // T - 1
non-overlapping windows of T + 1 tokens, window i of epoch e starting at o_e + i·T (o_e in [0, T) drawn
per epoch from (seed, e), so epochs see shifted windows). Sample j = t·B + b of the run (step t, row b) is
window perm_e[j mod E] of epoch e = j // E, perm_e a permutation drawn from (seed, e). Within an epoch no
token is predicted twice and the stream is mixed across the whole split (documents of every kind, not the
corpus order); the batches are a pure function of (seed, step), so a run resumed at step k sees exactly
the batches an uninterrupted run would. Each window holds T + 1 tokens w; x = w[:-1], y = w[1:].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trainer.data.common import DataError
from trainer.data.prepare import DataArtifacts


class TokenData:
    """Batches of (x_BT, y_BT) int64 tensors from a prepared data set."""

    def __init__(self, artifacts: DataArtifacts, seq_len: int, seed: int = 0) -> None:
        if seq_len < 1:
            raise DataError(f"seq_len must be >= 1, got {seq_len}")
        if seed < 0:
            raise DataError(f"seed must be >= 0, got {seed}")
        self.artifacts = artifacts
        self.seq_len = seq_len
        self.seed = seed
        self._open()

    def _open(self) -> None:
        artifacts, seq_len = self.artifacts, self.seq_len
        dtype = np.dtype(artifacts.dtype)
        self._train_N = np.memmap(artifacts.train_path, dtype=dtype, mode="r")
        self._val_N = np.memmap(artifacts.val_path, dtype=dtype, mode="r")
        if len(self._train_N) < seq_len + 1:
            raise DataError(
                f"train split has {len(self._train_N)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                "use more data or a shorter model.seq_len"
            )
        self._val_cache: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._epochs: dict[int, tuple[int, np.ndarray]] = {}  # epoch -> (offset o_e, permutation perm_e)
        self._tokenizer: Any = None

    def __getstate__(self) -> dict[str, object]:
        """Pickle (e.g. to a Ray worker) without copying the shards: the memmaps are reopened."""
        return {"artifacts": self.artifacts, "seq_len": self.seq_len, "seed": self.seed}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._open()

    # ---- facts about the data -----------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.artifacts.vocab_size

    @property
    def manifest_hash(self) -> str:
        return self.artifacts.manifest_hash

    @property
    def eot_id(self) -> int | None:
        return self.artifacts.eot_id

    @property
    def n_train_tokens(self) -> int:
        return len(self._train_N)

    @property
    def n_val_tokens(self) -> int:
        return len(self._val_N)

    def unigram_entropy_nats(self) -> float:
        """H = -sum_v p_v ln p_v (Shannon 1948) of the train shard's token frequencies, in nats.

        The cross-entropy of the best context-free predictor: a trained model's loss must beat it.
        """
        return self.artifacts.unigram_entropy_nats

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of a token id sequence (needs the data set's tokenizer; ``tokens`` sources have none)."""
        if self.artifacts.tokenizer_path is None:
            raise DataError("this data set was given as token ids and has no tokenizer to decode with")
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.artifacts.tokenizer_path))
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    # ---- batches ------------------------------------------------------------------------------
    def _windows(self, tokens_N: np.ndarray, starts_B: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx_BT1 = starts_B[:, None] + np.arange(self.seq_len + 1)[None, :]
        w_BT1 = np.asarray(tokens_N[idx_BT1], dtype=np.int64)
        x_BT = torch.from_numpy(np.ascontiguousarray(w_BT1[:, :-1]))
        y_BT = torch.from_numpy(np.ascontiguousarray(w_BT1[:, 1:]))
        return x_BT, y_BT

    @property
    def windows_per_epoch(self) -> int:
        """E: non-overlapping training windows of seq_len + 1 tokens in one pass over the train split."""
        return max(1, len(self._train_N) // self.seq_len - 1)

    def _epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        """(o_e, perm_e) of an epoch, drawn from (seed, epoch); the last two epochs are kept."""
        if epoch not in self._epochs:
            T, E = self.seq_len, self.windows_per_epoch
            rng = np.random.default_rng([self.seed, epoch, 0x5EED])
            slack = len(self._train_N) - T - 1 - (E - 1) * T  # room for the offset: last window fits
            offset = int(rng.integers(0, max(1, min(T, slack + 1))))
            self._epochs = {e: v for e, v in self._epochs.items() if e >= epoch - 1}
            self._epochs[epoch] = (offset, rng.permutation(E).astype(np.int64))
        return self._epochs[epoch]

    def batch_starts(self, step: int, batch_size: int) -> np.ndarray:
        """Window starts of training step ``step``: a pure function of (seed, step) (module docstring)."""
        if step < 0 or batch_size < 1:
            raise DataError(
                f"step must be >= 0 and batch_size >= 1, got step={step}, batch_size={batch_size}"
            )
        E = self.windows_per_epoch
        j_B = step * batch_size + np.arange(batch_size, dtype=np.int64)
        epoch_B, pos_B = j_B // E, j_B % E
        starts_B = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(epoch_B):
            offset, perm_E = self._epoch(int(epoch))
            sel = epoch_B == epoch
            starts_B[sel] = offset + perm_E[pos_B[sel]] * self.seq_len
        return starts_B

    def batch(
        self, step: int, batch_size: int, rows: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_BT, y_BT) for training step ``step``; y_BT is x_BT shifted left by one token. ``rows`` selects
        rows of that global batch (a data-parallel rank's shard): only those windows are read."""
        starts_B = self.batch_starts(step, batch_size)
        return self._windows(self._train_N, starts_B if rows is None else starts_B[rows])

    def val_batches(self, n_batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed validation batches: evenly spaced windows, non-overlapping when the split allows."""
        key = (n_batches, batch_size)
        if key in self._val_cache:
            return self._val_cache[key]
        n_val, T = len(self._val_N), self.seq_len
        if n_val < T + 1:
            raise DataError(
                f"validation split has {n_val} tokens, fewer than seq_len + 1 = {T + 1}; "
                "raise data.val_fraction, use more data or a shorter model.seq_len"
            )
        count = n_batches * batch_size
        stride = (n_val - 1) // count
        if stride >= T:  # non-overlapping inputs: start_i = i * stride, last window ends <= n_val
            starts = np.arange(count, dtype=np.int64) * stride
        else:
            starts = np.linspace(0, n_val - T - 1, count).round().astype(np.int64)
        out = [self._windows(self._val_N, s_B) for s_B in starts.reshape(n_batches, batch_size)]
        self._val_cache[key] = out
        return out
