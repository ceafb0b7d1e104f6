"""Benchmark: open a 1,000-run sweep in the dashboard, new path against the old one, in the same run.

On one seeded MLflow SQLite store (1,000 trial runs x 20 steps of loss/lr + val_loss), for two app variants
served side by side from this process:

- ``new``: the default app: bulk SQL read of the store, tabs (the first tab's 2 charts built, sent and drawn
  on open, the others when picked), plotly.js preloaded with the page;
- ``old``: the former path, still selectable: ``MlflowClient.search_runs`` paging + one
  ``get_metric_history`` per curve, all 9 charts on one page (``reader="mlflow", single_page=True``);

it measures
- server: the open request (``/_dash-layout``: store read, figures, JSON) with cold caches, then cached;
  for ``new`` also each tab's callback (cold, then cached);
- browser: navigation -> every chart of the page drawn, in headless Debian chromium, first visit (fresh
  browser profile and cold server caches) and reloads (median), with the CPU seconds chromium used;
  for ``new`` also each tab switch (click -> its charts drawn);
- the alternative a researcher would use: ``mlflow.search_runs`` into pandas + the loss histories of 60
  runs + six matplotlib charts to PNG, timed end to end.

    python benchmarks/dashboard.py [--runs 1000] [--reloads 5] [--store DIR]

Prints a table and writes benchmarks/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
EXPERIMENT = "bench"
VARIANTS = {
    "new": {"reader": "auto", "single_page": False},
    "old": {"reader": "mlflow", "single_page": True},
}


def seed(store_dir: Path, n_runs: int) -> tuple[str, Path, float]:
    from dashboards.seed import SeedSpec, seed_store, write_true_laws

    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    laws = store_dir / "laws.json"
    if (store_dir / "mlflow.db").exists() and laws.exists():
        return uri, laws, 0.0
    t0 = time.perf_counter()
    spec = SeedSpec(experiment=EXPERIMENT, n_runs=n_runs, n_steps=20, n_running=5, n_failed=5)
    info = seed_store(uri, spec)
    write_true_laws(laws, info["run_ids"][::2])
    return uri, laws, time.perf_counter() - t0


def clear_caches() -> None:
    from dashboards import data, views

    for cache in (data.SWEEP_CACHE, data.CURVE_CACHE, views.FIGURE_CACHE, views.RECOMMEND_CACHE):
        cache.clear()


def make_app(uri: str, laws: Path, variant: str) -> Any:
    from dashboards.app import create_app

    # refresh_s=3600: the seeded store has live runs; keep one store version for the whole measurement
    return create_app(uri, str(laws), refresh_s=3600, experiment=EXPERIMENT, **VARIANTS[variant])


def _timed(fn: Any) -> tuple[float, float, Any]:
    t0, p0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - p0, out


def _tab_body(tab: str) -> dict:
    from dashboards.views import DEFAULT_TARGET

    ids = [
        "tab-content.children",
        '{"name":["ALL"],"type":"wt-graph"}.figure',
        "summary.children",
        "view-key.data",
    ]
    return {
        "output": ".." + "...".join(ids) + "..",
        "outputs": [
            {"id": "tab-content", "property": "children"},
            [],  # no graph of this tab on the page yet: the callback sends the tab's graphs
            {"id": "summary", "property": "children"},
            {"id": "view-key", "property": "data"},
        ],
        "inputs": [
            {"id": "experiment", "property": "value", "value": EXPERIMENT},
            {"id": "sweeps", "property": "value", "value": []},
            {"id": "families", "property": "value", "value": []},
            {"id": "target", "property": "value", "value": DEFAULT_TARGET},
            {"id": "tick", "property": "n_intervals", "value": 1},
            {"id": "tabs", "property": "value", "value": tab},
        ],
        "changedPropIds": ["tabs.value"],
        "state": [{"id": "view-key", "property": "data", "value": None}],
    }


def server_side(uri: str, laws: Path, variant: str) -> dict[str, Any]:
    """The open request and (new) each tab's callback through Flask's test client, cold then cached."""
    from dashboards.views import TABS

    client = make_app(uri, laws, variant).server.test_client()
    clear_caches()
    cold_s, cold_cpu, resp = _timed(lambda: client.get("/_dash-layout"))
    warm_s, _, _ = _timed(lambda: client.get("/_dash-layout"))
    out: dict[str, Any] = {
        "open_cold_s": cold_s,
        "open_cold_cpu_s": cold_cpu,
        "open_cached_s": warm_s,
        "open_json_bytes": len(resp.get_data()),
    }
    if variant == "new":
        tabs = {}
        for tab in TABS:
            body = json.dumps(_tab_body(tab))
            post = lambda b=body: client.post(  # noqa: E731
                "/_dash-update-component", data=b, content_type="application/json"
            )
            c, _, r = _timed(post)
            w, _, _ = _timed(post)
            assert r.status_code == 200, (tab, r.status_code)
            tabs[tab] = {"cold_s": c, "cached_s": w, "json_bytes": len(r.get_data())}
        out["tabs"] = tabs
    return out


def _browser_cpu_s(driver: Any) -> float:
    """CPU seconds used so far by the chromium processes under this driver's chromedriver."""
    import psutil

    total = 0.0
    for proc in psutil.Process(driver.service.process.pid).children(recursive=True):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def browser_side(uri: str, laws: Path, reloads: int) -> dict[str, Any]:
    """Each variant in its own headless chromium (fresh profile: a first visit caches nothing) and server;
    first visits one after the other from cold server caches, then reloads interleaved new, old, new, ...
    so that both see the same machine load."""
    from dashboards.app import GRAPHS, serve_in_thread
    from dashboards.browser import (
        browser_available,
        console_errors,
        open_tab,
        start_chromium,
        wait_for_graph_ids,
    )
    from dashboards.views import FIRST_TAB, TABS

    why = browser_available()
    if why:
        return {v: {"skipped": why} for v in VARIANTS}
    runs: dict[str, dict[str, Any]] = {}
    try:
        for v in VARIANTS:
            graphs = GRAPHS if VARIANTS[v]["single_page"] else TABS[FIRST_TAB][1]
            runs[v] = {"ids": [f"g-{g}" for g in graphs], "driver": start_chromium(), "srv": None}
            runs[v]["srv"] = serve_in_thread(make_app(uri, laws, v))
            runs[v]["driver"].get("about:blank")
            runs[v].update(times=[], browser_cpu=[], server_cpu=[])

        def load(v: str) -> None:
            r = runs[v]
            driver = r["driver"]
            c0, s0 = _browser_cpu_s(driver), time.process_time()
            t0 = time.perf_counter()
            driver.get(f"http://127.0.0.1:{r['srv'].server_port}/")
            wait_for_graph_ids(driver, r["ids"], timeout_s=180)
            r["times"].append(time.perf_counter() - t0)
            r["browser_cpu"].append(_browser_cpu_s(driver) - c0)
            r["server_cpu"].append(time.process_time() - s0)  # this process: the Dash server threads

        for v in VARIANTS:
            clear_caches()  # create_app validated the layout once: each first visit starts cold
            load(v)
        for _ in range(reloads):
            for v in VARIANTS:
                load(v)
        tabs: dict[str, float] = {}
        driver = runs["new"]["driver"]
        for rnd in range(2):  # first visit of each tab (cold server figures), then again (cached)
            for tab, (_, tab_graphs) in [*list(TABS.items())[1:], list(TABS.items())[0]]:
                t0 = time.perf_counter()
                open_tab(driver, tab, [f"g-{g}" for g in tab_graphs], timeout_s=180)
                tabs[f"{tab}{'' if rnd == 0 else ' (again)'}"] = time.perf_counter() - t0
        errors = {v: console_errors(r["driver"]) for v, r in runs.items()}
    finally:
        for r in runs.values():
            r["driver"].quit()
            if r["srv"] is not None:
                r["srv"].shutdown()
    out = {}
    for v, r in runs.items():
        warm, warm_cpu = r["times"][1:], r["browser_cpu"][1:]
        out[v] = {
            "graphs_on_open": len(r["ids"]),
            "first_load_s": r["times"][0],
            "first_load_browser_cpu_s": r["browser_cpu"][0],
            "first_load_server_cpu_s": r["server_cpu"][0],
            "reload_s": warm,
            "reload_browser_cpu_s": warm_cpu,
            "reload_server_cpu_s": r["server_cpu"][1:],
            "reload_median_s": statistics.median(warm) if warm else None,
            "reload_browser_cpu_median_s": statistics.median(warm_cpu) if warm else None,
            "console_errors": len(errors[v]),
        }
    out["new"]["tab_switch_s"] = tabs
    return out


def researcher_alternative(uri: str, outdir: Path) -> dict[str, float]:
    """What one would write in a notebook: search_runs -> pandas, 60 histories, matplotlib charts to PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    MlflowClient(uri).search_experiments()  # store opened (engine created) before timing, as for ours
    t0, p0 = time.perf_counter(), time.process_time()
    df = mlflow.search_runs(experiment_names=[EXPERIMENT], max_results=100000)
    df = df[df["tags.windtunnel.role"] == "trial"]
    t1 = time.perf_counter()
    client = MlflowClient(uri)
    hist = {r: client.get_metric_history(r, "loss") for r in df["run_id"].head(60)}
    t2 = time.perf_counter()
    done = df[df["tags.status"] == "finished"]
    C, L = done["metrics.rt.compute"].to_numpy(), done["metrics.rt.loss"].to_numpy()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for h in hist.values():
        axes[0, 0].loglog([m.step for m in h], [m.value for m in h], lw=0.7)
    axes[0, 1].scatter(done["metrics.rt.params"], L, s=5)
    axes[0, 1].set_xscale("log")
    axes[0, 2].loglog(C, L, ".")
    axes[1, 0].loglog(C, done["metrics.rt.lr"], ".")
    axes[1, 1].loglog(C, done["metrics.rt.batch_tokens"], ".")
    axes[1, 2].bar(*np.unique(df["tags.status"], return_counts=True))
    fig.savefig(outdir / "alternative.png", dpi=100)
    plt.close(fig)
    t3, p3 = time.perf_counter(), time.process_time()
    return {
        "search_runs_s": t1 - t0,
        "histories_s": t2 - t1,
        "plot_s": t3 - t2,
        "total_s": t3 - t0,
        "total_cpu_s": p3 - p0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--reloads", type=int, default=5)
    ap.add_argument("--store", type=Path, default=None, help="reuse a seeded store folder")
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    store = args.store or Path(tempfile.mkdtemp(prefix="wt-dash-bench-"))
    store.mkdir(parents=True, exist_ok=True)
    uri, laws, seed_s = seed(store, args.runs)
    load0 = os.getloadavg()[0]
    server = {v: server_side(uri, laws, v) for v in VARIANTS}
    alt = researcher_alternative(uri, store)
    browser = browser_side(uri, laws, args.reloads)
    load1 = os.getloadavg()[0]
    result: dict[str, Any] = {
        "runs": args.runs,
        "store": str(store),
        "seed_s": seed_s,
        "server": server,
        "browser": browser,
        "alternative_search_runs_matplotlib": alt,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1m_start_end": [load0, load1],
    }
    new, old = browser["new"], browser["old"]
    if "first_load_s" in new and "first_load_s" in old:
        result["ratios"] = {
            "old_over_new_first_load": old["first_load_s"] / new["first_load_s"],
            "old_over_new_reload": old["reload_median_s"] / new["reload_median_s"],
            "old_over_new_reload_browser_cpu": old["reload_browser_cpu_median_s"]
            / new["reload_browser_cpu_median_s"],
            "alternative_over_new_first_load": alt["total_s"] / new["first_load_s"],
            "alternative_over_new_reload": alt["total_s"] / new["reload_median_s"],
        }
    rows = []
    for v in VARIANTS:
        s, b = server[v], browser[v]
        rows += [
            (f"{v}: server open (/_dash-layout), cold caches", s["open_cold_s"]),
            (f"{v}: server open, cold: CPU", s["open_cold_cpu_s"]),
            (f"{v}: server open, cached", s["open_cached_s"]),
            (f"{v}: open JSON (MB)", s["open_json_bytes"] / 1e6),
            (f"{v}: browser first visit, full render", b.get("first_load_s", float("nan"))),
            (f"{v}: browser first visit, chromium CPU", b.get("first_load_browser_cpu_s", float("nan"))),
            (f"{v}: browser reload, full render (median)", b.get("reload_median_s") or float("nan")),
            (
                f"{v}: browser reload, chromium CPU (median)",
                b.get("reload_browser_cpu_median_s") or float("nan"),
            ),
        ]
    for tab, t in server["new"].get("tabs", {}).items():
        rows.append((f"new: tab {tab} callback cold / cached", (t["cold_s"], t["cached_s"])))
    for tab, t in browser["new"].get("tab_switch_s", {}).items():
        rows.append((f"new: browser tab switch {tab}", t))
    rows += [
        ("alternative: mlflow.search_runs -> pandas", alt["search_runs_s"]),
        ("alternative: 60 loss histories", alt["histories_s"]),
        ("alternative: matplotlib 6 charts -> PNG", alt["plot_s"]),
        ("alternative: total", alt["total_s"]),
        ("alternative: total CPU", alt["total_cpu_s"]),
    ]
    print(f"dashboard benchmark: {args.runs} runs, load {load0:.1f} -> {load1:.1f}, {os.cpu_count()} CPUs")
    print(f"{'step':56s} {'seconds':>14s}")
    for name, sec in rows:
        val = " / ".join(f"{x:.2f}" for x in sec) if isinstance(sec, tuple) else f"{sec:.2f}"
        print(f"{name:56s} {val:>14s}")
    for k, v in result.get("ratios", {}).items():
        print(f"ratio {k:50s} {v:8.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dashboard.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
