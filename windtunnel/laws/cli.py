"""``windtunnel fit``: fit scaling laws to a run table (CSV) or an MLflow experiment and write laws.json."""

from __future__ import annotations

import argparse
import math
import os
import warnings
from pathlib import Path

import pandas as pd

from windtunnel.errors import UserError
from windtunnel.laws.lawset import LawSet, fit_laws
from windtunnel.laws.registry import law_names
from windtunnel.laws.selection import selection_lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", type=Path, help="run table CSV (columns: see docs/DESIGN.md, Contracts)")
    src.add_argument("--experiment", help="MLflow experiment name")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (with --experiment; default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument("--out", type=Path, required=True, help="laws.json to write")
    parser.add_argument("--laws", default=None, help=f"comma-separated subset of: {','.join(law_names())}")
    parser.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap resamples for ci95 (default 200)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--band", type=float, default=0.0025, help="near-optimal loss band for lr/batch laws")
    parser.add_argument("--figures", type=Path, default=None, help="write PNG+SVG figures to this folder")


def _load_runs(args: argparse.Namespace) -> pd.DataFrame:
    if args.runs is not None:
        return _read_csv(args.runs)
    from mlflow.exceptions import MlflowException

    from windtunnel.orchestrator.tracking import runs_from_mlflow

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise UserError(
            f"experiment {args.experiment!r}: no tracking store at {uri} "
            "(set --tracking-uri or MLFLOW_TRACKING_URI)"
        )
    try:
        return runs_from_mlflow(uri, args.experiment)
    except (ValueError, LookupError, OSError, MlflowException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"experiment {args.experiment!r} at {uri}: {first}") from None


def _read_csv(path: Path) -> pd.DataFrame:
    """The run table at ``path``; every file-system or parse problem as one UserError line."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"--runs {path}: is a directory, not a run-table CSV file")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV ({err})") from None
    except OSError as err:
        raise UserError(f"--runs {path}: cannot read ({err.strerror or err})") from None


def _check_out(path: Path) -> None:
    """Refuse an --out that cannot be written before any fitting is done."""
    if path.is_dir():
        raise UserError(f"--out {path}: is a directory; give the laws.json file to write")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: cannot write in {parent} (not a writable directory)")


def main(args: argparse.Namespace) -> int:
    if args.bootstrap < 0:
        raise UserError("--bootstrap must be >= 0")
    if not (math.isfinite(args.band) and 0 <= args.band < 1):
        raise UserError(f"--band must be a finite fraction in [0, 1), got {args.band}")
    laws = [s.strip() for s in args.laws.split(",") if s.strip()] if args.laws else None
    if laws:
        unknown = [n for n in laws if n not in law_names()]
        if unknown:
            raise UserError(f"unknown law(s) {', '.join(unknown)}; known: {', '.join(law_names())}")
    _check_out(args.out)
    runs = _load_runs(args)
    if len(runs) == 0:
        raise UserError("the run table is empty")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lawset = fit_laws(runs, laws=laws, bootstrap=args.bootstrap, seed=args.seed, band=args.band)
    except ValueError as err:
        raise UserError(str(err)) from None
    try:
        lawset.to_json(args.out)
    except OSError as err:
        raise UserError(f"--out {args.out}: cannot write ({err.strerror or err})") from None
    print_table(lawset, [str(w.message) for w in caught])
    if args.figures is not None:
        from windtunnel.laws.figures import plot_laws
        from windtunnel.runtable import validate_run_table

        try:
            paths = plot_laws(validate_run_table(runs), lawset, args.figures)
        except OSError as err:
            raise UserError(f"--figures {args.figures}: cannot write ({err.strerror or err})") from None
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
