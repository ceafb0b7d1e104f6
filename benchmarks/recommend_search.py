"""Recommender search benchmark: per-width bisection over depth vs the exhaustive (width × depth) grid.

The alternative a researcher would write is a double loop over every d_model and every n_layers in the
aspect band, measuring each configuration with ``trainer.flops`` and keeping the closest to M_opt(C).
Ours (``windtunnel.recommend.search.enumerate_candidates``) bisects the depth per width (M is monotone in
depth) and keeps the depths bracketing the target, widened to every depth within the 5 % band. Both
candidate lists go through the same ranking (``recommend.rank``: within 5 % of the target, best EL,
closest, aspect near Ling's), so the chosen architecture must be the same; the table reports the
configurations built, CPU time and that check.

    python benchmarks/recommend_search.py
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from windtunnel.laws import load_laws
from windtunnel.recommend.recommend import leverage, rank, size_target
from windtunnel.recommend.search import (
    build_model,
    enumerate_candidates,
    family_shapes,
    make_candidate,
    width_grid,
)
from windtunnel.recommend.targets import Constraints

RESULTS = Path(__file__).resolve().parent / "results"


def exhaustive(target: float, c: Constraints) -> tuple[list, int]:
    """Every (width, depth) in the aspect band, each measured; keep those within 10 % of the target M."""
    out, built = [], 0
    for shape, g in family_shapes(c):
        for d_model in width_grid(c):
            for n_layers in range(
                max(1, math.ceil(d_model / c.aspect[1])), math.floor(d_model / c.aspect[0]) + 1
            ):
                cfg = build_model(d_model, n_layers, shape, g, c)
                if cfg is None:
                    continue
                built += 1
                cand = make_candidate(cfg)
                if abs(cand.flops_per_token / target - 1) <= 0.10:
                    out.append(cand)
    return out, built


def count_bisection_builds(target: float, c: Constraints) -> int:
    import windtunnel.recommend.search as search

    calls = {"n": 0}
    original = search.make_candidate

    def counting(cfg):
        calls["n"] += 1
        return original(cfg)

    search.make_candidate = counting
    try:
        search.enumerate_candidates("m", target, c, band=c.m_tolerance)
    finally:
        search.make_candidate = original
    return calls["n"]


def main() -> None:
    laws = load_laws("ling")
    c = Constraints(granularity=(4.0, 8.0, 12.0))
    rows = []
    for compute in (1e22, 6.4e24, 1e26):
        _, m_opt, _ = size_target(laws, compute)

        def el(x, compute=compute):
            v = leverage(laws, x, compute)
            return v[0] if v else None

        t0 = time.process_time()
        fast = enumerate_candidates("m", m_opt, c, band=c.m_tolerance)
        pick_fast = rank(fast, lambda x, m=m_opt: ("m", m), c, el)[0]
        t_fast = time.process_time() - t0
        n_fast = count_bisection_builds(m_opt, c)

        t0 = time.process_time()
        slow, n_slow = exhaustive(m_opt, c)
        pick_slow = rank(slow, lambda x, m=m_opt: ("m", m), c, el)[0]
        t_slow = time.process_time() - t0

        same = pick_fast.model.model_dump() == pick_slow.model.model_dump()
        rows.append(
            {
                "compute": compute,
                "m_opt": m_opt,
                "bisection_configs": n_fast,
                "bisection_cpu_s": t_fast,
                "exhaustive_configs": n_slow,
                "exhaustive_cpu_s": t_slow,
                "speedup": t_slow / t_fast,
                "same_choice": same,
                "choice": f"{pick_fast.model.n_layers}L d{pick_fast.model.d_model} "
                f"G={pick_fast.granularity:.3g}",
                "m_rel_error": pick_fast.flops_per_token / m_opt - 1,
            }
        )
    print(
        f"{'C':>9} {'M_opt':>9} {'bisect cfgs':>11} {'bisect s':>9} {'grid cfgs':>9} {'grid s':>8} "
        f"{'speedup':>7} same  choice (M error)"
    )
    for r in rows:
        print(
            f"{r['compute']:9.3g} {r['m_opt']:9.3g} {r['bisection_configs']:11d} {r['bisection_cpu_s']:9.3f} "
            f"{r['exhaustive_configs']:9d} {r['exhaustive_cpu_s']:8.2f} {r['speedup']:6.1f}x "
            f"{str(r['same_choice']):5} "
            f"{r['choice']} ({r['m_rel_error']:+.2%})"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recommend_search.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
