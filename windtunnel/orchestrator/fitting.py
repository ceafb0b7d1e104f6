"""End of a sweep: rebuild the run table from MLflow, fit laws, log laws.json + figures to the parent run.

The law engine (``windtunnel.laws.fit_laws``), its figures (``windtunnel.laws.figures.plot_laws``) and the
recommender (``windtunnel.recommend``) are imported lazily and used when present. Runs that are not
``finished`` (diverged, pruned, failed) are excluded from the fits; the summary names them and why.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

RECOMMEND_COMPUTE = 6.4e24  # Ling-1T's training compute: the default target of the end-of-sweep summary


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def law_lines(lawset: Any) -> list[str]:
    """``lr_opt: a=1.2 [0.9, 1.6], b=-0.15 [...] (n=12; backtest rel_err=0.03)`` per law, and errors."""
    lines = []
    for name, law in lawset.laws.items():
        parts = []
        for k, v in law.coefficients.items():
            ci = law.ci95.get(k)
            ci_txt = f" [{_fmt(float(ci[0]))}, {_fmt(float(ci[1]))}]" if ci is not None else ""
            parts.append(f"{k}={_fmt(float(v))}{ci_txt}")
        bt = ", ".join(
            f"{k}={_fmt(v)}" for k, v in (law.backtest or {}).items() if not isinstance(v, list | dict)
        )
        lines.append(
            f"{name} ({law.form}): "
            + ", ".join(parts)
            + f" (n={law.n_runs}"
            + (f"; backtest {bt})" if bt else ")")
        )
    for name, reason in getattr(lawset, "errors", {}).items():
        lines.append(f"{name}: not fitted: {reason}")
    return lines


def fit_at_end(spec: Any, tracking_uri: str, parent_run_id: str, sweep_dir: Path, outcome: Any) -> None:
    """Fit and log laws when at least ``spec.min_runs_to_fit`` runs finished; fills ``outcome.summary``."""
    from mlflow import MlflowClient

    from windtunnel.orchestrator.tracking import runs_from_mlflow, with_retry

    client = MlflowClient(tracking_uri)
    df = runs_from_mlflow(tracking_uri, spec.name)
    runs_csv = sweep_dir / "runs.csv"
    df.to_csv(runs_csv, index=False)
    with_retry(client.log_artifact, parent_run_id, str(runs_csv))
    summary = outcome.summary
    n_finished = int((df["status"] == "finished").sum()) if len(df) else 0
    bad = df[df["status"] != "finished"] if len(df) else df
    for _, row in bad.iterrows():
        summary.append(
            f"excluded from fits: {row['run_id'][:8]} ({row['study']}) "
            f"status={row['status']}: {row['reason']}"
        )
    if n_finished < spec.min_runs_to_fit:
        summary.append(
            f"{n_finished} finished runs < min_runs_to_fit ({spec.min_runs_to_fit}): laws not fitted"
        )
        return
    try:
        from windtunnel.laws import fit_laws
    except ImportError as err:
        summary.append(f"law engine not available ({err}): laws not fitted")
        return
    laws_path = sweep_dir / "laws.json"
    try:
        lawset = fit_laws(df, laws=spec.fit.laws, bootstrap=spec.fit.bootstrap, seed=0)
    except Exception as err:  # noqa: BLE001 - a law-engine failure must not lose the sweep's runs
        summary.append(f"law fitting failed: {type(err).__name__}: {err}")
        return
    lawset.to_json(laws_path)  # non-finite values (e.g. failed bootstrap samples) are written as null
    with_retry(client.log_artifact, parent_run_id, str(laws_path))
    outcome.laws_path = laws_path
    summary.extend(law_lines(lawset))
    try:
        from windtunnel.laws.figures import plot_laws
    except ImportError:
        summary.append("figures: windtunnel.laws.figures not available")
    else:
        fig_dir = sweep_dir / "figures"
        fig_dir.mkdir(exist_ok=True)
        try:
            paths = plot_laws(df, lawset, fig_dir)
        except Exception as err:  # noqa: BLE001
            summary.append(f"figures failed: {type(err).__name__}: {err}")
            paths = []
        for p in paths:
            with_retry(client.log_artifact, parent_run_id, str(p), "figures")
        summary.append(f"figures: {len(paths)} files in {fig_dir}")
    summary.append(_recommendation(lawset, sweep_dir))


def _recommendation(lawset: Any, sweep_dir: Path) -> str:
    """Recommend at RECOMMEND_COMPUTE from the sweep's laws, completed by the published ``ling`` set for
    the laws the sweep did not fit (named in the summary); the config goes to ``recommended.yaml``."""
    try:
        from windtunnel.laws import load_laws
        from windtunnel.recommend.export import write_exports
        from windtunnel.recommend.recommend import recommend
        from windtunnel.recommend.targets import Target
    except ImportError as err:
        return f"recommendation: recommender not available ({err})"
    merged, borrowed = lawset.with_fallback(load_laws("ling"))
    try:
        rec = recommend(merged, Target(compute=RECOMMEND_COMPUTE))
    except Exception as err:  # noqa: BLE001 - the sweep's own laws may not support a recommendation
        return f"recommendation at C={RECOMMEND_COMPUTE:.3g}: not possible with these laws ({err})"
    out_yaml = sweep_dir / "recommended.yaml"
    write_exports(rec.run_config, out_yaml)
    source = ""
    if borrowed:
        source = f" (from the sweep: {', '.join(lawset.laws)}; from ling: {', '.join(borrowed)})"
    keys = [
        k
        for k in ("total_params", "active_params", "tokens", "peak_lr", "batch_tokens", "predicted_loss")
        if k in rec.summary
    ]
    body = ", ".join(f"{k}={_fmt(rec.summary[k])}" for k in keys) or str(rec.summary)[:300]
    return f"recommendation at C={RECOMMEND_COMPUTE:.3g}{source}: {body}; config: {out_yaml}"
