"""Importers: the published data sets in shared/anchors → the run table (one function per data set).

Each importer fills what its source gives (see that folder's SOURCE.md) and says which laws its columns
allow in ``ANCHOR_LAWS``. ``anchors_dir()`` finds the data: ``$WINDTUNNEL_ANCHORS``, else
``<repo>/../shared/anchors``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from windtunnel.runtable import validate_run_table

# data set -> laws its columns allow (and that fit without error on it)
ANCHOR_LAWS: dict[str, list[str]] = {
    # N, C (→ D = C/6N), loss: the parametric law (Epoch's refit) and the loss frontier
    "epoch_chinchilla": ["parametric", "frontier"],
    # N, D, loss per run; lr/batch fixed per size (tuned at 20 tokens/param only): parametric, frontier
    "gadre": ["parametric", "frontier"],
    # IsoFLOP points (N, D, loss at 12 budgets): allocation laws, frontier and parametric
    "porian": ["params_opt", "m_opt", "d_opt", "frontier", "parametric"],
    # lr × batch grids at 17 dense / 16 MoE (N, D) cells: the hyper-parameter laws, in C and StepFun's form
    "steplaw_dense": ["lr_opt", "batch_opt", "steplaw_lr", "steplaw_batch"],
    "steplaw_moe": ["lr_opt", "batch_opt", "steplaw_lr", "steplaw_batch"],
    # 5 sizes × 5 token multipliers (3B's N derived from its architecture; 7B/13B targets are rows too)
    "olmo_ladder": ["parametric"],
    # Muennighoff et al. data-constrained runs (hitchhiker/ColPret): N, D, loss → parametric
    "datablations": ["parametric"],
}


def anchors_dir() -> Path:
    """Where the anchor data sets are: $WINDTUNNEL_ANCHORS or <repo root>/../shared/anchors."""
    env = os.environ.get("WINDTUNNEL_ANCHORS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "anchors"


def load_epoch_chinchilla(drop_outliers: bool = True, root: Path | None = None) -> pd.DataFrame:
    """Epoch AI's digitised Chinchilla points; ``drop_outliers`` drops the 5 highest losses as Epoch did.

    params = Model Size (Hoffmann's N, embeddings included), compute = Training FLOP, tokens = C / (6·N).
    """
    d = pd.read_csv((root or anchors_dir()) / "epoch_chinchilla_replication" / "svg_extracted_data.csv")
    if drop_outliers:
        d = d[d["loss"] < sorted(d["loss"])[-5]]
    N, C = d["Model Size"].to_numpy(float), d["Training FLOP"].to_numpy(float)
    runs = pd.DataFrame(
        {
            "run_id": [f"chinchilla-{i}" for i in d.index],
            "sweep": "epoch_chinchilla",
            "family": "dense",
            "params": N,
            "n_total": N,
            "tokens": C / (6.0 * N),
            "compute": C,
            "loss": d["loss"].to_numpy(float),
        }
    )
    return validate_run_table(runs)


def load_gadre(
    dataset: str | None = "c4_original", loss_column: str = "loss_c4_val", root: Path | None = None
):
    """Gadre et al. over-training runs in the paper's own units: params = n_total = params_N, the total
    parameter count the authors fit their laws in and form C = 6·N·D with (gadre2024_overtraining/SOURCE.md),
    so compute = flops_6ND = 6·params·tokens holds row by row."""
    d = pd.read_csv((root or anchors_dir()) / "gadre2024_overtraining" / "runs_flat.csv")
    if dataset is not None:
        d = d[d["dataset_name"] == dataset]
    runs = pd.DataFrame(
        {
            "run_id": d["name"],
            "sweep": d["dataset_name"],
            "family": "dense",
            "params": d["params_N"].astype(float),
            "n_total": d["params_N"].astype(float),
            "tokens": d["tokens_D"].astype(float),
            "compute": d["flops_6ND"].astype(float),
            "lr": d["lr"].astype(float),
            "batch_tokens": d["global_bs_seqs"].astype(float) * 2048,
            "loss": d[loss_column].astype(float),
        }
    )
    return validate_run_table(runs)


PORIAN_DEFAULT = {
    "dataset": "rw",
    "hparams": "tuned",
    "warmup": "short",
    "decay": "const",
    "param_count": "standard",
}


def load_porian(config: dict[str, str] | None = None, root: Path | None = None) -> pd.DataFrame:
    """Porian et al. IsoFLOP points for one configuration (default: RefinedWeb, tuned, short warmup,
    constant LR,
    standard parameter count — the paper's "resolved" setting). params = n, tokens = t, compute = flops,
    m = flops / t (the FLOPs per token the budget implies)."""
    d = pd.read_csv((root or anchors_dir()) / "porian2024" / "isoflop_points.csv")
    for key, value in (config or PORIAN_DEFAULT).items():
        d = d[d[key] == value]
    if d.empty:
        raise ValueError(f"no Porian IsoFLOP points for config {config}")
    runs = pd.DataFrame(
        {
            "run_id": [f"porian-{i}" for i in d.index],
            "sweep": d["label"],
            "family": "dense",
            "params": d["n"].astype(float),
            "tokens": d["t"].astype(float),
            "compute": d["flops"].astype(float),
            "m": (d["flops"] / d["t"]).astype(float),
            "loss": d["loss"].astype(float),
        }
    )
    return validate_run_table(runs)


def load_steplaw(kind: str = "dense", root: Path | None = None) -> pd.DataFrame:
    """StepFun step-law LR × batch runs. Dense: params = N (non-embedding), compute = 6·N·D, seq 2048.
    MoE: params = Na (activated), n_total = N, m = M (FLOPs/token as released), compute = M·D.
    loss = "smooth loss" (what the authors optimise); batch_tokens = bs · seq_len."""
    base = (root or anchors_dir()) / "steplaw_predictable_scale"
    if kind == "dense":
        d = pd.read_csv(base / "dense_lr_bs_loss.csv")
        N, D = d["N"].astype(float), d["D"].astype(float)
        runs = pd.DataFrame(
            {
                "run_id": d["exp_name"],
                "params": N,
                "n_total": N,
                "n_active": N,
                "tokens": D,
                "compute": 6 * N * D,
                "batch_tokens": d["bs"].astype(float) * 2048,
            }
        )
    elif kind == "moe":
        d = pd.read_csv(base / "moe_lr_bs_loss.csv")
        D = d["D"].astype(float)
        runs = pd.DataFrame(
            {
                "run_id": d["exp_name"],
                "params": d["Na"].astype(float),
                "n_total": d["N"].astype(float),
                "n_active": d["Na"].astype(float),
                "m": d["M"].astype(float),
                "tokens": D,
                "compute": d["M"].astype(float) * D,
                "batch_tokens": d["bs"].astype(float) * d["seq_len"].astype(float),
            }
        )
    else:
        raise ValueError(f"kind must be 'dense' or 'moe', got {kind!r}")
    runs["sweep"] = f"steplaw_{kind}"
    runs["family"] = "dense" if kind == "dense" else "moe"
    runs["lr"] = d["lr"].astype(float)
    runs["loss"] = d["smooth loss"].astype(float)
    return validate_run_table(runs)


# OLMo ladder architectures not in configs/final.json: the 3B rung as published in the same repository
# (allenai/OLMo-ladder, src/ladder/ladder.py MODEL_CONFIGS: "3B" = the 190M config with d_model 3328,
# 16 heads, 16 layers, mlp_ratio 8; vocabulary padded to 100,352; untied embeddings).
OLMO_LADDER_EXTRA_ARCH = {"3B": {"d_model": 3328, "n_layers": 16}}
OLMO_EMBEDDING_SIZE = 100_352


def olmo_ladder_params(d_model: int, n_layers: int, embedding_size: int = OLMO_EMBEDDING_SIZE) -> int:
    """N as the OLMo ladder counts it (the ``n`` of configs/final.json) for a rung with mlp_ratio 8:

        N = V·d + L·(16·d² + 4·d) + d,

    i.e. one V×d embedding matrix, per layer 4·d² attention (q, k, v, o; n_kv = n_heads, no biases) +
    12·d² SwiGLU (d→8d fused gate/up, 4d→d down) + 4·d RMSNorm weights (attention and FFN norms, q- and
    k-norm), and the final norm. It reproduces final.json's N of the 190M, 370M, 760M and 1.3B rungs
    exactly (checked in tests/laws/test_anchors.py); for 3B (d 3328, 16 layers) it gives 3,169,537,280."""
    return embedding_size * d_model + n_layers * (16 * d_model * d_model + 4 * d_model) + d_model


def load_olmo_ladder(root: Path | None = None, loss_column: str = "eval/c4_en-validation/CrossEntropyLoss"):
    """OLMo ladder final points: loss = mean of the last 5 evaluations (as the repo does), tokens = last
    throughput/total_tokens (for the 13B target, whose log lacks it: last step × its constant batch size),
    params = N from configs/final.json, m = its "flops" per token, compute = m·D.

    The 3B rung is not in final.json: its N comes from its published architecture (``olmo_ladder_params``,
    ``OLMO_LADDER_EXTRA_ARCH``) and its m from the run's own log, m = throughput/total_training_Gflops·1e9
    / throughput/total_tokens (this ratio equals final.json's "flops" for every rung that has one)."""
    base = (root or anchors_dir()) / "olmo_ladder_bhagia2024"
    cfg = json.loads((base / "configs" / "final.json").read_text())
    sizes = {k: (float(v["n"]), float(v["flops"])) for k, v in cfg.items()}
    sizes["1B"] = sizes.get("1.3B", (np.nan, np.nan))
    for size, arch in OLMO_LADDER_EXTRA_ARCH.items():
        sizes.setdefault(size, (float(olmo_ladder_params(**arch)), np.nan))
    rows = []
    for path in sorted((base / "ladder-runs").glob("*.csv")):
        stem = path.stem
        if stem.startswith("peteish7_eval_anneal"):
            size, label = "7B-4T", stem
        elif stem.startswith("peteish13_eval_final"):
            size, label = "13B-5T", stem
        elif "xC" in stem and not stem.endswith("rerun"):
            size, label = stem.split("-")[0], stem
        else:
            continue
        d = pd.read_csv(path)
        d = _with_token_count(d)
        if "throughput/total_tokens" not in d.columns or loss_column not in d.columns:
            continue
        N, m = sizes.get(size, (np.nan, np.nan))
        if not np.isfinite(m) and "throughput/total_training_Gflops" in d.columns:
            flops = d[["throughput/total_tokens", "throughput/total_training_Gflops"]].dropna()
            if not flops.empty:
                last = flops.iloc[-1]
                m = (
                    float(last["throughput/total_training_Gflops"])
                    * 1e9
                    / float(last["throughput/total_tokens"])
                )
        d = d[["throughput/total_tokens", loss_column]].dropna()
        if d.empty:
            continue
        D = float(d["throughput/total_tokens"].iloc[-1])
        rows.append(
            {
                "run_id": label,
                "sweep": "olmo_ladder",
                "family": "dense",
                "params": N,
                "n_total": N,
                "m": m,
                "tokens": D,
                "compute": m * D,
                "loss": float(d[loss_column].tail(5).mean()),
                "status": "finished" if np.isfinite(N) else "no_params",
            }
        )
    return validate_run_table(pd.DataFrame(rows))


def _with_token_count(log: pd.DataFrame) -> pd.DataFrame:
    """A log without ``throughput/total_tokens`` (the 13B target's) gets D = _step · batch_size_in_tokens
    where the batch size is one constant over the log (13B: 596,057 steps × 8,388,608 = 5.0T tokens)."""
    if "throughput/total_tokens" in log.columns or not {"_step", "batch_size_in_tokens"} <= set(log.columns):
        return log
    bs = log["batch_size_in_tokens"].dropna().unique()
    if bs.size != 1:
        return log
    tokens = (log["_step"].astype(float) * float(bs[0])).rename("throughput/total_tokens")
    return pd.concat([log, tokens], axis=1)


def load_datablations(root: Path | None = None) -> pd.DataFrame:
    """Muennighoff et al. data-constrained final losses (ColPret, parsed names): params = N, tokens = D."""
    d = pd.read_csv(
        (root or anchors_dir()) / "hitchhiker_colpret" / "DERIVED_datablations_contour_parsed.csv"
    )
    runs = pd.DataFrame(
        {
            "run_id": d["name"],
            "sweep": "datablations",
            "family": "dense",
            "params": d["N_params"].astype(float),
            "tokens": d["D_total_tokens"].astype(float),
            "loss": d["loss"].astype(float),
        }
    )
    return validate_run_table(runs)


LOADERS = {
    "epoch_chinchilla": load_epoch_chinchilla,
    "gadre": load_gadre,
    "porian": load_porian,
    "steplaw_dense": lambda root=None: load_steplaw("dense", root=root),
    "steplaw_moe": lambda root=None: load_steplaw("moe", root=root),
    "olmo_ladder": load_olmo_ladder,
    "datablations": load_datablations,
}
