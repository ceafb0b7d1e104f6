"""``windtunnel plan SWEEP.yaml [SWEEP.yaml ...] [--budget B] [--tracking-uri URI] [--no-probe]``.

Prints, before anything starts, every planned run's FLOPs and estimated wall time (``plan.py``), the sweep's
totals, and refuses (one line, exit 2) a sweep over ``--budget`` (FLOPs ``1e15``, wall time ``2h``, GPU-hours
``10gpu-h``). Probes of model shapes are cached in the tracking store (``probe.py``). Nothing is launched.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from windtunnel.errors import SpecError, UserError, one_line
from windtunnel.orchestrator.plan import Budget, SweepEstimate, estimate, over_budget, parse_budget
from windtunnel.orchestrator.spec import Plan, SweepSpec, load_and_expand


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweeps", nargs="+", help="sweep YAML(s)")
    add_budget_argument(parser)
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow URI holding the probe cache (default: the spec's)"
    )
    parser.add_argument("--no-probe", action="store_true", help="FLOPs only: no timed probes, no wall time")


def add_budget_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget",
        default=None,
        help="refuse a sweep over this: FLOPs (1e15), wall time (2h, 90m) or GPU-hours (10gpu-h)",
    )


def _fmt_s(s: float) -> str:
    from windtunnel.orchestrator.progress import format_seconds

    return "--" if s != s else format_seconds(s)


def table_lines(est: SweepEstimate) -> list[str]:
    from trainer.flops import count_params

    lines = [
        f"{'study':<16} {'kind':<7} {'run':<16} {'runs':>4} {'params':>11} {'tokens':>13} "
        f"{'FLOPs/run':>10} {'time/run':>9} source"
    ]
    for r in est.rows:
        p = count_params(r.cfg.model).active_nonembed
        lines.append(
            f"{r.study:<16} {r.kind:<7} {r.ident:<16} {r.n_runs:>4} {p:>11,d} {r.cfg.optim.tokens:>13,d} "
            f"{r.flops:>10.3g} {_fmt_s(r.est_s):>9} {r.source or '-'}"
        )
    return lines


def totals_line(est: SweepEstimate) -> str:
    """The sweep's totals in one line (also printed by ``windtunnel run`` at start)."""
    text = f"sweep {est.sweep}: {est.n_runs} runs, {est.total_flops:.3g} FLOPs"
    if est.wall_s == est.wall_s:
        text += f", run time {_fmt_s(est.run_s)}, wall ~{_fmt_s(est.wall_s)} on {est.slots} slot(s)"
        if est.gpus_per_trial > 0:
            text += f", {est.gpu_hours:.3g} GPU-h"
    if est.upper_bound:
        text += " (upper bound: ASHA/median pruning stops some searched trials early)"
    return text


def source_lines(est: SweepEstimate) -> list[str]:
    counts: dict[str, int] = {}
    for r in est.rows:
        counts[r.source or "not estimated"] = counts.get(r.source or "not estimated", 0) + 1
    lines = ["rows by source: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    return lines + [f"  {n}" for n in est.notes]


def estimate_for(spec: SweepSpec, plan: Plan, tracking_uri: str | None, probe: bool = True) -> SweepEstimate:
    from windtunnel.orchestrator.driver import resolve_tracking_uri
    from windtunnel.orchestrator.probe import ProbeCache

    cache = ProbeCache(resolve_tracking_uri(tracking_uri or spec.tracking_uri)) if probe else None
    try:
        return estimate(spec, plan, cache, probe=probe)
    except (ValueError, OSError) as err:  # e.g. the data for a probe could not be prepared
        raise UserError(one_line(f"probe: {err}")) from None


def check_budget(spec: SweepSpec, plan: Plan, budget: Budget, tracking_uri: str | None) -> SweepEstimate:
    """FLOPs budgets are checked without probing (nothing is written); time budgets after the probes."""
    est = estimate_for(spec, plan, tracking_uri, probe=budget.kind != "flops")
    refusal = over_budget(est, budget)
    if refusal is not None:
        raise UserError(refusal)
    return est


def _one(path: str, args: argparse.Namespace, budget: Budget | None) -> None:
    try:
        spec, plan = load_and_expand(path)
        if budget is not None:
            check_budget(spec, plan, budget, args.tracking_uri)  # refuses before any output
    except SpecError as err:
        raise UserError(str(err)) from None
    est = estimate_for(spec, plan, args.tracking_uri, probe=not args.no_probe)
    print(f"== {Path(path).name}")
    print("\n".join(table_lines(est)))
    print("\n".join(source_lines(est)))
    print(totals_line(est))


def main(args: argparse.Namespace) -> int:
    try:
        budget = parse_budget(args.budget) if args.budget else None
    except SpecError as err:
        raise UserError(str(err)) from None
    for path in args.sweeps:
        _one(path, args, budget)
    return 0


def run_preamble(
    spec: SweepSpec, plan: Plan, budget_text: str | None, tracking_uri: str | None
) -> float | None:
    """For ``windtunnel run``: refuse an over-budget sweep, print the totals; returns the wall time (s)."""
    try:
        budget = parse_budget(budget_text) if budget_text else None
        if budget is not None:
            check_budget(spec, plan, budget, tracking_uri)
    except SpecError as err:
        raise UserError(str(err)) from None
    est = cached_estimate(spec, plan, tracking_uri)
    line = totals_line(est)
    if est.wall_s != est.wall_s:
        line += (
            "; wall time not yet probed on this machine (`windtunnel plan SWEEP.yaml` probes and caches it)"
        )
    print(line, flush=True)
    return None if est.wall_s != est.wall_s else est.wall_s


def cached_estimate(spec: SweepSpec, plan: Plan, tracking_uri: str | None) -> SweepEstimate:
    """The totals ``windtunnel run`` prints: FLOPs, and wall time from probes already in the store. Nothing is
    trained and nothing is written before the sweep's own checks (a missing SQLite store stays missing)."""
    from windtunnel.orchestrator.driver import resolve_tracking_uri
    from windtunnel.orchestrator.probe import ProbeCache

    uri = resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    missing = uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file()
    try:
        return estimate(spec, plan, None if missing else ProbeCache(uri), new_probes=False)
    except Exception:  # noqa: BLE001  the totals are advisory; the sweep's own checks report store problems
        return estimate(spec, plan, None, probe=False)
