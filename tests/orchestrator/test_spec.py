"""Sweep spec: validation (one-line errors naming the field), expansion into validated RunConfigs, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from micro_spec import MICRO_MODEL

from trainer.flops import flops_per_token
from windtunnel.cli import main as cli_main
from windtunnel.orchestrator.spec import SpecError, expand, load_spec_text, parse_spec

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "name": "t",
    "base": {
        "device": "cpu",
        "model": dict(MICRO_MODEL),
        "optim": {"lr": 3e-3, "batch_size": 8, "tokens": 20000},
    },
    "studies": [{"name": "g", "grid": {"optim.lr": [1e-3, 3e-3]}}],
}


def _yaml(d: dict) -> str:
    return yaml.safe_dump(d)


def _err(text: str) -> str:
    with pytest.raises(SpecError) as info:
        expand(load_spec_text(text))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _with(path: str, value: object) -> str:
    d = json.loads(json.dumps(BASE))
    node = d
    keys = path.split("/")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return _yaml(d)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("studies/0/grid", {"optim.lr": []}, "studies[0].grid.optim.lr: empty list"),
        ("studies/0/grid", {"optim.lrr": [1e-3]}, "studies[0].grid.optim.lrr: unknown field"),
        (
            "studies/0/grid",
            {"optim.lr": [1e-3, -1]},
            "studies[0].grid.optim.lr[1]: Input should be greater than 0",
        ),
        ("concurrency", "two", "concurrency: Input should be a valid integer"),
        ("bogus", 1, "bogus: unknown field"),
        (
            "studies/0",
            {"name": "l", "ladder": {"budgets": [1e9, -5], "models": [{"d_model": 32}]}},
            "studies[0].ladder.budgets[1]: must be a positive number",
        ),
        (
            "studies/0",
            {"name": "s", "search": {"budgets": [1e9], "num_samples": 0, "lr": {"low": 1e-3, "high": 1e-2}}},
            "studies[0].search.num_samples: Input should be greater than or equal to 1",
        ),
        (
            "studies/0",
            {"name": "s", "search": {"budgets": [1e9]}},
            "studies[0].search: give lr and/or batch_size",
        ),
        ("studies", [], "studies: empty list"),
    ],
)
def test_bad_input_names_the_field(path: str, value: object, expected: str) -> None:
    assert _err(_with(path, value)).startswith(expected)


def test_top_k_above_n_experts_in_base_and_in_grid() -> None:
    d = json.loads(json.dumps(BASE))
    d["base"]["model"]["moe"] = {"n_experts": 4, "top_k": 8, "d_expert": 16, "n_dense_layers": 0}
    assert _err(_yaml(d)) == "base.model.moe: top_k (8) must be <= n_experts (4)"
    d["base"]["model"]["moe"]["top_k"] = 2
    d["studies"][0]["grid"] = {"model.moe.top_k": [2, 9]}
    assert _err(_yaml(d)).startswith(
        "studies[0].grid.model.moe.top_k[1]: model.moe: top_k (9) must be <= n_experts"
    )


def test_yaml_syntax_error_is_one_line() -> None:
    assert _err("name: [x\nstudies: {").startswith("<spec>: not valid YAML at line")


def test_budget_below_one_batch_is_rejected() -> None:
    d = json.loads(json.dumps(BASE))
    d["studies"] = [{"name": "l", "ladder": {"budgets": [10.0], "models": [{"d_model": 32}]}}]
    assert "less than one batch" in _err(_yaml(d))


def test_grid_expansion_is_a_product_of_validated_configs() -> None:
    d = json.loads(json.dumps(BASE))
    d["studies"][0]["grid"] = {"optim.lr": [1e-3, 3e-3], "optim.batch_size": [4, 8]}
    d["seeds"] = [0, 1]
    plan = expand(parse_spec(d))
    assert len(plan.trials) == 8
    assert len({t.config_hash for t in plan.trials}) == 8
    assert {(t.run_cfg.optim.lr, t.run_cfg.optim.batch_size, t.run_cfg.seed) for t in plan.trials} == {
        (lr, b, s) for lr in (1e-3, 3e-3) for b in (4, 8) for s in (0, 1)
    }
    # the same config from two studies is one trial (identity = config hash)
    d["studies"].append({"name": "dup", "grid": {"optim.lr": [1e-3]}})
    assert len(expand(parse_spec(d)).trials) == 8


def test_ladder_tokens_follow_the_budget() -> None:
    d = json.loads(json.dumps(BASE))
    d["studies"] = [
        {
            "name": "iso",
            "ladder": {
                "budgets": [3e9, 1e10],
                "rule": {"n_sizes": 3, "d_model_min": 32, "d_model_max": 128, "aspect_ratio": 32},
            },
        }
    ]
    plan = expand(parse_spec(d))
    assert len(plan.trials) == 6
    widths = sorted({t.run_cfg.model.d_model for t in plan.trials})
    assert widths == [32, 64, 128]  # geometric spacing, ratio 2
    for t in plan.trials:
        m = flops_per_token(t.run_cfg.model)
        assert t.run_cfg.optim.tokens == int(t.budget / m)
        assert m * t.run_cfg.optim.tokens <= t.budget < m * (t.run_cfg.optim.tokens + 1)  # C = M * D


def test_search_groups_per_budget() -> None:
    d = json.loads(json.dumps(BASE))
    d["studies"] = [
        {"name": "s", "search": {"budgets": [3e9, 1e10], "lr": {"low": 1e-3, "high": 1e-2}, "num_samples": 3}}
    ]
    plan = expand(parse_spec(d))
    assert [g.budget for g in plan.searches] == [3e9, 1e10]
    assert plan.n_trials == 6
    assert plan.searches[1].base_cfg.optim.tokens > plan.searches[0].base_cfg.optim.tokens


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_yaml_validates_and_expands(path: Path) -> None:
    spec = load_spec_text(path.read_text(), str(path))
    plan = expand(spec)
    assert plan.n_trials > 0


def test_experiments_exist() -> None:
    names = {p.name for p in (ROOT / "experiments").glob("*.yaml")}
    for stem in ("quickstart", "hparam_law", "isoflop", "efficiency_leverage", "ling_windtunnel"):
        assert f"{stem}.yaml" in names
        assert f"{stem}_cpu.yaml" in names or stem == "quickstart"


# ---- hypothesis fuzz: malformed specs always give one line, never a traceback ------------------------------
_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.lists(st.integers(-2, 2), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_paths = st.sampled_from(
    [
        "name",
        "concurrency",
        "retries",
        "seeds",
        "resources",
        "base/model",
        "base/model/d_model",
        "base/optim/lr",
        "base/optim/batch_size",
        "studies",
        "studies/0",
        "studies/0/name",
        "studies/0/grid",
        "studies/0/grid/optim.lr",
        "data",
        "fit",
        "min_runs_to_fit",
        "tracking_uri",
        "base/model/moe",
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(st.tuples(_paths, _junk), min_size=1, max_size=3))
def test_fuzzed_specs_fail_with_one_line(mutations: list[tuple[str, object]]) -> None:
    d = json.loads(json.dumps(BASE))
    for path, value in mutations:
        node = d
        keys = path.split("/")
        try:
            for k in keys[:-1]:
                node = node[int(k)] if isinstance(node, list) else node[k]
            if isinstance(node, list):
                node[int(keys[-1])] = value
            elif isinstance(node, dict):
                node[keys[-1]] = value
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    try:
        text = yaml.safe_dump(d)
    except yaml.YAMLError:
        return
    try:
        expand(load_spec_text(text))
    except SpecError as err:
        assert "\n" not in str(err) and str(err)


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet="{}[]:,-\n \"'ab1.#&*!|>", max_size=40))
def test_fuzzed_yaml_text_fails_with_one_line(text: str) -> None:
    try:
        expand(load_spec_text("name: x\n" + text))
    except SpecError as err:
        assert "\n" not in str(err)


# ---- CLI ---------------------------------------------------------------------------------------------------
def test_cli_bad_spec_exits_2_with_one_line_and_starts_no_ray(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(_with("studies/0/grid", {"optim.lr": []}))
    code = (
        "import sys; from windtunnel.cli import main; rc = main(['run', sys.argv[1]]); "
        "print('RAY' if 'ray' in sys.modules else 'NORAY'); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(bad)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["windtunnel run: error: studies[0].grid.optim.lr: empty list"]
    assert proc.stdout.strip() == "NORAY"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "wt_runs").exists()


def test_cli_schema_and_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False and "studies" in schema["properties"]
    good = tmp_path / "good.yaml"
    good.write_text(_yaml(BASE))
    assert cli_main(["run", str(good), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 trials" in out


def test_grid_over_seed_replaces_the_seed_list() -> None:
    d = json.loads(json.dumps(BASE))
    d["studies"][0]["grid"] = {"seed": [0, 1, 2, 3]}
    d["seeds"] = [7]
    plan = expand(parse_spec(d))
    assert sorted(t.run_cfg.seed for t in plan.trials) == [0, 1, 2, 3]


def test_search_lr_grid_and_one_model_per_budget() -> None:
    d = json.loads(json.dumps(BASE))
    search = {
        "budgets": [3e9, 1e10],
        "lr": {"low": 1e-3, "high": 1.6e-2},
        "lr_grid": 5,
        "num_samples": 6,
        "models": [
            {"d_model": 32, "n_layers": 1},
            {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4},
        ],
    }
    d["studies"] = [{"name": "s", "search": search}]
    plan = expand(parse_spec(d))
    assert [g.search.lr_grid_values() for g in plan.searches][0] == [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
    assert [g.base_cfg.model.d_model for g in plan.searches] == [32, 64]
    for g in plan.searches:  # tokens = C / M of the budget's own model
        assert g.base_cfg.optim.tokens == int(g.budget / flops_per_token(g.base_cfg.model))
    bad = [
        ({**search, "lr_grid": 7}, "studies[0].search.lr_grid: 7 grid points > num_samples (6)"),
        ({**search, "models": search["models"][:1]}, "studies[0].search.models: give one model per budget"),
        (
            {"budgets": [1e9], "batch_size": [4, 8], "lr_grid": 2},
            "studies[0].search.lr_grid: needs an lr range",
        ),
        ({**search, "models": [{"d_model": 32}, {"d_modl": 64}]}, "studies[0].search.models: unknown field"),
    ]
    for s, expected in bad:
        d["studies"] = [{"name": "s", "search": s}]
        assert _err(_yaml(d)).startswith(expected), (_err(_yaml(d)), expected)


@pytest.mark.parametrize(
    "name", ["hparam_law_cpu", "isoflop_cpu", "efficiency_leverage_cpu", "ling_windtunnel_cpu"]
)
def test_cpu_sweeps_dry_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The CPU-sized sweeps validate and list their trials through the CLI, and stay CPU-sized: at most 1e13
    training FLOPs with the output head (``expand.trial_flops``, before pruning). Measured on 2 cores
    (2026-11-23, commit 4ca3b95): hparam_law_cpu 9.2e12 in 190-426 s, isoflop_cpu 2.6e12 in 247 s,
    ling_windtunnel_cpu 4.0e12 in 276 s.
    """
    from windtunnel.orchestrator.expand import trial_flops
    from windtunnel.orchestrator.spec import load_and_expand

    path = ROOT / "experiments" / f"{name}.yaml"
    assert cli_main(["run", str(path), "--dry-run"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert int(last.split()[0]) >= 5, last
    _, plan = load_and_expand(path)
    work = sum(trial_flops(t.run_cfg) for t in plan.trials)
    work += sum(trial_flops(g.base_cfg) * g.search.num_samples for g in plan.searches)
    assert work <= 1e13, f"{name}: {work:.3g} FLOPs"
