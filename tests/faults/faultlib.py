"""Fault injectors and the tiny run the fault tests share (imported by module name, like kernel_testutil).

Every injector damages a real file written by ``trainer.checkpoint`` the way a real fault would: a torn
write (truncation), a flipped bit on disk, a lost checksum sidecar, a foreign file with a freshly written
checksum, and NaN weights or optimizer moments saved *with a valid checksum* (what a run that blew up between
two checkpoints leaves behind).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from micro_spec import MICRO_DATA, MICRO_MODEL  # noqa: F401 - re-exported to the fault tests

from trainer.checkpoint import list_step_files, load_checkpoint, save_checkpoint, sha256_file, step_of
from trainer.config import RunConfig


def micro_config(steps: int = 40, **overrides: Any) -> RunConfig:
    """A 0.05M-parameter dense run: batch 8 x 64 tokens, a checkpoint every 10 steps, a log every 5."""
    base: dict[str, Any] = {
        "device": "cpu",
        "eval_interval": 10,
        "eval_batches": 2,
        "log_interval": 5,
        "model": dict(MICRO_MODEL),
        "optim": {"lr": 3e-3, "batch_size": 8, "tokens": steps * 8 * 64},
        "schedule": {"kind": "wsd"},
        "data": dict(MICRO_DATA),
    }
    cfg = RunConfig.from_dict(base)
    return cfg.with_overrides(overrides) if overrides else cfg


def checkpoints(workdir: str | Path) -> list[Path]:
    """Full checkpoints of a run folder, oldest first."""
    return list_step_files(Path(workdir) / "checkpoints")


def steps_of(paths: list[Path]) -> list[int]:
    return [step_of(p) for p in paths]


def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    """A torn write: the file keeps only its first bytes (its checksum sidecar is left as it was)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def flip_byte(path: Path, offset_fraction: float = 0.6) -> None:
    """Silent on-disk corruption: one byte XOR 0xFF, same size, sidecar unchanged."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * offset_fraction)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def drop_sidecar(path: Path) -> None:
    """The writer died between renaming the checkpoint into place and writing its ``.sha256``."""
    path.with_name(path.name + ".sha256").unlink()


def rewrite_checksum(path: Path) -> None:
    """Make ``path``'s sidecar match whatever bytes it now holds (as ``save_checkpoint`` writes it)."""
    path.with_name(path.name + ".sha256").write_text(f"{sha256_file(path)}  {path.name}\n")


def garbage_with_valid_checksum(path: Path) -> None:
    """Bytes that are not a checkpoint at all, behind a checksum that matches them."""
    path.write_bytes(b"not a torch checkpoint\x00" * 1000)
    rewrite_checksum(path)


def first_matrix_name(state: dict[str, Any]) -> str:
    """The first 2-D non-embedding weight of a model state dict (NaN there reaches every token's loss)."""
    for name, t in state["model"].items():
        if t.ndim == 2 and "emb" not in name and torch.is_floating_point(t):
            return name
    raise AssertionError("no 2-D weight in the checkpoint")


def poison_weight(path: Path) -> str:
    """Set one weight element to NaN and save with a valid checksum; returns the tensor's name."""
    state = load_checkpoint(path)
    name = first_matrix_name(state)
    state["model"][name][0, 0] = float("nan")
    save_checkpoint(path, state)
    return name


def poison_optimizer(path: Path) -> None:
    """NaN into every AdamW second moment (``exp_avg_sq``) of the first parameter; valid checksum."""
    state = load_checkpoint(path)
    first = state["optimizer"]["state"][min(state["optimizer"]["state"])]
    first["exp_avg_sq"].fill_(float("nan"))
    save_checkpoint(path, state)


def loss_curve(history: list[tuple[int, dict[str, float]]]) -> dict[int, float]:
    """step -> training loss of a ``TrainResult.history``."""
    return {s: m["loss"] for s, m in history if "loss" in m}
