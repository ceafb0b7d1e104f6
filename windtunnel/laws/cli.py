"""``windtunnel fit``: fit scaling laws to a run table (CSV) or an MLflow experiment and write laws.json."""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import pandas as pd

from windtunnel.cli import UserError
from windtunnel.laws.lawset import LAW_COLUMNS, LawSet, fit_laws
from windtunnel.laws.selection import selection_lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", type=Path, help="run table CSV (DESIGN.md run-table columns)")
    src.add_argument("--experiment", help="MLflow experiment name")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (with --experiment)")
    parser.add_argument("--out", type=Path, required=True, help="laws.json to write")
    parser.add_argument("--laws", default=None, help=f"comma-separated subset of: {','.join(LAW_COLUMNS)}")
    parser.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap resamples for ci95 (default 200)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--band", type=float, default=0.0025, help="near-optimal loss band for lr/batch laws")
    parser.add_argument("--figures", type=Path, default=None, help="write PNG+SVG figures to this folder")


def _load_runs(args: argparse.Namespace) -> pd.DataFrame:
    if args.runs is not None:
        if not args.runs.exists():
            raise UserError(f"{args.runs}: no such file")
        try:
            return pd.read_csv(args.runs)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise UserError(f"{args.runs}: not a readable CSV ({err})") from None
    try:
        from windtunnel.orchestrator.tracking import runs_from_mlflow
    except ImportError as err:
        raise UserError(f"--experiment needs windtunnel.orchestrator.tracking ({err})") from None
    uri = args.tracking_uri or "sqlite:///mlflow.db"
    try:
        return runs_from_mlflow(uri, args.experiment)
    except (ValueError, LookupError) as err:
        raise UserError(f"experiment {args.experiment!r} at {uri}: {err}") from None


def main(args: argparse.Namespace) -> int:
    if args.bootstrap < 0:
        raise UserError("--bootstrap must be >= 0")
    laws = [s.strip() for s in args.laws.split(",") if s.strip()] if args.laws else None
    if laws:
        unknown = [n for n in laws if n not in LAW_COLUMNS]
        if unknown:
            raise UserError(f"unknown law(s) {', '.join(unknown)}; known: {', '.join(LAW_COLUMNS)}")
    runs = _load_runs(args)
    if len(runs) == 0:
        raise UserError("the run table is empty")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lawset = fit_laws(runs, laws=laws, bootstrap=args.bootstrap, seed=args.seed, band=args.band)
    except ValueError as err:
        raise UserError(str(err)) from None
    lawset.to_json(args.out)
    print_table(lawset, [str(w.message) for w in caught])
    if args.figures is not None:
        from windtunnel.laws.figures import plot_laws
        from windtunnel.runtable import validate_run_table

        paths = plot_laws(validate_run_table(runs), lawset, args.figures)
        print(f"wrote {len(paths)} figure files to {args.figures}")
    print(f"wrote {args.out} ({len(lawset.laws)} laws, {len(lawset.errors)} could not be fitted)")
    return 0 if lawset.laws else 1


def _fmt(v: float) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.4g}"


def print_table(lawset: LawSet, messages: list[str] | None = None) -> None:
    """Fitted laws with ci95 and backtest errors, then the laws that could not be fitted."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="fitted laws")
    for col in ("law", "coefficient", "value", "ci95", "n_runs", "backtest mean/max rel err"):
        table.add_column(col)
    for name, law in lawset.laws.items():
        bt = law.backtest
        bt_text = (
            f"{_fmt(bt.get('mean_rel_err'))} / {_fmt(bt.get('max_rel_err'))}"
            if "mean_rel_err" in bt
            else bt.get("skipped", "")
        )
        for i, (k, v) in enumerate(law.coefficients.items()):
            lo, hi = law.ci95.get(k, (float("nan"), float("nan")))
            table.add_row(
                name if i == 0 else "",
                k,
                _fmt(v),
                f"[{_fmt(lo)}, {_fmt(hi)}]",
                str(law.n_runs) if i == 0 else "",
                bt_text if i == 0 else "",
            )
    console.print(table)
    for line in selection_lines(lawset.laws):
        console.print(line, highlight=False)
    for name, reason in lawset.errors.items():
        console.print(f"[red]not fitted[/red] {name}: {reason}", highlight=False)
    for name, excl in lawset.excluded.items():
        console.print(
            f"excluded runs for {name}: {', '.join(f'{v} {k}' for k, v in excl.items())}", highlight=False
        )
    for msg in messages or []:
        console.print(f"[yellow]warning[/yellow] {msg}", highlight=False)
