"""params_opt on every Porian et al. (arXiv 2406.19146) configuration versus the authors' own optima.

For each configuration in ../shared/anchors/porian2024 (RefinedWeb and OpenWebText2): the fitted exponent b
with its ci95, and per budget the relative error of our n* against ``optimal_pairs.csv`` (Akima + noise
bootstrap, the authors' analysis) where the authors have an optimum. Prints a table and writes
benchmarks/results/porian_isoflop.json.

    python benchmarks/porian_isoflop.py [--anchors DIR] [--bootstrap 200]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from windtunnel.laws import fit_laws
from windtunnel.laws.anchors import load_porian

CONFIG = ["dataset", "hparams", "warmup", "decay", "param_count", "val"]


def evaluate(root: Path, n_boot: int) -> list[dict]:
    points = pd.read_csv(root / "porian2024" / "isoflop_points.csv")
    pairs = pd.read_csv(root / "porian2024" / "optimal_pairs.csv")
    rows = []
    for key, _ in points.groupby(CONFIG + ["label"]):
        config = dict(zip(CONFIG, key[:-1], strict=True))
        runs = load_porian(config, root=root)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ls = fit_laws(runs, laws=["params_opt"], bootstrap=n_boot)
        law = ls.laws.get("params_opt")
        ref = pairs.merge(pd.DataFrame([config]), on=CONFIG)
        row = {"label": key[-1], **config, "error": ls.errors.get("params_opt")}
        if law is not None:
            ours = {round(np.log2(o["compute"]), 1): o["opt"] for o in law.notes["optima"]}
            pairs_CN = [
                (ours.get(round(np.log2(c), 1), np.nan), n)
                for c, n in zip(ref["flops"], ref["n_star"], strict=True)
            ]
            errs = [abs(o / n - 1) for o, n in pairs_CN if np.isfinite(o) and np.isfinite(n)]
            row |= {
                "b": law.coefficients["b"],
                "ci95": list(law.ci95.get("b", (float("nan"), float("nan")))),
                "max_nstar_rel_err": max(errs) if errs else float("nan"),
                "n_compared": len(errs),
                "n_budgets_ref": int(np.isfinite(ref["n_star"]).sum()),
                "edge_budgets": law.notes.get("edge_warning", []),
            }
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--anchors", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "anchors"
    )
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "porian_isoflop.json"
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = evaluate(args.anchors, args.bootstrap)
    print(f"{'dataset':4} {'label':52} {'b':>6} {'ci95':>16} {'width':>6} {'max n* err':>10} {'n':>5}")
    for r in rows:
        if r.get("error"):
            print(f"{r['dataset']:4} {r['label']:52} not fitted: {r['error']}")
            continue
        lo, hi = r["ci95"]
        print(
            f"{r['dataset']:4} {r['label']:52} {r['b']:6.3f} [{lo:6.3f},{hi:6.3f}] {hi - lo:6.3f} "
            f"{r['max_nstar_rel_err']:10.1%} {r['n_compared']:2d}/{r['n_budgets_ref']:<2d}"
        )
    print(f"{len(rows)} configurations in {time.perf_counter() - t0:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
