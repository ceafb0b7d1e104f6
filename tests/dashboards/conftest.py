"""Fixtures: a real MLflow SQLite store seeded with sweep-shaped runs and its laws.json; headless chromium."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from dashboards.seed import SeedSpec, seed_store, write_true_laws

N_RUNS, N_STEPS, N_RUNNING, N_FAILED = 36, 20, 2, 1
OUTPUT_DIR = Path(__file__).resolve().parents[2] / "test-output"


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    spec = SeedSpec(experiment="demo", n_runs=N_RUNS, n_steps=N_STEPS, n_running=N_RUNNING, n_failed=N_FAILED)
    info = seed_store(uri, spec)
    # the law "fit" used half of the runs: the residual chart then has in-fit and held-out traces
    laws = write_true_laws(root / "laws.json", run_ids=info["run_ids"][::2])
    return {
        "uri": uri,
        "db": root / "mlflow.db",
        "experiment": "demo",
        "laws": str(laws),
        "spec": spec,
        **info,
    }


QUICKSTART_LAWS = ["lr_opt", "frontier"]  # what experiments/quickstart.yaml fits


@pytest.fixture(scope="session")
def quickstart_laws(store: dict) -> str:
    """The laws the quickstart sweep fits (lr_opt, frontier), fitted by the law engine on the seeded store's
    finished runs (compute 3e13-3e15 FLOPs): a law file the recommendation policy must complete with ling."""
    from dashboards.data import load_sweeps
    from windtunnel.laws import fit_laws

    runs = load_sweeps(store["uri"], store["experiment"]).runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lawset = fit_laws(runs[runs["state"] == "finished"], laws=QUICKSTART_LAWS, bootstrap=20, seed=0)
    assert sorted(lawset.laws) == sorted(QUICKSTART_LAWS), lawset.errors
    return str(lawset.to_json(store["db"].parent / "quickstart-laws.json"))


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT_DIR.mkdir(exist_ok=True)
    return OUTPUT_DIR


@pytest.fixture(scope="session")
def chromium():
    from dashboards.browser import browser_available, start_chromium

    why = browser_available()
    if why:
        pytest.skip(f"browser tests need Debian chromium: {why}")
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = start_chromium()
    yield driver
    driver.quit()
