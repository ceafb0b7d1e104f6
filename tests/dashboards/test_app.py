"""The Dash app on a seeded store, no browser: figures, lazy tabs, token gate, bind safety, read-only
callbacks."""

from __future__ import annotations

import argparse
import json

import pytest

from dashboards import analysis, data
from dashboards.app import FIGURE_CACHE, GRAPHS, TABS, build_figures, create_app
from dashboards.cli_dashboard import check_bind, is_loopback

# trace counts for the seeded store (36 runs: 2 sweeps, dense+moe, 33 finished / 2 running / 1 failed)
EXPECTED_TRACES = {
    "progress": 3,  # one bar trace per state: finished, running, failed
    "curves": 36,  # one line per run
    # dense: 4 budgets x (markers, Akima interpolant, optimum); moe (the hparam sweep, one size per budget):
    # 4 x markers; the params_opt law belongs to the moe runs, which have no optimum: no crosses
    "isoflop": 16,
    "frontier": 5,  # runs (dense), runs (moe), band, fit, target
    "lr": 4,  # runs, near-optimal runs, band, law
    "batch": 4,
    "lev-A": 6,  # G in 1, 2, 4, 8, 12, 16
    "lev-G": 4,  # A in 1.6%, 3.1%, 7.8%, 25%
    "resid": 2,  # in fit, held out
    "validation": 0,  # no target prediction in the seeded store: an empty panel saying so
    "adaptive": 0,  # no adaptive round in the seeded store: an empty panel saying so
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


def _post(client, cb: dict, inputs: list[dict], state: list[dict] | None = None, present=()):  # noqa: ANN001, ANN202
    """POST a callback as the browser does; ``present``: the graphs on the page (the pattern-matching
    ``{"type": "wt-graph", "name": ALL}`` output of the view callback)."""
    outputs: list = []
    for o in cb["output"].strip(".").split("..."):
        cid, prop = o.rsplit(".", 1)
        if cid.startswith("{"):
            outputs.append([{"id": {"type": "wt-graph", "name": g}, "property": prop} for g in present])
        else:
            outputs.append({"id": cid, "property": prop})
    body = {
        "output": cb["output"],
        "outputs": outputs,
        "inputs": inputs,
        "changedPropIds": [f"{inputs[0]['id']}.{inputs[0]['property']}"],
        "state": state or [],
    }
    return client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")


def _view_inputs(experiment: str, tab: str) -> list[dict]:
    return [
        {"id": "experiment", "property": "value", "value": experiment},
        {"id": "sweeps", "property": "value", "value": []},
        {"id": "families", "property": "value", "value": ["dense", "moe"]},
        {"id": "target", "property": "value", "value": 6.4e24},
        {"id": "tick", "property": "n_intervals", "value": 1},
        {"id": "tabs", "property": "value", "value": tab},
    ]


def _graph_traces(component: dict) -> dict[str, int]:
    """graph name -> number of traces in a serialised tab-content Div (each Graph wrapped in div#g-name)."""
    kids = component["props"]["children"]
    return {k["props"]["id"][2:]: len(k["props"]["children"]["props"]["figure"]["data"]) for k in kids}


def test_callbacks_are_read_only_and_reject_unknown_experiments(store: dict) -> None:
    app = create_app(store["uri"], store["laws"])
    client = app.server.test_client()
    deps = client.get("/_dash-dependencies").get_json()
    outputs = {d["output"] for d in deps}
    # every callback writes only to page components: the visible tab, filters, summary, recommendation
    allowed = {"tab-content", "view-key", "summary", "sweeps", "families", "tick"}
    allowed |= {"rec-table", "rec-yaml", "rec-note", "rec-download"}
    for out in outputs:
        for part in out.strip(".").split("..."):
            cid = part.rsplit(".", 1)[0]
            assert (
                cid in allowed or json.loads(cid if cid.startswith("{") else "{}").get("type") == "wt-graph"
            ), part
    view_cb = next(d for d in deps if "tab-content.children" in d["output"])
    before = store["db"].read_bytes()
    inputs = _view_inputs("../../../../etc/passwd", "curves")
    resp = _post(client, view_cb, inputs, [{"id": "view-key", "property": "data", "value": None}])
    assert resp.status_code == 204  # PreventUpdate: not an experiment of this store, nothing read
    inputs = _view_inputs(store["experiment"], "curves")
    resp = _post(client, view_cb, inputs, [{"id": "view-key", "property": "data", "value": None}])
    assert resp.status_code == 200
    payload = resp.get_json()["response"]
    # only the picked tab's charts are sent
    assert _graph_traces(payload["tab-content"]["children"]) == {"curves": EXPECTED_TRACES["curves"]}
    assert "36 runs" in payload["summary"]["children"]
    assert store["db"].read_bytes() == before  # the store file is unchanged by serving


def test_live_tick_resends_only_when_the_store_changes(tmp_path) -> None:
    from dashboards.seed import SeedSpec, seed_store

    uri = f"sqlite:///{tmp_path / 't.db'}"
    seed_store(uri, SeedSpec(experiment="t", n_runs=4, n_steps=4, n_running=0, n_failed=0))
    client = create_app(uri, None).server.test_client()
    deps = client.get("/_dash-dependencies").get_json()
    view_cb = next(d for d in deps if "tab-content.children" in d["output"])
    inputs = _view_inputs("t", "overview")
    resp = _post(client, view_cb, inputs, [{"id": "view-key", "property": "data", "value": None}])
    key = resp.get_json()["response"]["view-key"]["data"]
    assert "4 runs" in resp.get_json()["response"]["summary"]["children"]
    # a tick with nothing changed in the store: nothing is resent
    resp = _post(client, view_cb, inputs, [{"id": "view-key", "property": "data", "value": key}])
    assert resp.status_code == 204
    seed_store(uri, SeedSpec(experiment="t", n_runs=2, n_steps=4, n_running=0, n_failed=0, seed=1))
    shown = [{"id": "view-key", "property": "data", "value": key}]
    resp = _post(client, view_cb, inputs, shown, present=TABS["overview"][1])
    out = resp.get_json()["response"]
    assert resp.status_code == 200 and "6 runs" in out["summary"]["children"]
    # the tab's graphs are on the page: their figures are updated in place, the tab is not rebuilt
    assert "tab-content" not in out
    progress = out['{"name":"progress","type":"wt-graph"}']["figure"]
    assert [t["name"] for t in progress["data"]] == ["finished"]
    assert progress["layout"]["uirevision"] == "keep"  # zoom survives the refresh


def test_each_tab_is_built_lazily(store: dict) -> None:
    """Opening the page builds and sends the first tab's charts only; every tab then yields its own."""
    app = create_app(store["uri"], store["laws"])
    client = app.server.test_client()
    FIGURE_CACHE.clear()
    data.CURVE_CACHE.clear()
    layout = client.get("/_dash-layout").get_data(as_text=True)
    first = TABS["overview"][1]
    assert all(f'"g-{g}"' in layout for g in first)
    assert not any(f'"g-{g}"' in layout for g in GRAPHS if g not in first)
    built = {k[-1] for k in FIGURE_CACHE._data}
    assert built == set(first)
    assert len(data.CURVE_CACHE._data) == 0  # no metric history was read to open the page
    deps = client.get("/_dash-dependencies").get_json()
    view_cb = next(d for d in deps if "tab-content.children" in d["output"])
    seen = {}
    for tab, (_, graphs) in TABS.items():
        state = [{"id": "view-key", "property": "data", "value": None}]
        resp = _post(client, view_cb, _view_inputs(store["experiment"], tab), state)
        traces = _graph_traces(resp.get_json()["response"]["tab-content"]["children"])
        assert list(traces) == graphs
        seen.update(traces)
    assert seen == EXPECTED_TRACES


def test_single_page_mlflow_reader_selectable(store: dict) -> None:
    """All charts on one page, the store read with MLflow's client: selectable for comparison."""
    app = create_app(store["uri"], store["laws"], reader="mlflow", single_page=True)
    layout = app.server.test_client().get("/_dash-layout").get_data(as_text=True)
    assert all(f'"g-{g}"' in layout for g in GRAPHS)


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

    from dashboards.data import load_sweeps
    from windtunnel.laws import fit_laws

    runs = load_sweeps(store["uri"], store["experiment"]).runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_laws(runs, bootstrap=10, seed=0).to_json(tmp_path / "fitted.json")
    laws = analysis.load_laws(tmp_path / "fitted.json")
    assert {"frontier", "lr_opt"} <= set(laws.laws)
    figs = build_figures(store["uri"], store["experiment"], laws, None, None, 6.4e24)
    names = [t.name for t in figs["isoflop"].data]
    assert any(n.startswith("params_opt") and n.endswith("law") for n in names)
    band = figs["frontier"].data[2]  # the bootstrap band of the fitted frontier is a real interval
    assert band.fill == "toself" and max(band.y) > min(band.y)
    preds = analysis.law_predictions(laws, 6.4e24)
    assert (preds["lo95"] <= preds["value"]).all() and (preds["value"] <= preds["hi95"]).all()


def test_dashboard_refuses_a_missing_store_without_creating_it(tmp_path, capsys) -> None:
    from windtunnel.cli import main

    db = tmp_path / "none.db"
    assert main(["dashboard", "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert f"no MLflow store at {db}" in capsys.readouterr().err and not db.exists()
