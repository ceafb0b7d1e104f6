"""After a validation study's target ran: pure power laws L = A·C^(−alpha) through the best ladder run of each
compute budget, fitted on all budgets, on the budgets whose best run is not at a sampled edge, and on the top
four, each extrapolated to the target's compute — how much the smallest budgets move the prediction.

    python benchmarks/validation_posthoc.py [experiments/results/windtunnel_validation_cpu_1layer]

Reads the study's committed ``runs.csv`` and ``summary.json``; prints one line per fit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from windtunnel.laws.base import budget_labels

DEFAULT = Path(__file__).resolve().parents[1] / "experiments/results/windtunnel_validation_cpu_1layer"


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    runs = pd.read_csv(folder / "runs.csv")
    summary = json.loads((folder / "summary.json").read_text())
    ladder = runs[(runs["study"] != "target") & (runs["status"] == "finished")]
    labels, _ = budget_labels(ladder["compute"].to_numpy(float))
    best, edge = [], []
    for k in np.unique(labels):
        group = ladder[labels == k]
        row = group.loc[group["loss"].idxmin()]
        best.append((float(row["compute"]), float(row["loss"])))
        edge.append(row["params"] in (group["params"].min(), group["params"].max()))
    C, L = np.array(best).T
    c_t, observed = summary["target_compute"], summary["observed_loss"]
    interior = ~np.array(edge)
    for name, sel in (("all budgets", slice(None)), ("bracketed", interior), ("top 4", slice(-4, None))):
        slope, icpt = np.polyfit(np.log(C[sel]), np.log(L[sel]), 1)
        pred = float(np.exp(icpt + slope * np.log(c_t)))
        print(f"{name:<12} alpha {-slope:.4f}  L({c_t:.3g}) = {pred:.3f}  (observed {observed:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
