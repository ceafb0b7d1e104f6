"""``windtunnel propose``: the k next runs of an experiment that most narrow the 95 % interval of the
predicted loss at a target compute per FLOP (``propose.py``, ``windtunnel.laws.design``); with ``--points``
a proposed run may give several (N, D_k) rows (``trainer.points``)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from pathlib import Path
from typing import Any

from windtunnel.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (a sweep's name)")
    parser.add_argument("--target", type=float, required=True, help="target compute C in FLOPs (C = M*D)")
    parser.add_argument("--k", type=int, default=4, help="how many runs to propose")
    parser.add_argument("--budget", type=float, default=math.inf, help="FLOPs the k runs may spend in all")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples of the law fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the proposals as a sweep YAML fragment")
    parser.add_argument(
        "--points",
        default=None,
        help="token fractions, e.g. 0.25,0.5,1.0: proposed runs may give a (N, D_k) row at each "
        "(trainer.points), weighed against their FLOPs counted once",
    )
    parser.add_argument(
        "--points-mode",
        choices=["wsm", "wsd"],
        default=None,
        help="wsm: merged checkpoints; wsd: cooldown branches (default: the experiment's schedule if wsm or "
        "wsd, else wsm)",
    )

    parser.add_argument(
        "--law",
        choices=["parametric", "frontier", "auto"],
        default="parametric",
        help="the loss law whose interval at the target the runs should narrow: parametric L(N, D) (single "
        "runs at any (N, D)), frontier L*(C) (whole IsoFLOP blocks at new budgets, propose_frontier.py), or "
        "auto (the law predict's auto choice takes: the smaller backtest error at the top budget's best run)",
    )
    parser.add_argument(
        "--block-sizes", type=int, default=3, help="frontier: models per new budget, around M_opt (default 3)"
    )
    parser.add_argument(
        "--lr-factors",
        default="1",
        help="frontier: each block's runs at lr_opt times each factor, e.g. 0.5,1,2 (default 1)",
    )


def check_args(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.target) and args.target > 0):
        raise UserError(f"--target must be a positive finite compute in FLOPs, got {args.target}")
    if args.k < 1:
        raise UserError(f"--k must be >= 1, got {args.k}")
    if not args.budget > 0:
        raise UserError(f"--budget must be > 0 FLOPs, got {args.budget}")
    if args.bootstrap < 2:
        raise UserError(f"--bootstrap must be >= 2 (the design needs a covariance), got {args.bootstrap}")
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out}: is a directory; give the YAML file to write")
    if args.points_mode is not None and args.points is None:
        raise UserError("--points-mode needs --points (the token fractions of each run's points)")
    if args.points is not None:
        parse_points(args.points, args.points_mode or "wsm")
    if args.block_sizes < 1:
        raise UserError(f"--block-sizes must be >= 1, got {args.block_sizes}")
    parse_factors(args.lr_factors)
    if args.law == "frontier" and args.points is not None:
        raise UserError(
            "--points: the frontier design adds whole budgets, not points of one run (use --law parametric)"
        )


def parse_factors(text: str) -> tuple[float, ...]:
    """``--lr-factors 0.5,1,2`` as positive floats; UserError naming it."""
    try:
        factors = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        factors = ()
    if not factors or not all(math.isfinite(f) and f > 0 for f in factors):
        raise UserError(f"--lr-factors {text}: not a comma-separated list of positive numbers")
    return factors


def resolve_law(args: argparse.Namespace, runs: Any) -> tuple[str, str]:
    """``--law`` with ``auto`` resolved as ``predict.choose_law`` does on the experiment's finished runs."""
    if args.law != "auto":
        return args.law, f"--law {args.law}"
    from windtunnel.laws.lawset import fit_laws
    from windtunnel.predict import PredictionError, choose_law

    done = runs[(runs["status"] == "finished")].reset_index(drop=True)
    lawset = fit_laws(done, laws=["parametric", "frontier"], bootstrap=0, seed=args.seed)
    try:
        return choose_law(lawset)
    except PredictionError as err:
        raise UserError(f"--law auto: {err}") from None


def parse_points(text: str, mode: str) -> Any:
    """``--points 0.25,0.5,1.0`` as a ``trainer.config.PointsConfig`` of ``mode``; UserError naming it."""
    from pydantic import ValidationError

    from trainer.config import PointsConfig

    try:
        fractions = [float(x) for x in text.split(",") if x.strip()]
        return PointsConfig(at_fractions=fractions, mode=mode)
    except ValueError as err:
        if isinstance(err, ValidationError):
            why = err.errors()[0]["msg"].removeprefix("Value error, ")
        else:
            why = "not a comma-separated list of numbers"
        raise UserError(f"--points {text}: {why}") from None


def load_experiment(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(run table without the validation target's runs, the RunConfig of the largest finished run, the
    width/depth rule of the finished runs, ``propose.shape_of_runs``)."""
    from mlflow import MlflowClient

    from trainer.config import RunConfig
    from windtunnel.laws.cli import _load_runs
    from windtunnel.orchestrator.propose import config_from_params, shape_of_runs
    from windtunnel.orchestrator.spec_target import TARGET_STUDY
    from windtunnel.orchestrator.tracking import ROLE, search_all

    ns = argparse.Namespace(runs=None, experiment=args.experiment, tracking_uri=args.tracking_uri)
    runs = _load_runs(ns)
    if "study" in runs:
        runs = runs[runs["study"] != TARGET_STUDY].reset_index(drop=True)
    done = runs[runs["status"] == "finished"]
    if len(done) == 0:
        raise UserError(f"experiment {args.experiment!r} has no finished runs")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    client = MlflowClient(uri)

    def config_of(run: Any) -> Any:
        text = run.data.tags.get("run_config")
        return RunConfig.model_validate_json(text) if text else config_from_params(run.data.params)

    top = done.loc[done["compute"].idxmax(), "run_id"]
    try:
        base = config_of(client.get_run(top))
    except ValueError as err:
        raise UserError(f"run {top}: its tags and params do not give a trainer config ({err})") from None
    # the other finished trials' shapes, from one search of the experiment (not one request per run)
    exp_id = client.get_experiment_by_name(args.experiment).experiment_id
    wanted = set(done["run_id"]) - {top}
    cfgs = [base]
    for run in search_all(client, exp_id, f"tags.`{ROLE}` = 'trial'"):
        if run.info.run_id in wanted:
            with contextlib.suppress(ValueError):  # a run whose params give no config: its shape is left out
                cfgs.append(config_of(run))
    return runs, base, shape_of_runs(cfgs)


def points_cell(p: Any) -> str:
    """ "-" for a run of one row, else its mode and the fractions it gives rows at."""
    if p.cfg.points is None:
        return "-"
    return f"{p.cfg.points.mode} {','.join(f'{f:g}' for f in p.cfg.points.at_fractions)}"


def print_proposals(ps: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"proposed runs for the target C = {ps.target_compute:.3g} FLOPs")
    for col in (
        "#",
        "N (params)",
        "D (tokens)",
        "points",
        "shape",
        "lr",
        "batch",
        "FLOPs",
        "pi95 width after",
    ):
        table.add_column(col)
    for i, p in enumerate(ps.proposals):
        m = p.cfg.model
        shape = f"d{m.d_model} L{m.n_layers} h{m.n_heads}/{m.n_kv_heads} ffn{m.d_ffn}"
        table.add_row(
            str(i + 1),
            f"{p.params:.4g}",
            f"{p.tokens:,}",
            points_cell(p),
            shape,
            f"{p.cfg.optim.lr:.3g}",
            str(p.cfg.optim.batch_size),
            f"{p.flops:.3g}",
            f"{p.width_after:.4f}",
        )
    console.print(table)
    lo, hi = ps.pi95_law
    console.print(
        f"predicted loss at the target {ps.predicted:.4f}, law pi95 [{lo:.4f}, {hi:.4f}] "
        f"(width {hi - lo:.4f}); expected pi95 width {ps.width_before:.4f} before, "
        f"{ps.width_after:.4f} after ({ps.flops:.3g} FLOPs)",
        highlight=False,
    )
    for note in ps.notes:
        console.print(f"note: {note}", highlight=False)


def main(args: argparse.Namespace) -> int:
    import yaml

    from windtunnel.orchestrator.propose import propose, sweep_fragment

    check_args(args)
    runs, base, shape = load_experiment(args)
    points = None
    if args.points is not None:
        kind = base.schedule.kind
        points = parse_points(args.points, args.points_mode or (kind if kind in ("wsm", "wsd") else "wsm"))
    law, why = resolve_law(args, runs)
    try:
        if law == "frontier":
            from windtunnel.orchestrator.propose_frontier import propose_budgets

            ps = propose_budgets(
                runs, base, args.target, args.k, args.budget, args.bootstrap, args.seed, shape=shape,
                n_sizes=args.block_sizes, lr_factors=parse_factors(args.lr_factors),
            )  # fmt: skip
        else:
            ps = propose(
                runs, base, args.target, args.k, args.budget, args.bootstrap, args.seed, shape=shape,
                points=points,
            )  # fmt: skip
        ps.notes.insert(0, f"designed for the {law} law ({why})")
    except ValueError as err:
        raise UserError(str(err).splitlines()[0]) from None
    print_proposals(ps)
    if args.out is not None:
        try:
            args.out.write_text(yaml.safe_dump(sweep_fragment(ps), sort_keys=False))
        except OSError as err:
            raise UserError(f"--out {args.out}: cannot write ({err.strerror or err})") from None
        print(f"wrote {args.out} ({len(ps.proposals)} studies)")
    return 0 if ps.proposals else 1
