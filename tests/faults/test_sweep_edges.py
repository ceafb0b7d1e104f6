"""The file-system edges of ``windtunnel run``: a read-only workdir, an unwritable tracking store and data
that cannot be prepared are each ONE line on stderr, exit 2, no traceback, and the store is left byte for
byte as it was (every check runs before the store is touched: no experiment, no parent run left RUNNING).
These start no Ray and train nothing: each is one CLI call of ~10 s (imports).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from edgelib import cli, digest, error_lines, make_store, read_only_folder
from micro_spec import MICRO_DATA, micro_base

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _spec(tmp_path: Path, **over: Any) -> Path:
    spec = {
        "name": "edges",
        "data": dict(MICRO_DATA),
        "base": micro_base(20_480),
        "concurrency": 1,
        "studies": [{"name": "lr", "grid": {"optim.lr": [1e-3, 3e-3]}}],
        **over,
    }
    path = tmp_path / "edges.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _assert_one_line(out: Any, *needles: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    lines = error_lines(out.stderr)
    assert len(lines) == 1, out.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_read_only_workdir_is_one_line_and_the_store_is_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    make_store(db)
    before = digest(db)
    with read_only_folder() as ro:
        spec = _spec(tmp_path, workdir=str(ro / "runs"))
        out = cli(["run", str(spec), "--no-progress", "--tracking-uri", f"sqlite:///{db}"], tmp_path, 240)
    _assert_one_line(out, "workdir: cannot write the sweep folder", str(ro), "Read-only file system")
    assert digest(db) == before


def test_unwritable_store_is_one_line_and_unchanged(tmp_path: Path) -> None:
    make_store(tmp_path / "src.db")
    with read_only_folder(lambda folder: shutil.copy(tmp_path / "src.db", folder / "mlflow.db")) as ro:
        db = ro / "mlflow.db"
        before = digest(db)
        spec = _spec(tmp_path, workdir=str(tmp_path / "runs"))
        out = cli(["run", str(spec), "--no-progress", "--tracking-uri", f"sqlite:///{db}"], tmp_path, 240)
        _assert_one_line(out, "tracking uri: cannot write the SQLite store", str(ro))
        assert digest(db) == before


def test_data_that_cannot_be_prepared_leaves_the_store_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    make_store(db)
    before = digest(db)
    missing = tmp_path / "no_such_corpus.txt"
    spec = _spec(tmp_path, data={"source": "files", "paths": [str(missing)]})
    out = cli(["run", str(spec), "--no-progress", "--tracking-uri", f"sqlite:///{db}"], tmp_path, 240)
    _assert_one_line(out, "data:", "no_such_corpus.txt")
    assert digest(db) == before  # no experiment, no parent run left RUNNING


def test_tracking_uri_from_the_environment(tmp_path: Path) -> None:
    """``windtunnel status`` and ``run`` read ``$MLFLOW_TRACKING_URI`` when no --tracking-uri is given."""
    import subprocess
    import sys

    from edgelib import ENV

    db = tmp_path / "env.db"
    make_store(db)
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    status = subprocess.run(
        [sys.executable, "-m", "windtunnel.cli", "status"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0 and status.stdout.startswith("earlier:"), status.stderr[-2000:]
    # run: the environment's store is the one checked (read-only here), not ./mlflow.db
    with read_only_folder(lambda folder: shutil.copy(db, folder / "env.db")) as ro:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{ro / 'env.db'}"
        spec = _spec(tmp_path, workdir=str(tmp_path / "runs"))
        out = subprocess.run(
            [sys.executable, "-m", "windtunnel.cli", "run", str(spec), "--no-progress"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        _assert_one_line(out, "tracking uri:", str(ro))
    assert not (tmp_path / "mlflow.db").exists()


def test_fit_runs_given_a_folder_is_one_line(tmp_path: Path) -> None:
    out = cli(["fit", "--runs", str(tmp_path), "--out", str(tmp_path / "laws.json")], tmp_path, 120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (line,) = error_lines(out.stderr, "fit")
    assert f"--runs {tmp_path}: is a directory" in line
    assert not (tmp_path / "laws.json").exists()
