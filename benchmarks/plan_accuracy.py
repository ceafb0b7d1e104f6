"""How close the planner's estimate came to a finished sweep: per-trial and whole-sweep comparison.

Run after ``windtunnel run SWEEP.yaml`` in the same directory (its store holds the probes the run used):
``python benchmarks/plan_accuracy.py SWEEP.yaml [--tracking-uri URI]``. Prints the sweep wall estimate, the
median (range) of actual / estimated time of the finished trials (MLflow start..end of each child run), and
the estimate redone with the pruning the sweep really did (each row's time x the share of its tokens the
trial trained). Rows match runs by ``search_group`` tag (search groups) or ``config_hash`` (fixed trials).
"""

from __future__ import annotations

import argparse
import statistics

from windtunnel.orchestrator.driver import resolve_tracking_uri
from windtunnel.orchestrator.plan import SWEEP_FIXED_S, estimate, makespan
from windtunnel.orchestrator.probe import ProbeCache
from windtunnel.orchestrator.spec import load_and_expand
from windtunnel.orchestrator.tracking import open_client


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args()
    spec, plan = load_and_expand(args.sweep)
    uri = resolve_tracking_uri(args.tracking_uri or spec.tracking_uri)
    est = estimate(spec, plan, ProbeCache(uri))
    client = open_client(uri)
    exp = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    keys = [t.config_hash for t in plan.trials] + [g.key for g in plan.searches]
    ratios, actual, pruned_est = [], [], []
    for row, key in zip(est.rows, keys, strict=True):
        mine = [r for r in runs if key in (r.data.tags.get("search_group"), r.data.tags.get("config_hash"))]
        for r in mine:
            if r.info.end_time is None:
                continue
            dur = (r.info.end_time - r.info.start_time) / 1000
            share = min(1.0, r.data.metrics.get("tokens", 0.0) / (row.cfg.steps * row.cfg.batch_tokens))
            actual.append(dur)
            pruned_est.append(row.est_s * share)
            if r.data.tags.get("status") == "finished":
                ratios.append(dur / row.est_s)
    print(f"sources: {sorted({r.source for r in est.rows})}; estimated sweep wall {est.wall_s:.0f} s")
    if ratios:
        print(
            f"finished trials, actual / estimated time: median {statistics.median(ratios):.2f} "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}, n={len(ratios)})"
        )
    print(
        f"trial time summed: actual {sum(actual):.0f} s; estimated {est.run_s:.0f} s without pruning, "
        f"{sum(pruned_est):.0f} s with the sweep's own pruning"
    )
    wall = SWEEP_FIXED_S + makespan(pruned_est, est.slots)
    print(f"sweep wall estimate with the sweep's own pruning: {wall:.0f} s")


if __name__ == "__main__":
    main()
