"""``windtunnel status [--tracking-uri URI] [--sweep NAME]``: trials by state and an ETA, from the store.

ETA from the store = (trials not done) x (mean wall time of finished trials) / concurrency.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from windtunnel.errors import UserError
from windtunnel.orchestrator.progress import STATES, format_seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db",
        help="MLflow URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    parser.add_argument("--sweep", default=None, help="one sweep (default: every sweep in the store)")


def sweep_status(client: Any, exp: Any) -> dict[str, Any]:
    from windtunnel.orchestrator.tracking import ROLE, effective_status, search_all, trial_runs

    runs = trial_runs(client, exp.experiment_id)
    counts = dict.fromkeys(STATES, 0)
    walls = []
    for run in runs.values():
        st = effective_status(run)
        counts[st] = counts.get(st, 0) + 1
        if st == "finished" and "wt.train_wall_s" in run.data.metrics:
            walls.append(run.data.metrics["wt.train_wall_s"])
    parents = search_all(client, exp.experiment_id, f"tags.`{ROLE}` = 'parent'")
    planned, concurrency = len(runs), 1
    if parents:
        params = parents[0].data.params
        planned = max(planned, int(params.get("n_trials", planned)))
        concurrency = max(1, int(params.get("concurrency", 1)))
    counts["pending"] = max(0, planned - sum(counts.values()))
    todo = counts["pending"] + counts["running"]
    eta = todo * (sum(walls) / len(walls)) / concurrency if walls else None
    return {"sweep": exp.name, "planned": planned, "counts": counts, "eta_s": eta}


def main(args: argparse.Namespace) -> int:
    from windtunnel.orchestrator.driver import resolve_tracking_uri
    from windtunnel.orchestrator.tracking import open_client

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(f"--tracking-uri: no tracking store at {uri.removeprefix('sqlite:///')}")
    client = open_client(uri)
    if args.sweep:
        exp = client.get_experiment_by_name(args.sweep)
        if exp is None:
            raise UserError(f"--sweep: no sweep named {args.sweep!r} in {uri}")
        exps = [exp]
    else:
        exps = [e for e in client.search_experiments() if e.name != "Default"]
        if not exps:
            raise UserError(f"--tracking-uri: no sweeps in {uri}")
    for exp in exps:
        s = sweep_status(client, exp)
        c = s["counts"]
        parts = " | ".join(f"{k} {c[k]}" for k in STATES)
        eta = "--" if s["eta_s"] is None else format_seconds(s["eta_s"])
        print(f"{s['sweep']}: {s['planned']} trials | {parts} | ETA {eta}")
    return 0
