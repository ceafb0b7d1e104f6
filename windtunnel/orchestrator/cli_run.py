"""``windtunnel run SWEEP.yaml [--address RAY] [--tracking-uri URI] [--dry-run]``.

The spec is validated and expanded before anything starts: bad input is one line, exit 2, no Ray.
Re-running the same YAML resumes it (finished trials are skipped, unfinished ones resume from checkpoints).
One driver per sweep: a second ``windtunnel run`` of a running sweep exits 2 with
``sweep X is already running (pid N, host H)``. The tracking store is ``--tracking-uri``, else the YAML's
``tracking_uri`` when it sets one, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.
"""

from __future__ import annotations

import argparse
import os

from windtunnel.errors import SpecError, UserError
from windtunnel.orchestrator.cli_plan import add_budget_argument, run_preamble
from windtunnel.orchestrator.spec import Plan, SweepSpec, load_and_expand


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep YAML (see `windtunnel schema`)")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster: auto | HOST:PORT | ray://HOST:10001 (Ray Client); default: local Ray",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow URI (default: the YAML's tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and list the trials; touch no store, start nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress table")
    add_budget_argument(parser)


def plan_lines(plan: Plan) -> list[str]:
    from trainer.flops import count_params

    lines = [
        f"{'study':<16} {'kind':<7} {'hash':<16} {'family':<6} {'params':>9} "
        f"{'tokens':>10} {'lr':>9} {'batch':>5}"
    ]
    for t in plan.trials:
        c = t.run_cfg
        p = count_params(c.model).active_nonembed
        lines.append(
            f"{t.study:<16} {t.kind:<7} {t.config_hash:<16} {c.model.family:<6} {p:>9,d} "
            f"{c.optim.tokens:>10,d} {c.optim.lr:>9.3g} {c.optim.batch_size:>5d}"
        )
    tokens = sum(t.run_cfg.optim.tokens for t in plan.trials)
    for g in plan.searches:
        c = g.base_cfg
        p = count_params(c.model).active_nonembed
        n_grid = g.search.lr_grid
        how = (
            "TPE"
            if not n_grid
            else f"{n_grid} grid LRs" + (", then TPE" if n_grid < g.search.num_samples else "")
        )
        lines.append(
            f"{g.study:<16} search  {g.search.num_samples} samples ({how}) at C={g.budget:.3g}: "
            f"{c.model.family} d_model {c.model.d_model} x {c.model.n_layers}, {p:,d} params, "
            f"tokens {c.optim.tokens:,d}, seed {g.seed}"
        )
        tokens += g.search.num_samples * c.optim.tokens
    lines.append(f"{plan.n_trials} trials, {tokens:,d} training tokens in all (before pruning)")
    return lines


def target_lines(spec: SweepSpec) -> list[str]:
    """The validation phase a ``target:`` block adds after the ladder (sized at fit time, so only its
    compute, seeds and policy are known before the sweep runs)."""
    from windtunnel.orchestrator.validation import ladder_studies

    t = spec.target
    if t is None:
        return []
    top = max((c for s in ladder_studies(spec) for c in (s.ladder.budgets or [])), default=float("nan"))
    c = t.target_compute(top)
    size = "the fixed target.model" if t.model else "N from the ladder's m_opt law (fitted after the ladder)"
    when = "recorded in MLflow before it trains" if t.predict_before else "not recorded before it trains"
    return [
        f"then target: C = {c:.3g} FLOPs ({c / top:.3g}x the ladder's largest budget), "
        f"{size}, {len(t.seeds)} seed(s) {t.seeds}, lr/batch from {t.hparams}; "
        f"prediction by law {t.law}, {when}"
    ]


def tracking_uri(flag: str | None, spec: SweepSpec) -> str:
    """``--tracking-uri``, else the YAML's ``tracking_uri`` if it sets one, else ``$MLFLOW_TRACKING_URI``,
    else the spec's default (``sqlite:///mlflow.db``)."""
    if flag:
        return flag
    if "tracking_uri" in spec.model_fields_set:
        return spec.tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or spec.tracking_uri


def main(args: argparse.Namespace) -> int:
    try:
        spec, plan = load_and_expand(args.sweep)
    except SpecError as err:
        raise UserError(str(err)) from None
    if args.dry_run:
        print("\n".join(plan_lines(plan) + target_lines(spec)))
        return 0
    planned_s = run_preamble(spec, plan, args.budget, args.tracking_uri)  # totals; refuses over budget
    from windtunnel.errors import SweepBusy
    from windtunnel.orchestrator.driver import run_sweep

    try:
        out = run_sweep(
            spec,
            plan,
            address=args.address,
            tracking_uri=tracking_uri(args.tracking_uri, spec),
            show_progress=not args.no_progress,
            planned_s=planned_s,
        )
    except (SpecError, SweepBusy) as err:  # e.g. the data could not be prepared, the sweep runs elsewhere
        raise UserError(str(err)) from None
    counts = ", ".join(f"{k} {v}" for k, v in sorted(out.counts.items()))
    print(
        f"sweep {out.sweep}: {out.n_planned} trials ({out.n_skipped} already done, "
        f"{out.n_launched} launched) "
        f"in {out.wall_s:.0f}s; store: {counts}; tracking {out.tracking_uri}"
    )
    for line in out.summary:
        print("  " + line)
    return 0
