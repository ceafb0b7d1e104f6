"""The dashboard and the static report in a real headless chromium (Selenium): the page opens on its first
tab, every tab draws its charts with the expected number of traces, hover shows a run's numbers, filters
work, the token gate holds, the console has no errors; screenshots go to test-output/."""

from __future__ import annotations

import time

import pytest
from test_app import EXPECTED_TRACES, TOKEN

from dashboards.app import GRAPHS, TABS, create_app, serve_in_thread
from dashboards.browser import GRAPH_STATE_JS, console_errors, open_tab, wait_for_graph_ids, wait_for_graphs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(store: dict):
    srv = serve_in_thread(create_app(store["uri"], store["laws"], refresh_s=30))
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()


def _traces(driver) -> dict[str, int]:
    return dict(driver.execute_script(GRAPH_STATE_JS))


def _ids(graphs: list[str]) -> list[str]:
    return [f"g-{g}" for g in graphs]


# hover the first run marker of the frontier chart and read the label plotly draws
HOVER_JS = """
var gd = document.querySelector('#g-frontier .js-plotly-plot');
Plotly.Fx.hover(gd, [{curveNumber: 0, pointNumber: 0}]);
var t = document.querySelector('#g-frontier .hoverlayer');
return t ? t.textContent : '';
"""


def test_dashboard_renders_every_tab(chromium, served: str, store: dict, output_dir) -> None:
    before = store["db"].read_bytes()
    console_errors(chromium)  # drop entries of earlier pages
    t0 = time.perf_counter()
    chromium.get(served)
    first = TABS["overview"][1]
    # the page opens on its first tab: only that tab's charts exist and are drawn
    assert wait_for_graph_ids(chromium, _ids(first)) == {f"g-{g}": EXPECTED_TRACES[g] for g in first}
    print(f"first full render: {time.perf_counter() - t0:.2f} s")
    body = chromium.find_element("tag name", "body").text
    assert "36 runs" in body and "Recommendation at the target compute" in body
    assert "optim:" in chromium.find_element("id", "rec-yaml").text  # the recommended RunConfig YAML
    hover = chromium.execute_script(HOVER_JS)
    assert "N=" in hover and "loss=" in hover and "lr=" in hover, hover  # customdata through hovertemplate
    chromium.save_screenshot(str(output_dir / "dashboard.png"))
    for tab, (_, graphs) in TABS.items():
        t0 = time.perf_counter()
        drawn = open_tab(chromium, tab, _ids(graphs))
        print(f"tab {tab}: {time.perf_counter() - t0:.2f} s")
        assert drawn == {f"g-{g}": EXPECTED_TRACES[g] for g in graphs}, tab
        chromium.save_screenshot(str(output_dir / f"dashboard-{tab}.png"))
    # family filter on the loss-curve tab: untick moe -> the chart keeps the 30 dense runs
    open_tab(chromium, "curves", ["g-curves"])
    chromium.execute_script("document.querySelector('#g-curves .js-plotly-plot').__wt_mark = 1")
    chromium.find_element("css selector", "#families input[value='moe']").click()
    deadline = time.monotonic() + 60
    while _traces(chromium).get("g-curves") != 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _traces(chromium)["g-curves"] == 30
    # a filter change on the shown tab updates the chart in place (same plot element, zoom kept)
    assert chromium.execute_script(
        "return document.querySelector('#g-curves .js-plotly-plot').__wt_mark === 1"
    )
    assert open_tab(chromium, "overview", _ids(first))["g-frontier"] == 4  # the filter holds across tabs
    chromium.save_screenshot(str(output_dir / "dashboard-dense.png"))
    assert console_errors(chromium) == []
    assert store["db"].read_bytes() == before  # browsing never writes to the store


def test_token_gate_in_browser(chromium, store: dict, output_dir) -> None:
    srv = serve_in_thread(create_app(store["uri"], store["laws"], token=TOKEN, refresh_s=30))
    try:
        url = f"http://127.0.0.1:{srv.server_port}/"
        chromium.get(url)
        assert "401" in chromium.find_element("tag name", "body").text
        assert chromium.execute_script(GRAPH_STATE_JS) == []
        chromium.get(f"{url}?token={TOKEN}")
        wait_for_graph_ids(chromium, _ids(TABS["overview"][1]))
        # the tab callback carries the token cookie too
        assert open_tab(chromium, "curves", ["g-curves"])["g-curves"] == EXPECTED_TRACES["curves"]
        errors = [e for e in console_errors(chromium) if "401" not in e]  # the refused first page logs a 401
        assert errors == []
    finally:
        srv.shutdown()


def test_static_report_opens_offline(chromium, store: dict, tmp_path, output_dir) -> None:
    from dashboards.report import write_report

    out = write_report(store["uri"], store["experiment"], tmp_path / "report", store["laws"])
    console_errors(chromium)
    chromium.get(out["html"].as_uri())
    wait_for_graphs(chromium, len(GRAPHS))
    assert _traces(chromium) == {f"g-{g}": n for g, n in EXPECTED_TRACES.items()}
    chromium.save_screenshot(str(output_dir / "report.png"))
    assert console_errors(chromium) == []
