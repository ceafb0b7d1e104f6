"""All targets of one validation ladder against its frontier law, in one figure and one table.

For the LR-searched ladder (``experiments/results/windtunnel_validation_cpu_lr*/``) the targets at 30x, 50x
and 100x were each predicted (and recorded) before they trained. This script reads the committed run table
and summaries and shows:

- the ladder's frontier points (each budget's best run), the frontier law fitted on them (the engine's
  ``fit_frontier``, L = E + A·C^(−alpha)), every target's recorded prediction with its 95 % interval, and its
  observed seeds;
- the local slope −d log L / d log C across the ladder's top three budgets and between consecutive targets
  (a power law without a floor has one slope everywhere; a flattening curve's slope falls).

    python benchmarks/validation_targets.py [--out FIGURE.png]

Prints the table; writes the figure (default: next to the 100x study's results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments/results"
STUDIES = [
    "windtunnel_validation_cpu_lr",
    "windtunnel_validation_cpu_lr_50x",
    "windtunnel_validation_cpu_lr_100x",
]


def local_slope(points: list[tuple[float, float]]) -> float:
    """−b of the least-squares line log L = a + b·log C through ``points``."""
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(-np.polyfit(x, y, 1)[0])


def summaries() -> list[dict]:
    """The committed ``summary.json`` of each study of the LR-searched ladder that has one, 30x first, with
    the study's name added as ``study``."""
    paths = {name: RESULTS / name / "summary.json" for name in STUDIES}
    return [{**json.loads(path.read_text()), "study": name} for name, path in paths.items() if path.is_file()]


def ladder_runs() -> pd.DataFrame:
    """The ladder's finished runs (no target run) from the newest committed run table."""
    for name in reversed(STUDIES):
        path = RESULTS / name / "runs.csv"
        if path.is_file():
            runs = pd.read_csv(path)
            return runs[(runs["status"] == "finished") & (runs["study"] != "target")].reset_index(drop=True)
    raise SystemExit("no runs.csv of the LR-searched validation study under experiments/results")


def main() -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from windtunnel.laws.base import budget_labels
    from windtunnel.laws.powerlaw import fit_frontier, frontier_points, frontier_value_log

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / STUDIES[-1] / "targets_vs_frontier.png")
    args = ap.parse_args()
    found, runs = summaries(), ladder_runs()
    C, L = runs["compute"].to_numpy(float), runs["loss"].to_numpy(float)
    labels, _ = budget_labels(C)
    fp = frontier_points(C, L, labels)
    ladder = sorted(zip(C[fp], L[fp], strict=True))
    coefs, x = fit_frontier(C[fp], L[fp])
    targets = [(s["target_compute"], s["observed_loss"]) for s in found]

    print(f"frontier on the ladder: E={coefs['E']:.3g}, A={coefs['A']:.4g}, alpha={coefs['alpha']:.4f}")
    print("| target | recorded prediction [95 % PI] | law | observed (seeds) | error | epochs |")
    for s in found:
        lo, hi = s["pi95"]
        seeds = " / ".join(f"{v:.4f}" for v in s["observed_losses"])
        epochs = s.get("target_epochs", float("nan"))
        factor, pred = s["extrapolation_factor"], s["predicted_loss"]
        print(f"| {factor:.0f}x | {pred:.4f} [{lo:.3f}, {hi:.3f}] | {s['law']} | "
              f"{s['observed_loss']:.4f} ({seeds}) | {s['error']:+.4f} | {epochs:.2f} |")  # fmt: skip
    slopes = {"ladder top 3 budgets": local_slope(ladder[-3:]), "fitted frontier (mean)": coefs["alpha"]}
    for a, b in zip(found, found[1:], strict=False):
        pair = [(a["target_compute"], a["observed_loss"]), (b["target_compute"], b["observed_loss"])]
        slopes[f"{a['extrapolation_factor']:.0f}x -> {b['extrapolation_factor']:.0f}x"] = local_slope(pair)
    for name, v in slopes.items():
        print(f"local slope, {name}: {v:.4f}")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(C, L, s=8, color="0.75", label="ladder runs")
    ax.scatter(*zip(*ladder, strict=True), s=22, color="k", label="ladder frontier points")
    grid = np.geomspace(min(C) / 1.5, max(t[0] for t in targets) * 1.5, 200)
    ax.plot(grid, frontier_value_log(x, grid), color="C0", label=f"frontier law, alpha {coefs['alpha']:.3f}")
    for i, s in enumerate(found):
        c = s["target_compute"]
        lo, hi = s["pi95"]
        p = s["predicted_loss"]
        ax.errorbar([c], [p], yerr=[[p - lo], [hi - p]], fmt="o", color="C0", mfc="white", capsize=4,
                    label="recorded prediction, 95 % PI" if i == 0 else None)  # fmt: skip
        ax.scatter([c] * len(s["observed_losses"]), s["observed_losses"], marker="x", color="C3", zorder=5,
                   label="observed target (per seed)" if i == 0 else None)  # fmt: skip
        tag = f"{s['extrapolation_factor']:.0f}x, {s['law']}: {s['error']:+.3f}"
        ax.annotate(tag, (c, s["observed_loss"]),
                    textcoords="offset points", xytext=(-90, -24), fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.set_xlabel("compute C = M·D (FLOPs)")
    ax.set_ylabel("final validation loss (nats)")
    ax.set_title("one ladder, three targets predicted before training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
