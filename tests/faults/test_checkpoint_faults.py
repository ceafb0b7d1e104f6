"""Damaged checkpoints, at the trainer level (``trainer.checkpoint`` + ``trainer.loop.train``).

A checkpoint is detected as bad by its sha256 sidecar (truncation, a flipped byte, a missing sidecar), by
``torch.load`` failing (garbage behind a matching checksum), or by not being a training state; the run then
resumes from the previous checkpoint and reproduces the uninterrupted loss curve exactly (bit-identical on
the CPU). With no valid checkpoint left it starts from step 0 with a warning. A writer SIGKILLed in the
middle of ``torch.save`` or between the rename and the checksum leaves a state that resumes from the last
complete checkpoint. The end-to-end version (a corrupted checkpoint a Ray trial resumes from) is in
test_worker_faults.py.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from faultlib import (
    checkpoints,
    drop_sidecar,
    flip_byte,
    garbage_with_valid_checksum,
    loss_curve,
    micro_config,
    rewrite_checksum,
    steps_of,
    truncate,
)

from trainer.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint
from trainer.loop import TrainResult, train

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _resume(workdir: Path) -> TrainResult:
    return train(micro_config(), workdir=workdir, resume=True)


def _assert_same_curve(result: TrainResult, reference: TrainResult) -> None:
    assert result.status == "finished" and result.steps == reference.steps
    assert loss_curve(result.history) == loss_curve(reference.history)  # every step, bit-identical
    assert result.val_loss == reference.val_loss


@pytest.mark.parametrize(
    "damage,reason",
    [
        (truncate, "checksum mismatch"),
        (flip_byte, "checksum mismatch"),
        (drop_sidecar, "checksum file missing"),
    ],
    ids=["truncated", "flipped-byte", "no-sidecar"],
)
def test_damaged_latest_checkpoint_resumes_from_previous(
    finished_run: Path, reference_run: tuple[TrainResult, Path], damage, reason: str, caplog
) -> None:
    reference, _ = reference_run
    assert steps_of(checkpoints(finished_run)) == [30, 40]
    damage(checkpoints(finished_run)[-1])
    with pytest.raises(CheckpointError, match=reason):
        load_checkpoint(checkpoints(finished_run)[-1])  # never handed out, whatever torch.load would do
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        with pytest.warns(UserWarning, match=f"skipping corrupt checkpoint: .*step_00000040.pt: {reason}"):
            result = _resume(finished_run)
    assert any("step_00000040.pt" in r.getMessage() for r in caplog.records)  # logged, not only warned
    assert result.resumed_from == 30  # the previous checkpoint, not step 0
    assert len(result.checkpoint_warnings) == 1 and reason in result.checkpoint_warnings[0]
    _assert_same_curve(result, reference)
    assert steps_of(checkpoints(finished_run))[-1] == 40  # rewritten intact
    load_checkpoint(checkpoints(finished_run)[-1])


def test_garbage_behind_a_valid_checksum_is_never_loaded(
    finished_run: Path, reference_run: tuple[TrainResult, Path]
) -> None:
    """A matching checksum is not enough: unreadable bytes and a non-training-state file are skipped too."""
    reference, _ = reference_run
    step30, step40 = checkpoints(finished_run)
    garbage_with_valid_checksum(step40)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(step40)
    # a readable torch file that is no training state (e.g. a merge checkpoint copied into the wrong folder)
    save_checkpoint(step30, {"step": 30, "model": load_checkpoint(step30)["model"]})
    with pytest.warns(UserWarning) as caught:
        state = CheckpointManager(finished_run).load_latest()
    assert state is None
    text = " ".join(str(w.message) for w in caught)
    assert "unreadable" in text and "not a training state (missing optimizer, rng, extra)" in text
    assert "no valid checkpoint left" in text


def test_no_valid_checkpoint_left_starts_clean_with_warning(
    finished_run: Path, reference_run: tuple[TrainResult, Path], caplog
) -> None:
    reference, _ = reference_run
    for path in checkpoints(finished_run):
        truncate(path, 0.3)
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _resume(finished_run)
    texts = [str(w.message) for w in caught]
    assert sum(t.startswith("skipping corrupt checkpoint") for t in texts) == 2
    assert any(re.search("no valid checkpoint left .* starting from step 0", t) for t in texts)
    assert any("starting from step 0" in r.getMessage() for r in caplog.records)
    assert result.resumed_from is None
    assert len(result.checkpoint_warnings) == 3  # two corrupt files and the start-clean notice
    _assert_same_curve(result, reference)  # retrained from scratch: the same run, nothing from the garbage


def test_stale_temp_file_of_an_interrupted_write_is_removed(finished_run: Path) -> None:
    ckpt_dir = finished_run / "checkpoints"
    stale = ckpt_dir / ".step_00000050.pt.k3j2x.tmp"
    stale.write_bytes(b"half a checkpoint")
    mgr = CheckpointManager(finished_run)
    state = mgr.load_latest()
    assert state is not None and state["step"] == 40 and mgr.loaded == checkpoints(finished_run)[-1]
    assert not stale.exists() and mgr.skipped == []


def test_corrupt_merge_checkpoint_left_out_of_wsm_merge(tmp_path: Path) -> None:
    """WSM: a merge checkpoint that fails its checksum is left out of the final merge (warned), the run
    still finishes and merges the intact ones."""
    cfg = micro_config(30, **{"schedule.kind": "wsm", "schedule.merge_window": 3})
    first = train(cfg, workdir=tmp_path)
    assert first.status == "finished" and len(first.merged_steps) >= 2
    mgr = CheckpointManager(tmp_path)
    bad = mgr.merge_paths()[0]
    flip_byte(bad)
    with pytest.warns(UserWarning, match="leaving corrupt merge checkpoint out of the WSM merge"):
        again = train(cfg, workdir=tmp_path, resume=True)  # resumes at the end: only the merge re-runs
    assert again.status == "finished" and again.resumed_from == 30
    assert again.merged_steps == first.merged_steps[1:]
    assert any(bad.name in w for w in again.checkpoint_warnings)
    assert again.val_loss == again.val_loss and again.val_loss != first.val_loss  # merged without it


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from trainer.checkpoint import CheckpointManager
    mgr = CheckpointManager(sys.argv[1], keep_last=2)
    step = 0
    while True:
        step += 1
        w = torch.full((4_000_000,), float(step))  # 16 MB: torch.save + fsync + sha256 take a while
        mgr.save(step, {"step": step, "model": {"w": w}, "optimizer": {}, "rng": {}, "extra": {}})
    """
)


def _kill_writer_when(workdir: Path, seen) -> list[str]:
    """Start a checkpoint writer, SIGKILL it the moment ``seen(names)`` holds; returns the folder's names
    after the kill."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(workdir)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt_dir = workdir / "checkpoints"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if ckpt_dir.is_dir() and seen(os.listdir(ckpt_dir)):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    assert proc.returncode == -signal.SIGKILL, err
    return os.listdir(ckpt_dir)


def _complete_steps(names: list[str]) -> list[int]:
    return sorted(int(n[5:13]) for n in names if n.endswith(".pt") and n + ".sha256" in names)


@pytest.mark.parametrize("moment", ["inside torch.save", "between rename and checksum"])
def test_writer_sigkilled_mid_checkpoint(tmp_path: Path, moment: str) -> None:
    """Real kills at the two dangerous moments of a save; what is loaded is always a complete checkpoint."""

    def seen(names: list[str]) -> bool:
        if len(_complete_steps(names)) < 2:
            return False
        if moment == "inside torch.save":
            return any(n.endswith(".tmp") and ".sha256" not in n for n in names)
        return any(n.endswith(".pt") and n + ".sha256" not in names for n in names)

    for attempt in range(3):  # the kill lands a few microseconds after the check: retry if it missed
        workdir = tmp_path / f"try{attempt}"
        names = _kill_writer_when(workdir, seen)
        if seen(names):
            break
    else:
        pytest.fail(f"never caught the writer {moment}: {sorted(names)}")
    mgr = CheckpointManager(workdir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = mgr.load_latest()
    assert state is not None
    step = int(state["step"])
    assert torch.equal(state["model"]["w"], torch.full((4_000_000,), float(step)))  # its own data, whole
    assert step == _complete_steps(names)[-1]  # the newest complete checkpoint at the moment of the kill
    assert not any(n.endswith(".tmp") for n in os.listdir(workdir / "checkpoints"))  # torn temp removed
    if moment == "between rename and checksum":
        assert len(mgr.skipped) == 1 and "checksum file missing" in mgr.skipped[0]
        assert len(caught) == 1
    else:
        assert mgr.skipped == [] and caught == []


def test_checksum_rewritten_over_truncated_file_is_still_rejected(finished_run: Path) -> None:
    """A torn file whose sidecar was (wrongly) recomputed afterwards: torch.load fails, nothing is loaded."""
    last = checkpoints(finished_run)[-1]
    truncate(last, 0.5)
    rewrite_checksum(last)
    mgr = CheckpointManager(finished_run)
    with pytest.warns(UserWarning, match="unreadable"):
        state = mgr.load_latest()
    assert state is not None and state["step"] == 30
