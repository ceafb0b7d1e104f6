"""The sweep YAML's numbers at the launch edge, fuzzed (hypothesis): any number in any numeric field (inf,
nan, 1e400, negatives, zero, huge integers, arbitrary floats) gives either a valid plan or ONE line on stderr
with exit 2; never a traceback, and a refused sweep never changes the tracking store. The real CLI entry
point (``windtunnel.cli.main``) runs in-process; a valid plan is checked with ``--dry-run`` (nothing is
trained), a refused one is also run for real against an existing store, whose bytes must not change.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from micro_spec import MICRO_DATA, micro_base

from windtunnel.cli import main

TEMPLATE: dict[str, Any] = {
    "name": "fuzz",
    "data": dict(MICRO_DATA),
    "base": micro_base(20_480),
    "seeds": [0],
    "concurrency": 2,
    "retries": 1,
    "resources": {"cpus": 1, "gpus": 0},
    "min_runs_to_fit": 3,
    "fit": {"bootstrap": 0, "max_extrapolation_decades": 5.0},
    "limits": {"max_trial_flops": 1.0e21, "max_trials": 10_000},
    "studies": [
        {
            "name": "search",
            "search": {
                "budgets": [1.5e10],
                "lr": {"low": 1e-3, "high": 3e-2},
                "num_samples": 2,
                "grace_fraction": 0.3,
                "reduction_factor": 3.0,
                "seed": 0,
            },
        },
        {"name": "grid", "grid": {"optim.lr": [1e-3, 3e-3], "optim.batch_size": [8]}},
        {"name": "ladder", "ladder": {"budgets": [2.0e10], "models": [{"d_model": 32, "d_ffn": 96}]}},
    ],
}
FIELDS: list[tuple[Any, ...]] = [
    ("concurrency",),
    ("retries",),
    ("seeds", 0),
    ("min_runs_to_fit",),
    ("resources", "cpus"),
    ("resources", "gpus"),
    ("fit", "bootstrap"),
    ("fit", "max_extrapolation_decades"),
    ("limits", "max_trial_flops"),
    ("limits", "max_trials"),
    ("base", "optim", "lr"),
    ("base", "optim", "tokens"),
    ("base", "optim", "batch_size"),
    ("base", "optim", "weight_decay"),
    ("base", "eval_interval"),
    ("base", "diverge_factor"),
    ("base", "model", "d_model"),
    ("base", "model", "n_layers"),
    ("base", "model", "vocab_size"),
    ("studies", 0, "search", "budgets", 0),
    ("studies", 0, "search", "lr", "low"),
    ("studies", 0, "search", "lr", "high"),
    ("studies", 0, "search", "num_samples"),
    ("studies", 0, "search", "grace_fraction"),
    ("studies", 0, "search", "reduction_factor"),
    ("studies", 0, "search", "seed"),
    ("studies", 1, "grid", "optim.lr", 0),
    ("studies", 1, "grid", "optim.batch_size", 0),
    ("studies", 2, "ladder", "budgets", 0),
    ("studies", 2, "ladder", "models", 0, "d_model"),
]
SPECIAL = [
    math.inf,
    -math.inf,
    math.nan,
    "1e400",  # PyYAML reads an exponent without a dot as a string; pydantic then makes it inf
    "-1e400",
    "1e30",
    ".nan",
    1.0e30,
    -1,
    0,
    -0.0,
    1e-300,
    2**64,
    10**30,
    -(2**63),
]
NUMBERS = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
)


def _set(spec: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from windtunnel.orchestrator.tracking import open_client

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    client = open_client(f"sqlite:///{db}")
    client.create_experiment("earlier")
    return db


def _check(tmp: Path, spec: dict[str, Any], store: Path) -> int:
    path = tmp / "fuzz.yaml"
    path.write_text(yaml.safe_dump(spec))
    rc, out, err = _cli(["run", str(path), "--dry-run"])
    assert rc in (0, 2), (rc, err)
    if rc == 0:
        assert "trials," in out and not err.strip()
        return rc
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("windtunnel run: error: "), err
    before = store.read_bytes()
    rc2, _, err2 = _cli(["run", str(path), "--no-progress", "--tracking-uri", f"sqlite:///{store}"])
    assert rc2 == 2 and err2.strip() == err.strip(), (rc2, err2)
    assert store.read_bytes() == before
    return rc


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(edits=st.lists(st.tuples(st.sampled_from(FIELDS), NUMBERS), min_size=1, max_size=3))
def test_numbers_give_a_valid_plan_or_one_line(
    edits: list[tuple[tuple[Any, ...], Any]], tmp_path: Path, store: Path
) -> None:
    spec = copy.deepcopy(TEMPLATE)
    for path, value in edits:
        _set(spec, path, value)
    rc = _check(tmp_path, spec, store)
    final = dict(edits)  # a field edited twice keeps its last value: that is the number the YAML holds
    bad = [v for v in final.values() if isinstance(v, float) and not math.isfinite(v)]
    assert not bad or rc == 2  # a non-finite number is never accepted


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (
            ("studies", 0, "search", "lr", "high"),
            math.inf,
            "studies[0].search.lr.high: must be a finite number",
        ),
        (("studies", 0, "search", "budgets", 0), "1e400", "studies[0].search.budgets[0]"),
        (("studies", 1, "grid", "optim.lr", 0), "1e400", "must be a finite number"),
        (("studies", 0, "search", "budgets", 0), 1.0e30, "limits.max_trial_flops"),
        (("studies", 0, "search", "num_samples"), 10**30, "studies[0].search.num_samples"),
        (("seeds", 0), -1, "seeds[0]"),
    ],
)
def test_named_refusals(tmp_path: Path, store: Path, path: tuple[Any, ...], value: Any, needle: str) -> None:
    spec = copy.deepcopy(TEMPLATE)
    _set(spec, path, value)
    assert _check(tmp_path, spec, store) == 2
    _, _, err = _cli(["run", str(tmp_path / "fuzz.yaml"), "--dry-run"])
    assert needle in err, err


def test_a_large_budget_runs_when_the_yaml_raises_the_limit(tmp_path: Path, store: Path) -> None:
    spec = copy.deepcopy(TEMPLATE)
    _set(spec, ("studies", 0, "search", "budgets", 0), 1.0e30)
    _set(spec, ("limits", "max_trial_flops"), 1.0e31)
    assert _check(tmp_path, spec, store) == 0
