"""What the dashboard shows, built lazily per tab on the server and cached per store version.

The page is split into tabs: a figure is built only when its tab is shown (a 1,000-run sweep's nine run and
law charts are ≈1 MB of JSON and ~100 traces), each figure is cached under (tracking URI, experiment, store
version, filters, target, law file, graph), and the store version is the cheap aggregate of
``dashboards.data.store_version`` (runs count, newest start/end, runs alive), so a finished sweep is read
once and every later open is a cache hit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import plotly.graph_objects as go

from dashboards import analysis, figures
from dashboards.adaptive_panel import adaptive_figure, load_rounds
from dashboards.data import Cache, load_sweeps, loss_curves
from dashboards.validation import load_study
from dashboards.validation_figure import validation_figure
from windtunnel.laws import LawSet
from windtunnel.recommend.policy import RECOMMEND_COMPUTE

DEFAULT_TARGET = RECOMMEND_COMPUTE  # Ling-1T's training compute (docs/DESIGN.md)
GRAPHS = [
    *("progress", "curves", "isoflop", "frontier", "lr", "batch", "lev-A", "lev-G", "resid"),
    *("validation", "adaptive"),
]
# tab value -> (label, graphs on it); the first tab is what a page open draws
TABS: dict[str, tuple[str, list[str]]] = {
    "overview": ("Progress & frontier", ["progress", "frontier"]),
    "curves": ("Loss curves", ["curves"]),
    "isoflop": ("IsoFLOP", ["isoflop"]),
    "hparams": ("LR & batch laws", ["lr", "batch"]),
    "leverage": ("Efficiency leverage", ["lev-A", "lev-G"]),
    "backtest": ("Backtest residuals", ["resid"]),
    "validation": ("Validation study", ["validation"]),
    "adaptive": ("Adaptive design", ["adaptive"]),
}
FIRST_TAB = "overview"
FIGURE_CACHE = Cache(256)
RECOMMEND_CACHE = Cache(32)
assert sorted(g for _, gs in TABS.values() for g in gs) == sorted(GRAPHS)


def tab_of(graph: str) -> str:
    return next(t for t, (_, gs) in TABS.items() if graph in gs)


def build_figures(
    tracking_uri: str,
    experiment: str,
    laws: LawSet,
    sweeps: list[str] | None,
    families: list[str] | None,
    target: float,
    refresh_s: float = 5.0,
    curve_limit: int = 60,
    graphs: Iterable[str] | None = None,
    reader: str = "auto",
) -> dict[str, Any]:
    """The figures ``graphs`` (default: all of ``GRAPHS``) for one selection, as graph-id -> Figure, plus
    ``summary`` (n_runs, states, load_s, aggregate_s, version). Each figure is built at most once per store
    version and selection; only the inputs a figure needs are computed (loss histories for ``curves``,
    IsoFLOP optima for ``isoflop``, residuals for ``resid``)."""
    wanted = list(GRAPHS if graphs is None else graphs)
    unknown = set(wanted) - set(GRAPHS)
    if unknown:
        raise ValueError(f"unknown graphs {sorted(unknown)}")
    data = load_sweeps(tracking_uri, experiment, refresh_s, reader=reader)
    # a filter that selects everything is no filter (one cache entry, one computation)
    sweeps = None if not sweeps or set(sweeps) >= set(data.sweeps) else sorted(sweeps)
    families = None if not families or set(families) >= set(data.families) else sorted(families)
    base = (
        tracking_uri,
        experiment,
        reader,
        data.version,
        tuple(sweeps or ()),
        tuple(families or ()),
        float(target),
        laws.name,
        id(laws),
        curve_limit,
    )
    t0 = time.perf_counter()
    runs = data.select(sweeps, families)

    def progress() -> go.Figure:
        prog = data.progress()
        return figures.progress_figure(prog[prog["sweep"].isin(sweeps)] if sweeps else prog)

    builders: dict[str, Callable[[], go.Figure]] = {
        "progress": progress,
        "curves": lambda: figures.loss_curves_figure(
            loss_curves(tracking_uri, runs, limit=curve_limit, reader=reader), runs
        ),
        "isoflop": lambda: figures.isoflop_figure(analysis.isoflop_profiles(runs, laws), laws),
        "frontier": lambda: figures.frontier_figure(runs, laws, target),
        "lr": lambda: figures.hparam_figure(runs, laws, "lr", target),
        "batch": lambda: figures.hparam_figure(runs, laws, "batch", target),
        "lev-A": lambda: figures.leverage_figure(laws, target, "A"),
        "lev-G": lambda: figures.leverage_figure(laws, target, "G"),
        "resid": lambda: figures.residuals_figure(analysis.residuals(runs, laws), laws),
        # the experiment's study as a whole: the sweep and family filters do not cut its ladder or target
        "validation": lambda: validation_figure(load_study(data, tracking_uri, laws)),
        "adaptive": lambda: adaptive_figure(load_rounds(data, tracking_uri)),
    }
    out: dict[str, Any] = {}
    for g in wanted:
        fig = FIGURE_CACHE.get_or_compute(base + (g,), builders[g])
        out[g] = fig
    counts = runs["state"].value_counts().to_dict()
    out["summary"] = {
        "n_runs": int(len(runs)),
        "states": {k: int(v) for k, v in counts.items()},
        "load_s": data.load_s,
        "aggregate_s": time.perf_counter() - t0,
        "version": data.version,
    }
    return out


def summary_text(summary: dict[str, Any]) -> str:
    states = ", ".join(f"{k}: {v}" for k, v in sorted(summary["states"].items()))
    return (
        f"{summary['n_runs']} runs ({states}) · store read {summary['load_s']:.2f} s · "
        f"aggregated {summary['aggregate_s']:.2f} s · updated {time.strftime('%H:%M:%S')}"
    )


def recommendation(laws: LawSet, target: float) -> analysis.RecommendationView:
    """``analysis.recommendation`` cached per (law file, target): the law file is read once at start."""
    return RECOMMEND_CACHE.get_or_compute(
        (laws.name, id(laws), float(target)), lambda: analysis.recommendation(laws, float(target))
    )
