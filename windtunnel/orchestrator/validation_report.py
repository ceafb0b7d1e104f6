"""The validation study's report: predicted vs observed, the figure, ``summary.json``.

``summary.json`` keys: ``predicted_loss``, ``pi95`` [lo, hi], ``law``, ``observed_loss`` (mean over the
target's finished seeds), ``observed_losses``, ``error`` (observed - predicted), ``inside_pi95``,
``extrapolation_factor`` (C_target / the ladder's largest run's C), ``ladder_compute`` (sum of C over the
ladder's finished runs), ``ladder_share`` (ladder_compute / target_compute), ``target_compute``,
``seed_noise_std`` (sample standard deviation of the target's final loss over seeds, ddof = 1),
``nonembedding_share`` of the target and the ladder's largest model, ``target_epochs`` (training tokens /
the train split's tokens), ``alternatives`` (the other loss law's prediction), ``command``, ``date``,
``commit``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from windtunnel.orchestrator.spec_target import TARGET_STUDY
from windtunnel.runtable import point_rows, sweep_compute


def _command() -> str:
    if Path(sys.argv[0]).name in ("windtunnel", "__main__.py"):
        return shlex.join(["windtunnel", *sys.argv[1:]])
    return shlex.join(sys.argv)


@functools.cache
def source_commit() -> str:
    """The repository's HEAD, read once per process: the driver reads it when the sweep starts, so a
    study's summary names the code it ran, not a commit made while it was running."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def nonembedding_share(model_cfg: Any) -> float:
    """Non-embedding active parameters / active parameters (embeddings and output head excluded)."""
    from trainer.flops import count_params

    counts = count_params(model_cfg)
    return counts.active_nonembed / counts.active


def target_epochs(cfg: Any) -> float:
    """Training tokens / tokens in the train split: below 1 no token need be seen twice."""
    from trainer.data import prepare_data

    return cfg.optim.tokens / prepare_data(cfg).n_train_tokens


def build_summary(df: Any, pred: Any, cfgs: list[Any], c_target: float) -> dict[str, Any]:
    hashes = {c.config_hash() for c in cfgs}
    target = df[(df["study"] == TARGET_STUDY) & df["config_hash"].isin(hashes) & ~point_rows(df)]
    fin = target[target["status"] == "finished"]
    losses = [float(x) for x in fin["loss"]]
    ladder = df[(df["study"] != TARGET_STUDY) & (df["status"] == "finished")]
    ladder_c = sweep_compute(ladder) if len(ladder) else math.nan  # a parent's compute once
    ladder_max = float(ladder["compute"].max()) if len(ladder) else math.nan
    observed = float(np.mean(losses)) if losses else math.nan
    lo, hi = (float(x) for x in pred.pi95)
    out: dict[str, Any] = {
        "predicted_loss": pred.predicted,
        "pi95": [lo, hi],
        "law": pred.law,
        "observed_loss": observed,
        "observed_losses": losses,
        "n_target_runs": len(cfgs),
        "target_statuses": sorted(map(str, target["status"])),
        "error": observed - pred.predicted,
        "inside_pi95": bool(lo <= observed <= hi) if losses else None,
        "extrapolation_factor": c_target / ladder_max,
        "ladder_compute": ladder_c,
        "ladder_max_compute": ladder_max,
        "ladder_share": ladder_c / c_target,
        "target_compute": c_target,
        "seed_noise_std": float(np.std(losses, ddof=1)) if len(losses) >= 2 else None,
        "target_model": {k: getattr(cfgs[0].model, k) for k in ("d_model", "n_layers", "n_heads", "d_ffn")},
        "target_tokens": cfgs[0].optim.tokens,
        "nonembedding_share": {"target": nonembedding_share(cfgs[0].model)},
        "prediction": pred.to_dict(),
        "alternatives": pred.alternatives,
        "command": _command(),
        "date": _dt.datetime.now(_dt.UTC).date().isoformat(),
        "commit": source_commit(),
    }
    if len(ladder):
        biggest = ladder.loc[ladder["params"].idxmax()]
        share = float(biggest["params"] / (biggest["n_active"])) if biggest["n_active"] > 0 else math.nan
        out["nonembedding_share"]["ladder_largest"] = share
    return out


def table_lines(s: dict[str, Any]) -> list[str]:
    lo, hi = s["pi95"]
    obs = ", ".join(f"{x:.4f}" for x in s["observed_losses"]) or "none finished"
    noise = s["seed_noise_std"]
    inside = "inside" if s["inside_pi95"] else "OUTSIDE"
    lines = [
        "validation: predicted vs observed final validation loss of the target run",
        f"  law            {s['law']}",
        f"  predicted      {s['predicted_loss']:.4f}   95% interval [{lo:.4f}, {hi:.4f}]",
        f"  observed       {s['observed_loss']:.4f}   (seeds: {obs})",
        f"  error          {s['error']:+.4f} nats, {inside} the interval",
        f"  seed noise     {'n/a (one seed)' if noise is None else f'{noise:.4f} nats (std over seeds)'}",
        f"  extrapolation  {s['extrapolation_factor']:.1f}x the ladder's largest run "
        f"(C_target {s['target_compute']:.3g} FLOPs)",
        f"  ladder compute {s['ladder_compute']:.3g} FLOPs = {s['ladder_share']:.1%} of one target run",
    ]
    for name, alt in s["alternatives"].items():
        if "predicted" in alt:
            a_lo, a_hi = alt["pi95"]
            lines.append(f"  {name:<14} would predict {alt['predicted']:.4f} [{a_lo:.4f}, {a_hi:.4f}]")
    return lines


def _law_curve(lawset: Any, law: str, grid_C: np.ndarray) -> list[float]:
    """The loss ``law`` predicts along the compute-optimal path (the parametric law at the allocation laws'
    (N, D) of each C; the frontier law at C itself)."""
    from windtunnel.errors import PredictionError
    from windtunnel.predict import point_from_compute

    curve = []
    for c in grid_C:
        try:
            x: Any = float(c)
            if law == "parametric":  # the allocation laws' (N, D) at C; the frontier needs C alone
                point, _ = point_from_compute(lawset, float(c))
                x = (point["params"], point["tokens"])
            curve.append(float(lawset.predict(law, x)[0]))
        except (PredictionError, KeyError):
            curve.append(math.nan)
    return curve


def plot_validation(df: Any, lawset: Any, s: dict[str, Any], path: Path) -> Path:
    """Ladder runs (C, loss), every loss law along the compute-optimal path, each law's prediction with its
    95 % interval at C_target (the chosen law's solid, the others dashed and set a little to the right), and
    the observed target runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ladder = df[(df["study"] != TARGET_STUDY) & (df["status"] == "finished")]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(ladder["compute"], ladder["loss"], s=14, c="0.55", label="ladder runs")
    c_lo, c_t = float(ladder["compute"].min()), s["target_compute"]
    grid_C = np.geomspace(c_lo, c_t * 1.3, 60)
    laws = [(s["law"], s["predicted_loss"], s["pi95"], "chosen")]
    laws += [
        (n, a["predicted"], a["pi95"], "other") for n, a in s["alternatives"].items() if "predicted" in a
    ]
    for k, (name, p, (lo, hi), role) in enumerate(laws):
        color, style = ("C0", "-") if role == "chosen" else (f"C{k + 1}", "--")
        ax.plot(grid_C, _law_curve(lawset, name, grid_C), style, c=color, label=f"{name} law ({role})")
        x = c_t * 1.12**k
        face = color if role == "chosen" else "w"
        label = f"{name} prediction {p:.3f}, 95% PI"
        ax.errorbar([x], [p], yerr=[[p - lo], [hi - p]], fmt="o", c=color, mfc=face, capsize=4, label=label)
    if s["observed_losses"]:
        ax.scatter(
            [c_t] * len(s["observed_losses"]),
            s["observed_losses"],
            marker="x",
            c="C3",
            s=40,
            label="observed target (per seed)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("compute C = M·D (FLOPs)")
    ax.set_ylabel("final validation loss (nats)")
    ax.set_title(f"prediction {s['extrapolation_factor']:.0f}x beyond the ladder")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_target_curves(client: Any, df: Any, cfgs: list[Any], s: dict[str, Any], path: Path) -> Path | None:
    """Validation loss against tokens for every target seed, with the prediction and its 95 % interval at
    the end: where seeds part during training, the spread of their final losses is training dynamics
    (a plateau one seed leaves early), not evaluation noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed_of = {c.config_hash(): c.seed for c in cfgs}
    target = df[(df["study"] == TARGET_STUDY) & df["config_hash"].isin(seed_of)]
    if not len(target):
        return None
    tokens_per_step = cfgs[0].optim.batch_size * cfgs[0].model.seq_len
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for run_id, h in zip(target["run_id"], target["config_hash"], strict=True):
        hist = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_loss"))
        if hist:
            steps, vals = zip(*hist, strict=True)
            ax.plot(np.array(steps) * tokens_per_step, vals, "-", lw=1.2, label=f"seed {seed_of[h]}")
    lo, hi = s["pi95"]
    end = cfgs[0].optim.tokens
    ax.errorbar(
        [end],
        [s["predicted_loss"]],
        yerr=[[s["predicted_loss"] - lo], [hi - s["predicted_loss"]]],
        fmt="o",
        c="k",
        capsize=4,
        label="prediction, 95% PI",
    )
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats)")
    ax.set_title("target runs during training, one line per seed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(
    spec: Any,
    df: Any,
    lawset: Any,
    pred: Any,
    cfgs: list[Any],
    c_target: float,
    tracking_uri: str,
    parent_run_id: str,
    sweep_dir: Path,
    summary: list[str],
) -> dict[str, Any]:
    from mlflow import MlflowClient

    from windtunnel.orchestrator.tracking import log_artifact

    s = build_summary(df, pred, cfgs, c_target)
    s["target_epochs"] = target_epochs(cfgs[0])
    if s["extrapolation_factor"] < spec.target.min_extrapolation:
        s["warning"] = (
            f"extrapolation {s['extrapolation_factor']:.1f}x < target.min_extrapolation "
            f"{spec.target.min_extrapolation:g}x"
        )
    out_dir = sweep_dir / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "summary.json"]
    paths[0].write_text(json.dumps(s, indent=1, default=float) + "\n")
    if len(df[(df["study"] != TARGET_STUDY) & (df["status"] == "finished")]):
        paths.append(plot_validation(df, lawset, s, out_dir / "prediction_vs_observed.png"))
    client = MlflowClient(tracking_uri)
    curves = plot_target_curves(client, df, cfgs, s, out_dir / "target_curves.png")
    paths += [curves] if curves is not None else []
    for path in paths:
        log_artifact(client, parent_run_id, path, "validation")
    summary.extend(table_lines(s))
    summary.append(f"  target sees its training tokens {s['target_epochs']:.2f} times over (epochs)")
    if "warning" in s:
        summary.append(f"  warning: {s['warning']}")
    summary.append(f"validation summary: {paths[0]}")
    return s
