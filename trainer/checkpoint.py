"""Checkpoints: atomic writes, sha256 checksums, fallback on corruption, retention, WSM merge checkpoints.

Layout under a run's ``workdir``:

- ``checkpoints/step_00000120.pt`` (+ ``.sha256``): full training state for resume — model state dict,
  all named buffers (expert biases included), optimizer, RNG states, step, schedule state. The last
  ``keep_last`` are kept.
- ``merge/step_00000120.pt`` (+ ``.sha256``): model weights only, saved at the WSM merge steps; never pruned
  by the retention rule (they are the inputs of the final merge and of ``python -m trainer merge``).

A write goes to a temporary file in the same folder, is fsynced, and is renamed over the target
(``os.replace`` is atomic on POSIX), then its checksum file is written the same way. A checkpoint whose
checksum is missing or does not match, that ``torch.load`` cannot read, or that lacks the keys of a
training state is treated as corrupt: ``CheckpointManager.load_latest`` warns (``warnings`` and the
``trainer.checkpoint`` logger), records why in ``CheckpointManager.skipped`` and falls back to the previous
one; when none is left the run starts clean from step 0 with a warning saying so. Temporary files left by a
write that was killed mid-way are removed before a resume. The checksum covers the bytes on disk only: a
checkpoint saved from weights that were already non-finite passes it, and the training loop catches those
as a divergence (non-finite loss on the first step after the resume).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_RE = re.compile(r"^step_(\d{8,})\.pt$")
_TMP_RE = re.compile(r"^\..+\.tmp$")  # _atomic_write_bytes' temp files
TRAINING_STATE_KEYS = ("step", "model", "optimizer", "rng", "extra")  # what a resume needs
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or fails its checksum."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` ``state`` to ``path`` and write ``path.sha256`` beside it."""
    path = Path(path)
    _atomic_write_bytes(path, lambda f: torch.save(state, f))
    digest = sha256_file(path)
    _atomic_write_bytes(
        path.with_name(path.name + ".sha256"), lambda f: f.write(f"{digest}  {path.name}\n".encode())
    )
    return path


def verify_checkpoint(path: str | Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` exists and matches its stored sha256."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not sidecar.exists():
        raise CheckpointError(f"{path}: checksum file missing")
    expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"{path}: checksum mismatch (stored {expected[:12]}, file {actual[:12]})")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> dict:
    """Load a checkpoint written by ``save_checkpoint`` (checksum verified unless ``verify=False``).

    A checkpoint holds only tensors and plain data (``rng_state`` stores NumPy's state as a tensor), so it
    loads with ``weights_only=True``: no code runs from the file.
    """
    if verify:
        verify_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or garbled file
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from None


def step_of(path: str | Path) -> int:
    m = _STEP_RE.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not a step_XXXXXXXX.pt checkpoint name")
    return int(m.group(1))


def list_step_files(folder: str | Path) -> list[Path]:
    """``step_*.pt`` files in ``folder``, sorted by step (oldest first)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _STEP_RE.match(p.name)), key=step_of)


# ---- RNG state ------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain data (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- model/optimizer state ------------------------------------------------------------------------------


def training_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything needed to resume: weights, every named buffer (expert biases even if non-persistent),
    optimizer state, RNG states, the completed step count and ``extra`` (schedule state, best loss, …)."""
    return {
        "step": step,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "buffers": {k: v.detach().cpu().clone() for k, v in model.named_buffers()},
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "extra": dict(extra or {}),
    }


def restore_training_state(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> int:
    """Load ``state`` (from ``training_state``) into model, optimizer and the RNGs; returns the step."""
    model.load_state_dict(state["model"])
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in state.get("buffers", {}).items():
            if name in buffers:
                buffers[name].copy_(value.to(buffers[name].device))
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return int(state["step"])


class CheckpointManager:
    """Full checkpoints (keep the last ``keep_last``) and WSM merge checkpoints under one run folder."""

    def __init__(self, workdir: str | Path, keep_last: int = 2) -> None:
        self.workdir = Path(workdir)
        self.ckpt_dir = self.workdir / "checkpoints"
        self.merge_dir = self.workdir / "merge"
        self.keep_last = max(1, keep_last)
        self.skipped: list[str] = []  # why checkpoints were passed over (load_latest resets it)
        self.loaded: Path | None = None  # the checkpoint the last load_latest returned

    def path_for(self, step: int, merge: bool = False) -> Path:
        return (self.merge_dir if merge else self.ckpt_dir) / f"step_{step:08d}.pt"

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Save a full checkpoint, then prune all but the newest ``keep_last`` full checkpoints."""
        path = save_checkpoint(self.path_for(step), state)
        for old in list_step_files(self.ckpt_dir)[: -self.keep_last]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        return path

    def save_merge(self, step: int, model_state: dict[str, torch.Tensor]) -> Path:
        """Save a WSM merge checkpoint (model weights only, never pruned)."""
        return save_checkpoint(self.path_for(step, merge=True), {"step": step, "model": model_state})

    def merge_paths(self, steps: list[int] | None = None) -> list[Path]:
        """Merge checkpoints on disk (oldest first), restricted to ``steps`` when given."""
        paths = list_step_files(self.merge_dir)
        if steps is not None:
            wanted = set(steps)
            paths = [p for p in paths if step_of(p) in wanted]
        return paths

    def valid_merge_paths(self, steps: list[int] | None = None) -> list[Path]:
        """``merge_paths(steps)`` without the ones that fail their checksum (each skipped with a warning and
        added to ``self.skipped``): the WSM merge then averages the checkpoints that are intact."""
        out = []
        for path in self.merge_paths(steps):
            try:
                verify_checkpoint(path)
            except CheckpointError as err:
                self._warn(f"leaving corrupt merge checkpoint out of the WSM merge: {err}")
                self.skipped.append(str(err))
                continue
            out.append(path)
        return out

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temp files of writes that never finished (the writer was killed before its rename).

        Only safe while no writer is active on this workdir, i.e. before a run (re)starts."""
        removed = []
        for folder in (self.ckpt_dir, self.merge_dir, self.workdir):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                if _TMP_RE.match(p.name) and p.is_file():
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """Newest full checkpoint that passes its checksum, loads, and holds a whole training state.

        Corrupt ones (truncated, bit-flipped, checksum missing, not a training state) are skipped with a
        warning and listed in ``self.skipped``; ``None`` (with a warning if any checkpoint existed) when no
        valid one is left, so the run starts clean. ``self.loaded`` is the path that was loaded, if any.
        """
        self.skipped = []
        self.loaded = None
        for tmp in self.remove_stale_temp_files():
            log.warning("removed temp file of an interrupted checkpoint write: %s", tmp)
        paths = list_step_files(self.ckpt_dir)
        for path in reversed(paths):
            try:
                state = load_checkpoint(path, map_location=map_location)
                missing = (
                    [k for k in TRAINING_STATE_KEYS if k not in state]
                    if isinstance(state, dict)
                    else list(TRAINING_STATE_KEYS)
                )
                if missing:
                    raise CheckpointError(f"{path}: not a training state (missing {', '.join(missing)})")
            except CheckpointError as err:
                self._warn(f"skipping corrupt checkpoint: {err}")
                self.skipped.append(str(err))
                continue
            self.loaded = path
            return state
        if paths:
            msg = f"no valid checkpoint left in {self.ckpt_dir} ({len(paths)} corrupt): starting from step 0"
            self._warn(msg)
            self.skipped.append(msg)
        return None

    def _warn(self, msg: str) -> None:
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
