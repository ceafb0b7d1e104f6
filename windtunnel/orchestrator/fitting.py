"""End of a sweep: rebuild the run table from MLflow, fit laws, log laws.json + figures to the parent run.

The law engine (``windtunnel.laws.fit_laws``), its figures (``windtunnel.laws.figures.plot_laws``) and the
recommender (``windtunnel.recommend``) are imported lazily and used when present. Runs that are not
``finished`` (diverged, failed: one line each with the reason; pruned: counted) are excluded from the fits.

Degenerate hyper-parameter laws (``lr_opt``, ``batch_opt``; ``check_optima``): a power law a*C^b through
per-budget optima is only identified when the optima differ between budgets and each one is bracketed by
the values tried at its budget. When every budget's best run has the same value (a grid too coarse for the
compute range: b = 0 with a zero-width bootstrap interval), when the bootstrap interval of b has zero width,
or when most budgets' optima sit at the edge of the values tried (the true optimum may lie outside the
searched range), the law is flagged: a warning in the summary, ``notes.degenerate`` and ``notes.warnings``
in laws.json, its interval printed as not identified, and the recommendation takes that law from ``ling``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from windtunnel.recommend.policy import MAX_EXTRAPOLATION_DECADES, RECOMMEND_COMPUTE


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def law_lines(lawset: Any) -> list[str]:
    """``lr_opt: a=1.2 [0.9, 1.6], b=-0.15 [...] (n=12; backtest rel_err=0.03)`` per law, and errors."""
    lines = []
    for name, law in lawset.laws.items():
        parts = []
        degenerate = bool(law.notes.get("degenerate"))
        for k, v in law.coefficients.items():
            ci = law.ci95.get(k)
            ci_txt = f" [{_fmt(float(ci[0]))}, {_fmt(float(ci[1]))}]" if ci is not None else ""
            if degenerate:
                ci_txt = " [interval not identified: degenerate fit]"
            parts.append(f"{k}={_fmt(float(v))}{ci_txt}")
        bt = ", ".join(
            f"{k}={_fmt(v)}" for k, v in (law.backtest or {}).items() if not isinstance(v, list | dict)
        )
        lines.append(
            f"{name} ({law.form}): "
            + ", ".join(parts)
            + f" (n={law.n_runs}"
            + (f"; backtest {bt})" if bt else ")")
            + (f"; not identified: {why}" if (why := law.notes.get("degenerate_reason")) else "")
            + (f"; {note}" if (note := law.notes.get("E_at_bound")) else "")
        )
    for name, reason in getattr(lawset, "errors", {}).items():
        lines.append(f"{name}: not fitted: {reason}")
    return lines


def fit_at_end(spec: Any, tracking_uri: str, parent_run_id: str, sweep_dir: Path, outcome: Any) -> None:
    """Fit and log laws when at least ``spec.min_runs_to_fit`` runs finished; fills ``outcome.summary``."""
    from mlflow import MlflowClient

    from windtunnel.orchestrator.seednoise import seed_noise_lines
    from windtunnel.orchestrator.spec_target import TARGET_STUDY
    from windtunnel.orchestrator.tracking import log_artifact, runs_from_mlflow

    client = MlflowClient(tracking_uri)
    df = runs_from_mlflow(tracking_uri, spec.name)
    if len(df) and getattr(outcome, "run_ids", None) is not None:  # this spec's trials only (identity.py)
        df = df[df["run_id"].isin(outcome.run_ids) | df["parent_run_id"].isin(outcome.run_ids)]
    runs_csv = sweep_dir / "runs.csv"
    df.to_csv(runs_csv, index=False)
    log_artifact(client, parent_run_id, runs_csv)  # ArtifactStoreError: one line
    summary = outcome.summary
    if getattr(spec, "target", None) is not None:  # the target is predicted by the ladder, not fitted
        df = df[df["study"] != TARGET_STUDY].reset_index(drop=True)
    summary.extend(seed_noise_lines(client, spec.name))
    n_finished = int((df["status"] == "finished").sum()) if len(df) else 0
    bad = df[df["status"] != "finished"] if len(df) else df
    n_pruned = 0
    for _, row in bad.iterrows():
        if row["status"] == "pruned":  # by design (ASHA/median on intermediate val_loss): counted, not listed
            n_pruned += 1
            continue
        summary.append(
            f"excluded from fits: {row['run_id'][:8]} ({row['study']}) "
            f"status={row['status']}: {row['reason']}"
        )
    if n_pruned:
        summary.append(f"excluded from fits: {n_pruned} pruned runs (stopped early on intermediate val_loss)")
    if n_finished < spec.min_runs_to_fit:
        summary.append(
            f"{n_finished} finished runs < min_runs_to_fit ({spec.min_runs_to_fit}): laws not fitted"
        )
        return
    from windtunnel.laws import fit_laws

    laws_path = sweep_dir / "laws.json"
    try:
        lawset = fit_laws(df, laws=spec.fit.laws, bootstrap=spec.fit.bootstrap, seed=0)
    except Exception as err:  # noqa: BLE001 - a law-engine failure must not lose the sweep's runs
        summary.append(f"law fitting failed: {type(err).__name__}: {err}")
        return
    warnings_lines = _check_hparam_laws(client, lawset, spec.name)
    lawset.to_json(laws_path)  # non-finite values (e.g. failed bootstrap samples) are written as null
    log_artifact(client, parent_run_id, laws_path)
    outcome.laws_path = laws_path
    summary.extend(law_lines(lawset))
    summary.extend(warnings_lines)
    from windtunnel.laws.figures import plot_laws

    fig_dir = sweep_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    try:
        paths = plot_laws(df, lawset, fig_dir)
    except Exception as err:  # noqa: BLE001
        summary.append(f"figures failed: {type(err).__name__}: {err}")
        paths = []
    for p in paths:
        log_artifact(client, parent_run_id, p, "figures")
    summary.append(f"figures: {len(paths)} files in {fig_dir}")
    limit = getattr(getattr(spec, "fit", None), "max_extrapolation_decades", MAX_EXTRAPOLATION_DECADES)
    summary.append(recommendation_line(lawset, sweep_dir, limit))


def recommendation_line(lawset: Any, sweep_dir: Path, max_decades: float = MAX_EXTRAPOLATION_DECADES) -> str:
    """The summary line of ``windtunnel.recommend.policy.recommend_with_policy`` at RECOMMEND_COMPUTE (the
    sweep's laws, completed by ``ling`` or refused when too far from the target); the config goes to
    ``recommended.yaml``."""
    from windtunnel.recommend.export import write_exports
    from windtunnel.recommend.policy import recommend_with_policy
    from windtunnel.recommend.targets import Target

    try:
        result = recommend_with_policy(lawset, Target(compute=RECOMMEND_COMPUTE), max_decades=max_decades)
    except ValueError as err:  # RecommendError: the completed laws allow no recommendation; the runs stay
        return f"recommendation at C={RECOMMEND_COMPUTE:.3g}: not possible with these laws ({err})"
    rec = result.recommendation
    out_yaml = sweep_dir / "recommended.yaml"
    write_exports(rec.run_config, out_yaml)
    keys = [
        k
        for k in ("total_params", "active_params", "tokens", "peak_lr", "batch_tokens", "predicted_loss")
        if k in rec.summary
    ]
    body = ", ".join(f"{k}={_fmt(rec.summary[k])}" for k in keys) or str(rec.summary)[:300]
    source = f" ({'; '.join(result.notes)})" if result.notes else ""
    return f"recommendation at C={RECOMMEND_COMPUTE:.3g}{source}: {body}; config: {out_yaml}"


# ---------------------------------------------------------------------------------------------------------
# degenerate hyper-parameter laws

HPARAM_COLUMNS = {"lr_opt": "lr", "batch_opt": "batch_tokens"}


def check_optima(rows: list[dict[str, Any]], b_ci: tuple[float, float] | None = None) -> dict[str, Any]:
    """Is a per-budget-optimum power law identified by these runs? (see the module docstring)

    ``rows``: one per run, ``{"budget": C, "value": lr or batch, "loss": final loss (NaN unless finished),
    "status": ...}``; pruned and diverged runs count as tried values, failed ones do not. Per budget the
    optimum is the value of the finished run with the lowest loss; it is at the edge when it is the lowest
    or highest value tried at that budget (of at least 2 distinct values). Returns ``{"optima": {C: value},
    "edges": {C: "low"|"high"}, "warnings": [...], "degenerate": bool}``.
    """
    by_budget: dict[float, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "failed" or not (r["budget"] > 0 and r["value"] > 0):
            continue
        by_budget.setdefault(float(r["budget"]), []).append(r)
    optima: dict[float, float] = {}
    edges: dict[float, str] = {}
    for c, rs in sorted(by_budget.items()):
        done = [r for r in rs if r["status"] == "finished" and math.isfinite(float(r["loss"]))]
        if not done:
            continue
        best = min(done, key=lambda r: float(r["loss"]))["value"]
        optima[c] = float(best)
        tried = sorted({float(r["value"]) for r in rs})
        if len(tried) >= 2 and math.isclose(best, tried[0], rel_tol=1e-9):
            edges[c] = "low"
        elif len(tried) >= 2 and math.isclose(best, tried[-1], rel_tol=1e-9):
            edges[c] = "high"
    warnings: list[str] = []
    degenerate = False
    distinct = {round(math.log(v), 9) for v in optima.values()}
    if len(optima) >= 2 and len(distinct) == 1:
        degenerate = True
        warnings.append(
            f"every budget's best run has the same value ({_fmt(next(iter(optima.values())))}): "
            "the exponent b is not identified (refine the grid or widen the compute range)"
        )
    if edges:
        where = ", ".join(f"C={c:.3g}: {_fmt(optima[c])} ({side} end)" for c, side in edges.items())
        warnings.append(
            f"optimum at the edge of the values tried at {len(edges)}/{len(optima)} budgets: {where}"
        )
        if 2 * len(edges) > len(optima):
            degenerate = True
    if b_ci is not None and all(math.isfinite(float(x)) for x in b_ci):
        lo, hi = float(b_ci[0]), float(b_ci[1])
        if hi - lo <= 1e-9 * max(1.0, abs(lo), abs(hi)):
            degenerate = True
            warnings.append(f"the bootstrap interval of b has zero width ([{_fmt(lo)}, {_fmt(hi)}])")
    return {"optima": optima, "edges": edges, "warnings": warnings, "degenerate": degenerate}


def _check_hparam_laws(client: Any, lawset: Any, sweep: str) -> list[str]:
    """Run ``check_optima`` on the fitted lr_opt/batch_opt laws from the store's trial runs (params and
    budget tags, so pruned runs count as tried; a validation target is predicted, never fitted, and is left
    out); records notes on the laws; returns summary lines."""
    names = [n for n in HPARAM_COLUMNS if n in lawset.laws]
    if not names:
        return []
    from windtunnel.orchestrator.spec_target import TARGET_STUDY
    from windtunnel.orchestrator.tracking import RT_PREFIX, effective_status, trial_runs, with_retry

    exp = with_retry(client.get_experiment_by_name, sweep)
    runs = list(trial_runs(client, exp.experiment_id).values())
    runs = [r for r in runs if r.data.tags.get("study") != TARGET_STUDY]
    families = {r.data.tags.get("family", "") for r in runs}
    if {"dense", "moe"} <= families:  # the law engine fits these laws on the MoE runs when both are present
        runs = [r for r in runs if r.data.tags.get("family") == "moe"]
    lines = []
    for name in names:
        law = lawset.laws[name]
        rows = []
        for r in runs:
            p, t, m = r.data.params, r.data.tags, r.data.metrics
            try:
                budget = float(t["budget"]) if "budget" in t else float(m[RT_PREFIX + "compute"])
                if name == "lr_opt":
                    value = float(p["optim.lr"])
                else:
                    value = float(p["optim.batch_size"]) * float(p["model.seq_len"])
            except (KeyError, ValueError):
                continue
            rows.append(
                {
                    "budget": budget,
                    "value": value,
                    "loss": m.get(RT_PREFIX + "loss", math.nan),
                    "status": effective_status(r),
                }
            )
        check = check_optima(rows, law.ci95.get("b"))
        law.notes["optima_by_budget"] = {f"{c:.4g}": v for c, v in check["optima"].items()}
        if check["warnings"]:
            law.notes["warnings"] = check["warnings"]
        law.notes["degenerate"] = check["degenerate"]
        optima = ", ".join(f"C={c:.3g}: {_fmt(v)}" for c, v in check["optima"].items())
        lines.append(f"{name} per-budget optima (best finished run): {optima}")
        label = (
            "WARNING (degenerate fit, not used for the recommendation)" if check["degenerate"] else "warning"
        )
        lines.extend(f"{label} {name}: {w}" for w in check["warnings"])
    return lines
