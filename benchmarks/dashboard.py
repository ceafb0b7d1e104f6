"""Benchmark: open a 1,000-run sweep in the dashboard.

Measures, on one seeded MLflow SQLite store (1,000 trial runs x 20 steps of loss/lr + val_loss):
- server aggregation: read the store + build every figure (cold caches, then cached);
- browser: time from navigation to every chart drawn in headless chromium (first load, then reloads);
- the alternative a researcher would use: ``mlflow.search_runs`` into pandas + the loss histories of the
  same 60 runs + the same charts drawn with matplotlib (PNG), timed end to end.

    python benchmarks/dashboard.py [--runs 1000] [--reloads 3] [--store DIR]

Prints a table and writes benchmarks/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def seed(store_dir: Path, n_runs: int) -> tuple[str, Path, float]:
    from dashboards.seed import SeedSpec, seed_store, write_true_laws

    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    laws = store_dir / "laws.json"
    if (store_dir / "mlflow.db").exists() and laws.exists():
        return uri, laws, 0.0
    t0 = time.perf_counter()
    info = seed_store(uri, SeedSpec(experiment="bench", n_runs=n_runs, n_steps=20, n_running=5, n_failed=5))
    write_true_laws(laws, info["run_ids"][::2])
    return uri, laws, time.perf_counter() - t0


def server_side(uri: str, laws_path: Path) -> dict[str, float]:
    from dashboards import analysis, app, data

    laws = analysis.load_laws(laws_path)
    data.list_experiments(uri)  # import mlflow and open the store first, as a running server has
    for cache in (data.SWEEP_CACHE, data.CURVE_CACHE, app.FIGURE_CACHE):
        cache.clear()
    t0, p0 = time.perf_counter(), time.process_time()
    sweep = data.load_sweeps(uri, "bench", refresh_s=3600)
    t1 = time.perf_counter()
    figs = app.build_figures(uri, "bench", laws, None, None, 6.4e24, refresh_s=3600)
    t2, p2 = time.perf_counter(), time.process_time()
    app.build_figures(uri, "bench", laws, None, None, 6.4e24, refresh_s=3600)
    t3 = time.perf_counter()
    return {
        "n_runs": len(sweep.runs),
        "store_read_s": t1 - t0,
        "figures_cold_s": t2 - t1,
        "server_cold_total_s": t2 - t0,
        "server_cold_cpu_s": p2 - p0,
        "server_cached_s": t3 - t2,
        "n_traces": sum(len(figs[g].data) for g in app.GRAPHS),
    }


def _browser_cpu_s(driver) -> float:
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


def browser_side(uri: str, laws_path: Path, reloads: int) -> dict[str, object]:
    from dashboards import app, data
    from dashboards.browser import browser_available, console_errors, start_chromium, wait_for_graphs

    why = browser_available()
    if why:
        return {"skipped": why}
    for cache in (data.SWEEP_CACHE, data.CURVE_CACHE, app.FIGURE_CACHE):
        cache.clear()
    dash_app = app.create_app(uri, str(laws_path), refresh_s=3600, experiment="bench")
    for cache in (data.SWEEP_CACHE, data.CURVE_CACHE, app.FIGURE_CACHE):
        cache.clear()  # create_app validated the layout once: start the first load from cold caches
    srv = app.serve_in_thread(dash_app)
    driver = start_chromium()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/"
        driver.get("about:blank")
        times, browser_cpu, server_cpu = [], [], []
        for _ in range(1 + reloads):
            c0, s0 = _browser_cpu_s(driver), time.process_time()
            t0 = time.perf_counter()
            driver.get(url)
            wait_for_graphs(driver, len(app.GRAPHS), timeout_s=120)
            times.append(time.perf_counter() - t0)
            browser_cpu.append(_browser_cpu_s(driver) - c0)
            server_cpu.append(time.process_time() - s0)  # this process: the Dash server threads
        errors = console_errors(driver)
    finally:
        driver.quit()
        srv.shutdown()
    return {
        "first_load_s": times[0],
        "first_load_browser_cpu_s": browser_cpu[0],
        "first_load_server_cpu_s": server_cpu[0],
        "reload_browser_cpu_s": browser_cpu[1:],
        "reload_server_cpu_s": server_cpu[1:],
        "reload_s": times[1:],
        "reload_median_s": sorted(times[1:])[len(times[1:]) // 2] if reloads else None,
        "console_errors": len(errors),
    }


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
    df = mlflow.search_runs(experiment_names=["bench"], max_results=100000)
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


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--store", type=Path, default=None, help="reuse a seeded store folder")
    args = ap.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="wt-dash-bench-"))
    store.mkdir(parents=True, exist_ok=True)
    uri, laws, seed_s = seed(store, args.runs)
    server = server_side(uri, laws)
    alt = researcher_alternative(uri, store)
    browser = browser_side(uri, laws, args.reloads)
    load = os.getloadavg()
    result = {
        "runs": args.runs,
        "store": str(store),
        "seed_s": seed_s,
        "server": server,
        "browser": browser,
        "alternative_search_runs_matplotlib": alt,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_end": load[0],
    }
    if "first_load_s" in browser:
        result["ratio_alternative_over_dashboard_first_load"] = alt["total_s"] / browser["first_load_s"]
    rows = [
        ("server: store read (search_runs, 1 query)", server["store_read_s"]),
        ("server: all figures, cold", server["figures_cold_s"]),
        ("server: store read + all figures, cold: CPU", server["server_cold_cpu_s"]),
        ("server: all figures, cached", server["server_cached_s"]),
        ("browser: first full render (cold server)", browser.get("first_load_s", float("nan"))),
        ("browser: first load, chromium CPU", browser.get("first_load_browser_cpu_s", float("nan"))),
        ("browser: reload, full render (median)", browser.get("reload_median_s") or float("nan")),
        ("browser: reload, chromium CPU (median)", _median(browser.get("reload_browser_cpu_s") or [])),
        ("alternative: mlflow.search_runs -> pandas", alt["search_runs_s"]),
        ("alternative: 60 loss histories", alt["histories_s"]),
        ("alternative: matplotlib 6 charts -> PNG", alt["plot_s"]),
        ("alternative: total", alt["total_s"]),
        ("alternative: total CPU", alt["total_cpu_s"]),
    ]
    print(
        f"dashboard benchmark: {server['n_runs']} runs, {server['n_traces']} traces, "
        f"load average {load[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"{'step':48s} {'seconds':>8s}")
    for name, sec in rows:
        print(f"{name:48s} {sec:8.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dashboard.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
