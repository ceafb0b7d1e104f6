"""After a validation study's target ran:

1. pure power laws L = A·C^(−alpha) through the best ladder run of each compute budget, fitted on all
   budgets, on the budgets whose best run is not at a sampled edge, and on the top four, each extrapolated to
   the target's compute — how much the smallest budgets move the prediction;
2. the ladder refitted by the law engine of this checkout (the study's fit laws and bootstrap, seed 0), both
   loss laws' predictions at the recorded target point and the law ``choose_law`` takes now — what the
   current engine would have predicted from the same ladder (post hoc: it has seen nothing of the target,
   but the code may have changed after the target's result was known; say so where it is quoted).

    python benchmarks/validation_posthoc.py [experiments/results/windtunnel_validation_cpu_1layer ...]

Reads each study's committed ``runs.csv`` and ``summary.json``; prints one line per fit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from windtunnel.laws.base import budget_labels

DEFAULT = Path(__file__).resolve().parents[1] / "experiments/results/windtunnel_validation_cpu_1layer"


def refit(ladder: pd.DataFrame, summary: dict) -> None:
    """The current engine's loss laws on the study's ladder, at the recorded target point."""
    from windtunnel.laws import fit_laws
    from windtunnel.predict import predict_loss

    laws = ["parametric", "frontier"]
    lawset = fit_laws(ladder, laws=laws, bootstrap=100, seed=0)
    p = predict_loss(lawset, summary["prediction"]["x"])
    observed = summary["observed_loss"]
    for name in laws:
        v = {"predicted": p.predicted, "pi95": p.pi95} if name == p.law else p.alternatives[name]
        lo, hi = v["pi95"]
        mark = "  <- chosen" if name == p.law else ""
        print(
            f"engine {name:<10} {v['predicted']:.3f} [{lo:.3f}, {hi:.3f}]  error "
            f"{observed - v['predicted']:+.3f}{mark}"
        )
    print(f"       {p.notes[-1]}")


def study(folder: Path) -> None:
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
    refit(ladder.reset_index(drop=True), summary)


def main() -> int:
    for folder in [Path(a) for a in sys.argv[1:]] or [DEFAULT]:
        print(f"== {folder.name}")
        study(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
