"""``windtunnel report``: a static, offline HTML report plus PNG/SVG paper figures for one experiment."""

from __future__ import annotations

import argparse
import os

from windtunnel.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    )
    parser.add_argument("--laws", default=None, help="laws.json (or 'ling'); default: fit now if possible")
    parser.add_argument("--target", type=float, default=6.4e24, help="target compute in FLOPs")


def main(args: argparse.Namespace) -> int:
    from dashboards.sqlstore import missing_sqlite_file

    missing = missing_sqlite_file(args.tracking_uri)
    if missing is not None:  # a read-only command: opening it with MLflow would create an empty store
        raise UserError(f"--tracking-uri: no MLflow store at {missing}")
    from dashboards.data import list_experiments
    from dashboards.report import write_report

    if args.experiment not in list_experiments(args.tracking_uri):
        raise UserError(f"no experiment named {args.experiment!r} in {args.tracking_uri}")
    try:
        out = write_report(args.tracking_uri, args.experiment, args.out, args.laws, args.target)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    print(f"wrote {out['html']} and {len(out['figures'])} figure files ({out['laws']})")
    return 0
