"""Acceptance tests of ``windtunnel recommend`` against the published Ling numbers and fitted laws."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.config import RunConfig
from trainer.dryrun import dry_run
from windtunnel.cli import main as cli_main
from windtunnel.laws import fit_laws, load_laws
from windtunnel.predict import choose_law
from windtunnel.recommend import Constraints, RecommendError, Target, recommend

MODELS = Path(__file__).resolve().parents[2] / "experiments" / "models"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(["recommend", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


# Ling 2.0 report: peak LR and batch (sequences of 4,096) of the three published models, all at D = 20T
LING_PUBLISHED = [
    ("ling-mini-2.0", 3.36e-4, 4400),
    ("ling-flash-2.0", 2.61e-4, 8352),
    ("ling-1t", 1.86e-4, 18144),
]


@pytest.mark.parametrize("model,lr,sequences", LING_PUBLISHED)
def test_fixed_model_reproduces_ling_lr_and_batch(capsys, model, lr, sequences):
    rc, out, _ = run_cli(
        capsys, "--laws", "ling", "--model", MODELS / f"{model}.yaml", "--tokens", "2e13", "--json"
    )
    assert rc == 0
    s = json.loads(out)
    assert s["peak_lr"] == pytest.approx(lr, rel=0.03)
    assert s["batch_tokens"] == pytest.approx(sequences * 4096, rel=0.10)
    assert s["batch_sequences"] * 4096 == s["batch_tokens"]
    assert s["tokens"] == 2e13
    assert s["compute"] == pytest.approx(s["flops_per_token"] * 2e13)
    for key in (
        "total_params",
        "active_params",
        "m_opt",
        "efficiency_leverage",
        "gpu_hours",
        "memory_per_gpu_gb",
    ):
        assert s[key] is not None and s[key] > 0, key
    assert s["predicted_loss"] is None and s["loss_law"] == "n/a"  # the ling set has no loss law
    assert s["memory_per_gpu_gb"] <= 0.9 * s["gpu_memory_gb"]


def test_ling_1t_compute_matches_published_budget():
    rec = recommend(load_laws("ling"), Target(model_path=MODELS / "ling-1t.yaml", tokens=2e13))
    assert rec.summary["compute"] == pytest.approx(6.4e24, rel=0.02)
    assert rec.summary["total_params"] == pytest.approx(1.0e12, rel=0.01)


def test_total_params_1t_rebuilds_ling_1t():
    """--total-params 1T with Ling's A and G lands on Ling-1T's own shape (80 x 8192, 256 experts)."""
    rec = recommend(load_laws("ling"), Target(total_params=1e12))
    arch = rec.summary["architecture"]
    assert (arch["n_layers"], arch["d_model"], arch["n_experts"], arch["top_k"]) == (80, 8192, 256, 8)
    law_m = load_laws("ling").predict("m_opt", rec.summary["compute"])[0]
    assert rec.summary["flops_per_token"] == pytest.approx(law_m, rel=1e-6)  # C inverts the m_opt law


def test_compute_target_6p4e24_ling_ratios(capsys, tmp_path):
    """At C = 6.4e24 the m_opt law wants M = 8.3e11 (2.6x Ling-1T's M): with Ling 2.0's A = 3.5 % and
    G = 8 that is ~2.7T total; with the laws' own MoE setting (A = 7.8 %, G = 2, docs/DESIGN.md "Published
    laws to reproduce") it is 0.5-2T."""
    out = tmp_path / "rec.yaml"
    rc, text, _ = run_cli(capsys, "--laws", "ling", "--compute", "6.4e24", "--out", out, "--json")
    assert rc == 0
    s = json.loads(text)
    assert abs(s["flops_per_token"] / s["m_opt"] - 1) < 0.10
    assert s["activation_ratio"] == pytest.approx(9 / 257) and s["granularity"] == pytest.approx(8)
    assert s["tokens"] * s["flops_per_token"] == pytest.approx(6.4e24, rel=1e-6)
    assert (
        out.exists() and Path(s["files"]["hf_config"]).exists() and Path(s["files"]["megatron_args"]).exists()
    )
    cfg = RunConfig.from_yaml(out)
    assert cfg.optim.lr == pytest.approx(s["peak_lr"]) and cfg.optim.batch_size == s["batch_sequences"]
    assert cfg.schedule.kind == "wsm" and cfg.schedule.checkpoint_interval == s["checkpoint_interval"]
    assert cfg.optim.batch_size % cfg.parallel.dp == 0
    assert cfg.parallel.tp * cfg.parallel.pp * cfg.parallel.dp == s["gpus"]
    hf = json.loads(Path(s["files"]["hf_config"]).read_text())
    assert hf["hidden_size"] == cfg.model.d_model and hf["num_experts"] == cfg.model.moe.n_experts


def test_compute_target_6p4e24_near_1t_dry_run(tmp_path):
    laws = load_laws("ling")
    rec = recommend(laws, Target(compute=6.4e24), Constraints(activation_ratio=(0.078,), granularity=(2.0,)))
    s = rec.summary
    assert abs(s["flops_per_token"] / s["m_opt"] - 1) < 0.10
    path = tmp_path / "rec.yaml"
    rec.run_config.to_yaml(path)
    report = dry_run(RunConfig.from_yaml(path))  # builds the whole model on the meta device
    assert report["params_match"]
    assert 0.5e12 <= report["total_params"] <= 2e12
    assert report["flops_per_token"] == pytest.approx(s["flops_per_token"])
    assert report["memory_per_gpu_gb"] == pytest.approx(s["memory_per_gpu_gb"])


def test_efficiency_leverage_prefers_better_granularity():
    """Among G in {2, 8, 12} the leverage law (optimal G near 12 at C ~ 1e22) picks G = 12, reports its EL."""
    laws = load_laws("ling")
    rec = recommend(laws, Target(compute=1e22), Constraints(granularity=(2.0, 8.0, 12.0)))
    assert rec.summary["granularity"] == pytest.approx(12, rel=0.05)
    el = {g: laws.predict("leverage", (9 / 257, g, 1e22))[0] for g in (2.0, 8.0, 12.0)}
    assert max(el, key=el.get) == 12.0
    assert rec.summary["efficiency_leverage"] == pytest.approx(el[12.0], rel=0.02)


def test_dense_target_uses_dense_allocation_law():
    laws = load_laws("ling")
    rec = recommend(laws, Target(compute=1e22), Constraints(activation_ratio=(1.0,)))
    assert rec.run_config.model.moe is None
    assert rec.summary["allocation_law"] == "m_opt_dense"
    assert rec.summary["flops_per_token"] == pytest.approx(laws.predict("m_opt_dense", 1e22)[0], rel=0.05)
    assert rec.summary["efficiency_leverage"] == 1.0


def test_infeasible_expert_constraints_name_conflict_and_alternative(capsys):
    rc, _, err = run_cli(capsys, "--laws", "ling", "--compute", "6.4e24", "--experts", "256", "--ep", "48")
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "conflicting: ep, n_experts" in err
    assert "nearest feasible alternative: ep=64 or n_experts=" in err


def test_infeasible_memory_names_gpu_alternative():
    with pytest.raises(RecommendError) as info:
        recommend(load_laws("ling"), Target(compute=6.4e24), Constraints(gpus=8))
    msg = str(info.value)
    assert "does not fit 8 GPUs of 80 GB" in msg and "conflicting: gpus and gpu_memory_gb" in msg
    assert "nearest feasible: " in msg and " GPUs of 80 GB (tp=" in msg


def test_infeasible_fixed_layout_suggests_free_layout():
    with pytest.raises(RecommendError) as info:
        recommend(
            load_laws("ling"),
            Target(model_path=MODELS / "ling-1t.yaml", tokens=2e13),
            Constraints(tp=1, pp=1, ep=1),
        )
    msg = str(info.value)
    assert "with tp=1, pp=1, ep=1" in msg and "nearest feasible: tp=" in msg


def test_infeasible_activation_ratio_names_expert_limits():
    with pytest.raises(RecommendError) as info:
        recommend(
            load_laws("ling"), Target(compute=1e22), Constraints(activation_ratio=(0.5,), max_experts=16)
        )
    msg = str(info.value)
    assert "conflicting: max_experts, n_shared_experts" in msg
    assert "nearest feasible alternative: max_experts=64 or n_shared_experts=2" in msg
    # and the alternative it names does work
    rec = recommend(
        load_laws("ling"),
        Target(compute=1e22),
        Constraints(activation_ratio=(0.5,), max_experts=16, n_shared_experts=(2,)),
    )
    assert rec.summary["activation_ratio"] == pytest.approx(0.5, rel=0.05)


def test_infeasible_pipeline_vs_gpu_count():
    with pytest.raises(RecommendError) as info:
        recommend(load_laws("ling"), Target(compute=1e22), Constraints(pp=7, gpus=1024))
    msg = str(info.value)
    assert "no layout with pp=7 exists on 1024 GPUs" in msg and "conflicting: gpus and pp=7" in msg
    assert "nearest feasible: tp=" in msg


def test_missing_laws_are_named(tmp_path, capsys):
    # the laws a file lacks come from ling (windtunnel.recommend.policy), and the output names them
    path = tmp_path / "laws.json"
    path.write_text(
        json.dumps({"laws": {"lr_opt": {"form": "lr = a*C^b", "coefficients": {"a": 1.0, "b": -0.15}}}})
    )
    rc, out, _ = run_cli(capsys, "--laws", path, "--compute", "1e21")
    assert rc == 0 and "note: laws from the sweep: lr_opt; from ling: batch_opt, m_opt" in out
    assert "peak LR          0.000708" in out  # the file's own lr_opt: 1.0 · (1e21)^-0.15


# ---- a law set fitted by windtunnel.laws.fit_laws on synthetic runs ------------------------------------
# Ground truth: L(N, D) = E + A/N^a + B/D^a with M = 6N, so N_opt = sqrt(C/6) and M_opt = sqrt(6C);
# lr_opt = 2·C^-0.15, batch_opt = 0.05·C^0.36; off-optimum LR/batch raise the loss quadratically in log.
E_, A_, B_, ALPHA = 1.8, 400.0, 400.0, 0.34


def synthetic_runs(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for budget in np.logspace(15, 17, 5):
        n_opt = math.sqrt(budget / 6)
        lr_star, b_star = 2.0 * budget**-0.15, 0.05 * budget**0.36

        def row(n, lr, bt, penalty=0.0, budget=budget):
            d = budget / (6 * n)
            loss = (E_ + A_ / n**ALPHA + B_ / d**ALPHA) * (1 + penalty)
            return dict(params=n, m=6 * n, tokens=d, compute=budget, lr=lr, batch_tokens=bt, loss=loss)

        rows += [row(n_opt * f, lr_star, b_star) for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
        for lf in (0.25, 0.5, 1, 2, 4):
            for bf in (0.25, 0.5, 1, 2, 4):
                if lf != 1 or bf != 1:
                    pen = 0.004 * math.log(lf) ** 2 + 0.002 * math.log(bf) ** 2
                    rows.append(row(n_opt, lr_star * lf, b_star * bf, pen))
    df = pd.DataFrame(rows)
    df["loss"] *= 1 + 1e-4 * rng.standard_normal(len(df))
    df["run_id"] = [f"r{i}" for i in range(len(df))]
    df["family"], df["sweep"], df["status"] = "dense", "synthetic", "finished"
    df["n_total"] = df["n_active"] = df["params"]
    return df


@pytest.fixture(scope="module")
def fitted_laws_path(tmp_path_factory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lawset = fit_laws(synthetic_runs(), bootstrap=10, seed=0)
    assert {"lr_opt", "batch_opt", "m_opt", "parametric"} <= set(lawset.laws), lawset.errors
    return lawset.to_json(tmp_path_factory.mktemp("laws") / "laws.json")


def test_recommend_from_fitted_laws(capsys, tmp_path, fitted_laws_path):
    target_c = 1e19
    out = tmp_path / "fit.yaml"
    rc, text, _ = run_cli(
        capsys,
        *("--laws", fitted_laws_path, "--compute", target_c, "--activation-ratio", "1"),
        *("--head-dim", "64", "--seq-len", "1024", "--vocab", "32000", "--gpus", "8", "--out", out, "--json"),
    )
    assert rc == 0
    s = json.loads(text)
    laws = load_laws(fitted_laws_path)
    # the recommendation follows the fitted laws ...
    assert s["peak_lr"] == pytest.approx(laws.predict("lr_opt", target_c)[0])
    assert s["batch_tokens"] == pytest.approx(laws.predict("batch_opt", target_c)[0], rel=0.05)
    assert abs(s["flops_per_token"] / s["m_opt"] - 1) < 0.10
    # ... which recover the synthetic truth when extrapolated 100x beyond the sweep
    assert s["peak_lr"] == pytest.approx(2.0 * target_c**-0.15, rel=0.05)
    assert s["m_opt"] == pytest.approx(math.sqrt(6 * target_c), rel=0.05)
    # the fitted set has both loss laws: the one `windtunnel predict` chooses predicts, with an interval
    assert s["loss_law"] == choose_law(laws)[0]
    assert s["predicted_loss_lo"] <= s["predicted_loss"] <= s["predicted_loss_hi"]
    assert s["efficiency_leverage"] == 1.0  # dense
    cfg = RunConfig.from_yaml(out)
    assert cfg.model.moe is None and cfg.model.head_dim == 64 and cfg.model.seq_len == 1024
