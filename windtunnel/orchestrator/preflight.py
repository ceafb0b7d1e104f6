"""Checks a sweep passes before its tracking store is touched: the workdir and the store are writable, and
every trial's data can be prepared. Each problem is a ``SpecError`` of one line naming the path and the cause,
so a failed start leaves the store as it was (no experiment, no parent run, no RUNNING run left behind).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from trainer.config import RunConfig
from windtunnel.errors import SpecError, one_line
from windtunnel.orchestrator.identity import data_key
from windtunnel.orchestrator.spec import SweepSpec


def _os_problem(err: OSError) -> str:
    return err.strerror or type(err).__name__


def make_sweep_dir(workdir: str, sweep: str) -> Path:
    """``<workdir>/<sweep>``, created; ``SpecError`` when it cannot be created or written."""
    sweep_dir = (Path(workdir).expanduser() / sweep).resolve()
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        _probe_dir(sweep_dir)
    except OSError as err:
        where = err.filename or sweep_dir
        raise SpecError(f"workdir: cannot write the sweep folder {where} ({_os_problem(err)})") from None
    return sweep_dir


def _probe_dir(folder: Path) -> None:
    """Create and delete a file in ``folder`` (``os.access`` says yes to root on a read-only file system)."""
    with tempfile.TemporaryFile(dir=folder, prefix=".wt-probe-"):
        pass


def check_store_writable(uri: str) -> None:
    """A ``sqlite:///`` store's file (if it exists) and its folder must be writable: SQLite writes a journal
    beside the file and ``open_client`` a ``.lock`` file. Other stores (servers) are checked by their use."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    try:
        if db.is_dir():
            raise SpecError(f"tracking uri: {db} is a folder, not a SQLite file")
        if not db.parent.is_dir():
            raise SpecError(f"tracking uri: the folder {db.parent} of the SQLite store does not exist")
        _probe_dir(db.parent)
        if db.exists():
            with open(db, "r+b"):
                pass
            lock = db.with_name(db.name + ".lock")
            if lock.exists():
                with open(lock, "a"):
                    pass
    except OSError as err:
        where = err.filename or db.parent
        problem = _os_problem(err)
        raise SpecError(f"tracking uri: cannot write the SQLite store at {where} ({problem})") from None


def check_local_resources(spec: SweepSpec) -> None:
    """For a Ray the driver starts itself: a trial asking for more CPUs or GPUs than this machine has would
    wait forever; refuse it before the store is touched (``check_cluster_fits`` runs again on Ray's count)."""
    import torch

    from windtunnel.orchestrator.raycluster import check_cluster_fits

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return  # a Ray this process started itself (e.g. with logical GPUs): checked on Ray's own count
    check_cluster_fits(spec, {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())})


def prepare_manifests(configs: list[RunConfig]) -> dict[str, str]:
    """``prepare_data`` once per distinct (data, vocab) on the driver: ``identity.data_key`` -> manifest hash.

    Data problems (missing paths, unreadable files, a vocabulary mismatch) are the user's input: one line."""
    from trainer.data import prepare_data

    manifests: dict[str, str] = {}
    for cfg in configs:
        key = data_key(cfg)
        if key in manifests:
            continue
        try:
            manifests[key] = prepare_data(cfg).manifest_hash
        except (ValueError, OSError) as err:  # DataError is a ValueError
            raise SpecError(one_line(f"data: {err}")) from None
    return manifests
