"""Time and peak memory of ``windtunnel fit`` on a large synthetic run table (default 200,000 rows).

Writes the table (``windtunnel.laws.synthetic.synthetic_runs``, fixed seed) to a CSV, runs
``python -m windtunnel fit --runs CSV`` in a child process and reads the child's wall time and peak resident
memory and CPU time (``resource.getrusage(RUSAGE_CHILDREN)``: ru_maxrss, ru_utime + ru_stime; the CPU time is
the figure to compare on a shared machine). Prints a table and writes
benchmarks/results/fit_large.json.

By default every run's tokens (and so its compute C = 6·N·D) are jittered by a factor exp(U(−0.03, 0.03)), as
in a real run table where each run's realised compute differs from its budget's nominal value (all runs stay
in their budget: ``base.budget_labels`` groups within ±0.05 dex); ``--no-jitter`` keeps the nominal budgets
(a handful of distinct compute values).

    python benchmarks/fit_large.py [--rows 200000] [--bootstrap 200] [--laws a,b] [--no-jitter] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from windtunnel.laws.synthetic import synthetic_runs

HERE = Path(__file__).resolve().parent


def run_table(rows: int, jitter: bool) -> pd.DataFrame:
    """The synthetic table (seed 0); with ``jitter``, tokens and compute × exp(U(−0.03, 0.03)) per run
    (seed 1), so every run has its own compute."""
    runs = synthetic_runs(rows, seed=0)
    if jitter:
        f = np.exp(np.random.default_rng(1).uniform(-0.03, 0.03, len(runs)))
        runs = runs.assign(tokens=runs["tokens"] * f, compute=runs["compute"] * f)
    return runs


def measure(rows: int, bootstrap: int, laws: str | None, workdir: Path, jitter: bool = True) -> dict:
    """Generate the table, run ``fit`` on it in a child process; return rows, wall_s, peak_rss_mib, rc."""
    csv = workdir / "runs.csv"
    table = run_table(rows, jitter)
    table.to_csv(csv, index=False)
    cmd = [sys.executable, "-m", "windtunnel", "fit", "--runs", str(csv), "--out", str(workdir / "laws.json")]
    cmd += ["--bootstrap", str(bootstrap)] + (["--laws", laws] if laws else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("wrote")]
    return {
        "rows": rows,
        "distinct_compute": int(table["compute"].nunique()),
        "jitter": jitter,
        "bootstrap": bootstrap,
        "laws": laws or "default",
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "rc": proc.returncode,
        "summary": summary[-1] if summary else proc.stderr.strip().splitlines()[-1:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--laws", default=None)
    ap.add_argument("--no-jitter", dest="jitter", action="store_false", help="nominal budgets' compute")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fit_large.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.rows, args.bootstrap, args.laws, Path(tmp), args.jitter)
    print(
        f"{'rows':>8} {'bootstrap':>9} {'laws':>10} {'wall_s':>8} {'cpu_s':>8} {'peak_rss_MiB':>12} {'rc':>3}"
    )
    print(
        f"{result['rows']:>8} {result['bootstrap']:>9} {result['laws']:>10} {result['wall_s']:>8} "
        f"{result['cpu_s']:>8} {result['peak_rss_mib']:>12} {result['rc']:>3}"
    )
    print(result["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0 if result["rc"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
