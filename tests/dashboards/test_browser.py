"""The dashboard and the static report in a real headless chromium (Selenium): every chart is drawn with
the expected number of traces, filters work, the token gate holds, the console has no errors; screenshots
go to test-output/."""

from __future__ import annotations

import time

import pytest
from test_app import EXPECTED_TRACES, TOKEN

from dashboards.app import GRAPHS, create_app, serve_in_thread
from dashboards.browser import GRAPH_STATE_JS, console_errors, wait_for_graphs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(store: dict):
    srv = serve_in_thread(create_app(store["uri"], store["laws"], refresh_s=30))
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()


def _traces(driver) -> dict[str, int]:
    return dict(driver.execute_script(GRAPH_STATE_JS))


def test_dashboard_renders_every_chart(chromium, served: str, store: dict, output_dir) -> None:
    before = store["db"].read_bytes()
    console_errors(chromium)  # drop entries of earlier pages
    t0 = time.perf_counter()
    chromium.get(served)
    wait_for_graphs(chromium, len(GRAPHS))
    print(f"first full render: {time.perf_counter() - t0:.2f} s")
    assert _traces(chromium) == {f"g-{g}": n for g, n in EXPECTED_TRACES.items()}
    body = chromium.find_element("tag name", "body").text
    assert "36 runs" in body and "Recommendation at the target compute" in body
    assert "optim:" in chromium.find_element("id", "rec-yaml").text  # the recommended RunConfig YAML
    chromium.save_screenshot(str(output_dir / "dashboard.png"))
    # family filter: untick moe -> the loss-curve chart keeps the 30 dense runs
    chromium.find_element("css selector", "#families input[value='moe']").click()
    deadline = time.monotonic() + 60
    while _traces(chromium).get("g-curves") != 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _traces(chromium)["g-curves"] == 30
    assert _traces(chromium)["g-frontier"] == 4
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
        wait_for_graphs(chromium, len(GRAPHS))
        assert _traces(chromium)["g-curves"] == EXPECTED_TRACES["curves"]
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
