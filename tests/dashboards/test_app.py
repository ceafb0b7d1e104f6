"""The Dash app on a seeded store, no browser: figures, token gate, bind safety, read-only callbacks."""

from __future__ import annotations

import argparse
import json

import pytest

from dashboards import analysis
from dashboards.app import GRAPHS, build_figures, create_app
from dashboards.cli_dashboard import check_bind, is_loopback

# trace counts for the seeded store (36 runs: 2 sweeps, dense+moe, 33 finished / 2 running / 1 failed)
EXPECTED_TRACES = {
    "progress": 3,  # one bar trace per state: finished, running, failed
    "curves": 36,  # one line per run
    "isoflop": 13,  # 4 budgets x (markers, parabola, optimum) + the params_opt law's crosses
    "frontier": 5,  # runs (dense), runs (moe), band, fit, target
    "lr": 4,  # runs, near-optimal runs, band, law
    "batch": 4,
    "lev-A": 6,  # G in 1, 2, 4, 8, 12, 16
    "lev-G": 4,  # A in 1.6%, 3.1%, 7.8%, 25%
    "resid": 2,  # in fit, held out
}
TOKEN = "s3cret-token-123"


def test_figures_for_seeded_store(store: dict) -> None:
    laws = analysis.load_laws(store["laws"])
    figs = build_figures(store["uri"], store["experiment"], laws, None, None, 6.4e24)
    assert {g: len(figs[g].data) for g in GRAPHS} == EXPECTED_TRACES
    assert figs["frontier"].layout.xaxis.type == "log" and figs["lr"].layout.yaxis.type == "log"
    # the frontier is drawn out to the target compute
    assert max(figs["frontier"].data[3].x) == pytest.approx(6.4e24)
    # filters: selecting dense only drops the moe traces; a selection of everything is the unfiltered entry
    dense = build_figures(store["uri"], store["experiment"], laws, None, ["dense"], 6.4e24)
    assert len(dense["curves"].data) == 30 and len(dense["frontier"].data) == 4
    both = build_figures(store["uri"], store["experiment"], laws, None, ["dense", "moe"], 6.4e24)
    assert {g: len(both[g].data) for g in GRAPHS} == EXPECTED_TRACES


def test_isoflop_sweep_alone_has_convex_profiles(store: dict) -> None:
    laws = analysis.load_laws(store["laws"])
    figs = build_figures(store["uri"], store["experiment"], laws, ["isoflop"], None, 6.4e24)
    names = [t.name for t in figs["isoflop"].data]
    assert sum(n.endswith("optimum") for n in names) == 3  # the 4th budget has only 2 finished runs


def test_token_gate(store: dict) -> None:
    app = create_app(store["uri"], store["laws"], token=TOKEN)
    client = app.server.test_client()
    assert client.get("/").status_code == 401
    assert client.get("/_dash-layout").status_code == 401
    assert client.get("/?token=wrong-token-xyz").status_code == 401
    ok = client.get(f"/?token={TOKEN}")
    assert ok.status_code == 200 and "windtunnel_token" in ok.headers.get("Set-Cookie", "")
    assert client.get("/_dash-layout").status_code == 200  # the cookie now carries the token
    fresh = app.server.test_client()
    assert fresh.get("/_dash-layout", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_bind_requires_token() -> None:
    from windtunnel.cli import UserError

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(UserError):
        check_bind("0.0.0.0", None)
    with pytest.raises(UserError):
        check_bind("0.0.0.0", "short")


def test_cli_refuses_public_bind_without_token() -> None:
    from windtunnel.cli import main

    assert main(["dashboard", "--host", "0.0.0.0", "--port", "8999"]) == 2


def test_callbacks_are_read_only_and_reject_unknown_experiments(store: dict) -> None:
    app = create_app(store["uri"], store["laws"])
    client = app.server.test_client()
    deps = client.get("/_dash-dependencies").get_json()
    outputs = {d["output"] for d in deps}
    # every callback writes only to page components: graphs, filters, the summary and the recommendation
    for out in outputs:
        for part in out.strip(".").split("..."):
            assert part.split(".")[0] in {f"g-{g}" for g in GRAPHS} | {
                "summary",
                "sweeps",
                "families",
                "tick",
                "rec-table",
                "rec-yaml",
                "rec-note",
                "rec-download",
            }, part
    fig_cb = next(d for d in deps if "g-progress.figure" in d["output"])
    before = store["db"].read_bytes()
    body = {
        "output": fig_cb["output"],
        "outputs": [
            {"id": o.split(".")[0], "property": o.split(".")[1]}
            for o in fig_cb["output"].strip(".").split("...")
        ],
        "inputs": [
            {"id": "experiment", "property": "value", "value": "../../../../etc/passwd"},
            {"id": "sweeps", "property": "value", "value": []},
            {"id": "families", "property": "value", "value": []},
            {"id": "target", "property": "value", "value": 1e24},
            {"id": "tick", "property": "n_intervals", "value": 1},
        ],
        "changedPropIds": ["experiment.value"],
        "state": [],
    }
    resp = client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 204  # PreventUpdate: not an experiment of this store, nothing read
    body["inputs"][0]["value"] = store["experiment"]
    resp = client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 200
    payload = resp.get_json()["response"]
    assert len(payload["g-curves"]["figure"]["data"]) == EXPECTED_TRACES["curves"]
    assert store["db"].read_bytes() == before  # the store file is unchanged by serving


def test_recommendation_download(store: dict) -> None:
    app = create_app(store["uri"], store["laws"])
    client = app.server.test_client()
    deps = client.get("/_dash-dependencies").get_json()
    cb = next(d for d in deps if d["output"] == "rec-download.data")
    body = {
        "output": cb["output"],
        "outputs": {"id": "rec-download", "property": "data"},
        "inputs": [{"id": "rec-download-btn", "property": "n_clicks", "value": 1}],
        "state": [{"id": "target", "property": "value", "value": 6.4e24}],
        "changedPropIds": ["rec-download-btn.n_clicks"],
    }
    resp = client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")
    data = resp.get_json()["response"]["rec-download"]["data"]
    # windtunnel.recommend's RunConfig, which the trainer loads as is
    assert data["filename"].startswith("recommended-") and data["filename"].endswith(".yaml")
    from trainer.config import RunConfig

    cfg = RunConfig.from_dict(__import__("yaml").safe_load(data["content"]))
    assert cfg.model.moe is not None and cfg.optim.lr > 0


def test_dashboard_args() -> None:
    from dashboards.cli_dashboard import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([])
    assert args.host == "127.0.0.1" and args.token is None


@pytest.mark.slow
def test_cli_serves_on_loopback(store: dict) -> None:
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "windtunnel.cli",
        "dashboard",
        "--tracking-uri",
        store["uri"],
        "--laws",
        store["laws"],
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-layout", timeout=30) as resp:
                    layout = resp.read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "dashboard did not start"
                time.sleep(0.5)
        assert "g-frontier" in layout and "demo" in layout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "http://127.0.0.1:" in proc.stdout.read()


def test_figures_from_law_engine_fit(store: dict, tmp_path) -> None:
    """A laws.json written by windtunnel.laws (per-family allocation laws) drives the same figures."""
    import warnings

    laws_mod = pytest.importorskip("windtunnel.laws")
    from dashboards.data import load_sweeps

    runs = load_sweeps(store["uri"], store["experiment"]).runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        laws_mod.fit_laws(runs, bootstrap=10, seed=0).to_json(tmp_path / "fitted.json")
    laws = analysis.load_laws(tmp_path / "fitted.json")
    assert laws.lawset is not None and laws.has("frontier") and laws.has("lr_opt")
    figs = build_figures(store["uri"], store["experiment"], laws, None, None, 6.4e24)
    names = [t.name for t in figs["isoflop"].data]
    assert any(n.startswith("params_opt") and n.endswith("law") for n in names)
    band = figs["frontier"].data[2]  # the bootstrap band of the fitted frontier is a real interval
    assert band.fill == "toself" and max(band.y) > min(band.y)
    preds = analysis.law_predictions(laws, 6.4e24)
    assert (preds["lo95"] <= preds["value"]).all() and (preds["value"] <= preds["hi95"]).all()
