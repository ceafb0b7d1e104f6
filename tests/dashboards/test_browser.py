"""The dashboard and the static report in a real headless chromium (Selenium): the page opens on its first
tab, every tab draws its charts with the expected number of traces, hover shows a run's numbers, filters
work, the token gate holds, the console has no errors, the recommendation is ``windtunnel recommend``'s;
screenshots go to test-output/."""

from __future__ import annotations

import time

import pytest
from selenium.webdriver.common.keys import Keys
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
        # the seeded store has no validation study and no adaptive round: their panels are empty
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
    # the report holds the validation and adaptive panels only for an experiment with a validation study
    # and adaptive rounds
    wait_for_graphs(chromium, len(GRAPHS) - 2)
    panels = ("validation", "adaptive")
    assert _traces(chromium) == {f"g-{g}": n for g, n in EXPECTED_TRACES.items() if g not in panels}
    chromium.save_screenshot(str(output_dir / "report.png"))
    assert console_errors(chromium) == []


NEAR_TARGET, FAR_TARGET = 1e20, 6.4e24  # 4.5 and 9.3 decades above the seeded runs' largest compute


def _cli_recommend(capsys, laws: str, compute: float, out) -> tuple[list[str], list[str], str]:  # noqa: ANN001
    """``windtunnel recommend``'s table lines, its note lines and the RunConfig YAML it writes."""
    from windtunnel.cli import main

    assert main(["recommend", "--laws", laws, "--compute", str(compute), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [ln for ln in lines[2:] if ln and not ln.startswith(("note: ", "wrote "))]
    notes = [ln for ln in lines if ln.startswith("note: ")]
    return table, notes, out.read_text()


def _page_recommendation(driver) -> tuple[list[str], str, str]:  # noqa: ANN001
    """The page's recommendation table as the CLI prints it (item column padded), its note and YAML."""
    cells = [
        [td.text for td in tr.find_elements("tag name", "td")]
        for tr in driver.find_elements("css selector", "#rec-table tr")
    ]
    rows = [c for c in cells if c]
    width = max(len(item) for item, _ in rows)
    table = [f"{item.ljust(width)}  {value}" for item, value in rows]
    return table, driver.find_element("id", "rec-note").text, driver.find_element("id", "rec-yaml").text


def _wait_for_note(driver, text: str, timeout_s: float = 120.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while text not in driver.find_element("id", "rec-note").text:
        assert time.monotonic() < deadline, driver.find_element("id", "rec-note").text
        time.sleep(0.3)


def test_recommendation_is_the_cli_recommendation(
    chromium, store, quickstart_laws, tmp_path, capsys, output_dir
) -> None:
    """On the quickstart's laws (lr_opt, frontier), the page recommends what ``windtunnel recommend`` does:
    completed with ling 4.5 decades above the runs, refused with the CLI's sentence 9.3 decades above."""
    srv = serve_in_thread(create_app(store["uri"], quickstart_laws, refresh_s=30, target=NEAR_TARGET))
    try:
        chromium.get(f"http://127.0.0.1:{srv.server_port}/")
        wait_for_graph_ids(chromium, _ids(TABS["overview"][1]))
        table, notes, yaml_text = _cli_recommend(capsys, quickstart_laws, NEAR_TARGET, tmp_path / "near.yaml")
        assert notes[0].startswith("note: laws from the sweep: lr_opt, frontier; from ling: batch_opt")
        page_table, page_note, page_yaml = _page_recommendation(chromium)
        assert page_table == table and page_note == " ".join(notes)
        assert page_yaml.strip() == yaml_text.strip()
        # a target too far for the quickstart's laws: refused on the page with the CLI's sentence
        table, notes, yaml_text = _cli_recommend(capsys, quickstart_laws, FAR_TARGET, tmp_path / "far.yaml")
        refusal = notes[0][len("note: ") :]
        assert refusal.startswith("all laws from ling: the sweep's largest run, C=3.15e+15, is 9.3 decades")
        target = chromium.find_element("id", "target")
        target.send_keys(Keys.CONTROL, "a")
        target.send_keys(f"{FAR_TARGET:g}", Keys.ENTER)
        _wait_for_note(chromium, refusal)
        page_table, page_note, page_yaml = _page_recommendation(chromium)
        assert page_table == table and page_note == " ".join(notes)
        assert page_yaml.strip() == yaml_text.strip()
        chromium.save_screenshot(str(output_dir / "dashboard-recommendation-refused.png"))
        assert console_errors(chromium) == []
    finally:
        srv.shutdown()
