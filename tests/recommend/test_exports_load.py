"""The exports load where they go: Megatron-Core's own TransformerConfig, transformers' AutoConfig, a shell.

Megatron-Core (pip ``megatron-core``, CPU import) and transformers are in the ``dev`` extra; the configs
built here are the ones Megatron-LM's ``pretrain_gpt.py`` and ``AutoConfig.from_pretrained`` would build.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from megatron_config import check_world, read_args, transformer_config
from transformers import AutoConfig

from trainer.config import RunConfig
from trainer.dryrun import dry_run
from windtunnel.laws import load_laws
from windtunnel.recommend import Constraints, Target, recommend
from windtunnel.recommend.export import megatron_argv, write_exports

REPO = Path(__file__).resolve().parents[2]
LING_MODELS = ["ling-mini-2.0", "ling-flash-2.0", "ling-1t"]
TARGETS = [
    *(Target(compute=c) for c in (1e22, 1e23, 1e24, 6.4e24, 1e25)),
    Target(total_params=1e11),
    Target(total_params=1e12),
]


def assert_megatron_accepts(cfg: RunConfig, args_file: Path) -> None:
    argv = read_args(args_file)
    assert argv == megatron_argv(cfg), "the shell reading of the args file differs from the arguments"
    tc = transformer_config(argv)
    par = cfg.parallel
    check_world(argv, par.tp * par.pp * par.dp, cfg.model.vocab_size)
    m = cfg.model
    assert (tc.num_layers, tc.hidden_size, tc.num_attention_heads) == (m.n_layers, m.d_model, m.n_heads)
    assert (tc.num_query_groups, tc.kv_channels) == (m.n_kv_heads, m.head_dim_)
    assert tc.tensor_model_parallel_size == par.tp and tc.pipeline_model_parallel_size == par.pp
    if m.moe is not None:
        assert tc.num_moe_experts == m.moe.n_experts and tc.expert_model_parallel_size == par.ep
        assert tc.moe_layer_freq == [0] * m.moe.n_dense_layers + [1] * (m.n_layers - m.moe.n_dense_layers)


def assert_transformers_loads(cfg: RunConfig, hf_dir: Path) -> None:
    hf = AutoConfig.from_pretrained(hf_dir, trust_remote_code=True)
    m = cfg.model
    assert type(hf).__name__ == "BailingMoeV2Config" and hf.model_type == "bailing_moe_v2"
    assert (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads) == (
        m.n_layers,
        m.d_model,
        m.n_heads,
    )
    assert (hf.num_key_value_heads, hf.head_dim, hf.vocab_size) == (m.n_kv_heads, m.head_dim_, m.vocab_size)
    if m.moe is not None:
        assert (hf.num_experts, hf.num_experts_per_tok) == (m.moe.n_experts, m.moe.top_k)
        assert (hf.moe_intermediate_size, hf.first_k_dense_replace) == (m.moe.d_expert, m.moe.n_dense_layers)


@pytest.mark.parametrize("name", LING_MODELS)
def test_ling_models_load_in_megatron_and_transformers(name, tmp_path):
    cfg = RunConfig.from_yaml(REPO / "experiments" / "models" / f"{name}.yaml")
    paths = write_exports(cfg, tmp_path / f"{name}.yaml")
    assert_megatron_accepts(cfg, paths["megatron_args"])
    assert_transformers_loads(cfg, paths["hf_dir"])


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t.kind}-{t.compute or t.total_params:.0e}")
def test_recommendations_load_in_megatron_and_transformers(target, tmp_path):
    rec = recommend(load_laws("ling"), target, Constraints())
    paths = write_exports(rec.run_config, tmp_path / "r.yaml")
    cfg = RunConfig.from_yaml(paths["config"])
    assert_megatron_accepts(cfg, paths["megatron_args"])
    assert_transformers_loads(cfg, paths["hf_dir"])
    assert dry_run(cfg)["total_params"] == rec.candidate.counts.total


def test_megatron_rejects_what_the_layout_search_refuses():
    """The check that can fail: 11 query groups on tp = 2 is what Megatron-Core refuses, and so do we."""
    from windtunnel.recommend.layout import megatron_layout_errors

    cfg = RunConfig.from_yaml(REPO / "experiments" / "models" / "ling-mini-2.0.yaml")
    bad = cfg.model.model_copy(update={"n_heads": 88, "n_kv_heads": 11, "d_model": 88 * 128})
    assert any("KV heads (11)" in e for e in megatron_layout_errors(bad, 2, 1, 1, 8))
    argv = megatron_argv(
        cfg.model_copy(update={"model": bad, "parallel": cfg.parallel.model_copy(update={"tp": 2})})
    )
    with pytest.raises(ValueError, match="num_query_groups"):
        transformer_config(argv)


def test_args_file_reads_verbatim_in_bash_and_xargs(tmp_path):
    cfg = RunConfig.from_yaml(REPO / "experiments" / "models" / "ling-1t.yaml")
    path = write_exports(cfg, tmp_path / "r.yaml")["megatron_args"]
    lines = path.read_text().splitlines()
    assert len(lines) == len(megatron_argv(cfg)) and any(line.startswith("'[0,0,0,0,1") for line in lines)
    bash = f'eval "args=($(cat {path}))"; printf "%s\\n" "${{args[@]}}"'
    got = subprocess.run(["bash", "-c", bash], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert got.stdout.splitlines() == megatron_argv(cfg)
    got = subprocess.run(
        ["xargs", "-a", str(path), "printf", "%s\\n"], capture_output=True, text=True, check=True
    )
    assert got.stdout.splitlines() == megatron_argv(cfg)


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments" / "results").glob("*/recommended.yaml")), ids=str
)
def test_committed_recommendations_load(path):
    cfg = RunConfig.from_yaml(path)
    assert_megatron_accepts(cfg, path.with_suffix(".megatron.args"))
    assert_transformers_loads(cfg, path.with_suffix(".hf"))
    assert megatron_argv(cfg) == read_args(path.with_suffix(".megatron.args")), "regenerate the exports"
