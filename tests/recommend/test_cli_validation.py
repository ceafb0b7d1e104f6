"""``windtunnel recommend`` at its edges: every bad number or law file is one line and exit code 2.

Includes hypothesis fuzzing over the command's arguments and over laws.json coefficient edits: every case
either is a one-line error with exit code 2 or gives a config the trainer dry-runs and Megatron-Core accepts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from megatron_config import check_world, read_args, transformer_config

from trainer.config import RunConfig
from trainer.dryrun import dry_run
from windtunnel.cli import main
from windtunnel.laws.builtin import ling_laws


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["recommend", *argv])
        except SystemExit as exit_:
            rc = exit_.code if isinstance(exit_.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--compute", "6.4e24", "--gpus", "0"], "--gpus"),
        (["--compute", "6.4e24", "--gpus", "-8"], "--gpus"),
        (["--compute", "-5"], "--compute"),
        (["--compute", "0"], "--compute"),
        (["--compute", "1e400"], "--compute"),
        (["--compute", "nan"], "--compute"),
        (["--compute", "1e40"], "--compute"),
        (["--total-params", "-1T"], "--total-params"),
        (["--model", "experiments/models/ling-1t.yaml", "--tokens", "1e400"], "--tokens"),
        (["--compute", "6.4e24", "--mfu", "0"], "--mfu"),
        (["--compute", "6.4e24", "--gpu-memory", "inf"], "--gpu-memory"),
        (["--compute", "6.4e24", "--tp", "0"], "--tp"),
        (["--compute", "6.4e24", "--aspect", "160:64"], "--aspect"),
        (["--compute", "6.4e24", "--granularity", "nan"], "--granularity"),
    ],
)
def test_bad_numbers_are_one_line_naming_the_flag(extra, flag):
    rc, _, err = run_cli("--laws", "ling", *extra)
    assert_one_line_error(rc, err, flag)


def test_version_and_help_show_defaults():
    rc, out, _ = run_cli("--help")
    assert rc == 0 and "(default: 1024)" in out and "(default: 80.0)" in out
    out2 = io.StringIO()
    with contextlib.redirect_stdout(out2), pytest.raises(SystemExit) as ex:
        main(["--version"])
    assert ex.value.code == 0 and out2.getvalue().startswith("windtunnel ")


def test_too_few_gpus_says_how_many_would_do():
    rc, _, err = run_cli("--laws", "ling", "--compute", "1e26")
    assert_one_line_error(rc, err, "GPUs of 80 GB (tp=")


def _laws_file(tmp_path: Path, edit) -> Path:
    data = {"laws": {name: law.to_dict() for name, law in ling_laws().items()}}
    edit(data["laws"])
    path = tmp_path / "laws.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda laws: laws["lr_opt"]["coefficients"].pop("b"), ["'lr_opt'", "'b'", "missing"]),
        (
            lambda laws: laws["batch_opt"]["coefficients"].update(a=float("nan")),
            ["'batch_opt'", "'a'", "finite"],
        ),
        (lambda laws: laws["m_opt"]["coefficients"].update(b="0.5"), ["'m_opt'", "'b'", "number"]),
        (lambda laws: laws["leverage"].update(coefficients=[1, 2]), ["'leverage'", "coefficients"]),
        (lambda laws: laws["lr_opt"]["coefficients"].update(a=-1.0), ["'lr_opt'", "'a'", "positive"]),
    ],
)
def test_hand_edited_laws_are_one_line_naming_law_and_key(tmp_path, edit, words):
    rc, _, err = run_cli("--laws", str(_laws_file(tmp_path, edit)), "--compute", "1e23")
    assert_one_line_error(rc, err, *words)


def test_unreadable_laws_file_is_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    for laws in (tmp_path / "bad.json", tmp_path / "missing.json", tmp_path):
        rc, _, err = run_cli("--laws", str(laws), "--compute", "1e23")
        assert_one_line_error(rc, err, str(laws))


def _check_valid(out_yaml: Path) -> None:
    cfg = RunConfig.from_yaml(out_yaml)
    assert dry_run(cfg)["total_params"] > 0
    argv = read_args(out_yaml.with_suffix(".megatron.args"))
    transformer_config(argv)
    check_world(argv, cfg.parallel.tp * cfg.parallel.pp * cfg.parallel.dp, cfg.model.vocab_size)


NUMBER = st.one_of(
    st.sampled_from(["0", "-1", "1e400", "nan", "inf", "-inf", "abc", "1e-300", "", "1T", "3.5%", "9/257"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**6), 10**6).map(str),
)
FLAGS = [
    "--gpus",
    "--gpu-memory",
    "--mfu",
    "--tp",
    "--pp",
    "--ep",
    "--kv-heads",
    "--experts",
    "--granularity",
]


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    target=st.one_of(
        st.tuples(st.just("--compute"), st.floats(1e21, 3e25).map(lambda c: f"{c:.3g}")),
        st.tuples(st.just("--total-params"), st.floats(5e10, 3e12).map(lambda n: f"{n:.3g}")),
        st.tuples(st.sampled_from(["--compute", "--total-params"]), NUMBER),
    ),
    extra=st.lists(st.tuples(st.sampled_from(FLAGS), NUMBER), max_size=2, unique_by=lambda t: t[0]),
)
def test_fuzz_recommend_arguments(tmp_path_factory, target, extra):
    out = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    argv = ["--laws", "ling", *target, "--out", str(out)]
    for flag, value in extra:
        argv += [flag, value]
    rc, _, err = run_cli(*argv)
    event("valid" if rc == 0 else "refused")
    if rc == 0:
        _check_valid(out)
    else:
        assert_one_line_error(rc, err)


COEFFICIENT_EDIT = st.one_of(
    st.none(),
    st.sampled_from([0, -1.0, 1e308, -1e308, 1e-308, "x", True, [1], {"a": 1}]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    law=st.sampled_from(["lr_opt", "batch_opt", "m_opt", "leverage"]),
    key_index=st.integers(0, 5),
    value=st.one_of(st.just("<delete>"), COEFFICIENT_EDIT),
)
def test_fuzz_laws_json_coefficient_edits(tmp_path_factory, law, key_index, value):
    tmp = tmp_path_factory.mktemp("laws")

    def edit(laws):
        co = laws[law]["coefficients"]
        key = sorted(co)[key_index % len(co)]
        if value == "<delete>":
            del co[key]
        else:
            co[key] = value

    out = tmp / "r.yaml"
    rc, _, err = run_cli("--laws", str(_laws_file(tmp, edit)), "--compute", "1e23", "--out", str(out))
    event("valid" if rc == 0 else "refused")
    if rc == 0:
        _check_valid(out)
        assert math.isfinite(RunConfig.from_yaml(out).optim.lr)
    else:
        assert_one_line_error(rc, err)
