"""Byte-level BPE tokenizer, trained locally with the ``tokenizers`` library, or loaded from a file.

Byte-level BPE (GPT-2, Radford et al. 2019, sec. 2.2): text is mapped to bytes, the 256 byte symbols form
the initial alphabet, and the most frequent adjacent pair is merged repeatedly until the vocabulary
(256 bytes + merges + the ``<|endoftext|>`` special token) reaches ``vocab_size``. A trained tokenizer is
cached by (corpus manifest hash, vocab size) under ``cache_dir/tokenizers/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from trainer.data.common import EOT_TOKEN, FORMAT_VERSION, DataError, file_lock, log

EOT_FALLBACKS = (EOT_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>")
MIN_BPE_VOCAB = 257  # 256 byte symbols + <|endoftext|>


def trained_tokenizer_path(cache_dir: Path, manifest_hash: str, vocab_size: int) -> Path:
    return (
        cache_dir
        / "tokenizers"
        / f"bpe{FORMAT_VERSION}-{manifest_hash[:24]}-v{vocab_size}"
        / "tokenizer.json"
    )


def train_bpe(documents: Iterable[str], n_documents: int, vocab_size: int, out_path: Path) -> Path:
    """Train a byte-level BPE with vocabulary ``vocab_size`` (incl. ``<|endoftext|>``) and save it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_BPE_VOCAB:
        raise DataError(
            f"model.vocab_size: {vocab_size} is too small for a byte-level BPE (needs >= {MIN_BPE_VOCAB})"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer, length=n_documents)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, out_path)
    return out_path


def get_or_train(
    cache_dir: Path, manifest_hash: str, vocab_size: int, documents: Iterable[str], n_documents: int
) -> Path:
    """The cached tokenizer for (manifest hash, vocab size); trained under a file lock when missing."""
    path = trained_tokenizer_path(cache_dir, manifest_hash, vocab_size)
    if path.exists():
        return path
    with file_lock(cache_dir / "locks" / f"{path.parent.name}.lock"):
        if path.exists():
            return path
        log(f"training byte-level BPE tokenizer, vocab {vocab_size}, on {n_documents} documents")
        return train_bpe(documents, n_documents, vocab_size, path)


def load_tokenizer_info(path: Path) -> tuple[int, int]:
    """(vocab size incl. added tokens, end-of-text id) of a tokenizer.json."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise DataError(f"data.tokenizer: {path}: no such file")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises plain Exception for malformed files
        raise DataError(f"data.tokenizer: {path}: not a tokenizers JSON file ({err})") from None
    for name in EOT_FALLBACKS:
        eot = tok.token_to_id(name)
        if eot is not None:
            return tok.get_vocab_size(with_added_tokens=True), eot
    raise DataError(f"data.tokenizer: {path}: has no end-of-text token (one of {', '.join(EOT_FALLBACKS)})")


def copy_tokenizer(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / "tokenizer.json"
    shutil.copyfile(src, dst)
    return dst
