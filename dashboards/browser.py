"""Headless Debian chromium driven by Selenium, for the browser tests and the dashboard benchmark.

Uses the system browser and driver only (``/usr/bin/chromium``, ``/usr/bin/chromedriver``); nothing is
downloaded (Selenium Manager is kept offline).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,3200",
]

# (graph id, number of traces) for every rendered Plotly graph on the page
GRAPH_STATE_JS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(function (g) {
  var host = g.closest('[id^="g-"]');
  return [host ? host.id : '', (g.data || []).length];
});
"""


def browser_available() -> str | None:
    """None when chromium, chromedriver and selenium are all present, else the reason they are not."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(os.path.basename(path))):
            return f"{path} not installed (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed"
    return None


def start_chromium() -> Any:
    """A headless Chrome WebDriver on the system chromium with a fresh profile and browser-console logging."""
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="wt-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    quit_browser = driver.quit

    def quit_and_remove_profile() -> None:  # the profile (8-20 MB) would otherwise stay in /tmp per run
        try:
            quit_browser()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_remove_profile
    return driver


def wait_for_graphs(driver: Any, n_graphs: int, timeout_s: float = 60.0) -> list[list[Any]]:
    """Poll until ``n_graphs`` Plotly graphs are drawn with at least one trace and Dash is idle."""
    deadline = time.monotonic() + timeout_s
    state: list[list[Any]] = []
    while time.monotonic() < deadline:
        state = driver.execute_script(GRAPH_STATE_JS)
        loading = driver.execute_script(
            "return document.querySelectorAll('[data-dash-is-loading=\"true\"]').length"
        )
        if len(state) >= n_graphs and all(n > 0 for _, n in state) and not loading:
            return state
        time.sleep(0.02)
    raise TimeoutError(f"graphs not rendered within {timeout_s} s: {state}")


# drawn with no trace when the experiment has nothing to show there
EMPTY_PANELS = ("g-validation", "g-adaptive")


def wait_for_graph_ids(
    driver: Any, graph_ids: list[str], timeout_s: float = 60.0, allow_empty: tuple[str, ...] = EMPTY_PANELS
) -> dict[str, int]:
    """Poll until the page shows exactly the Plotly graphs ``graph_ids`` (e.g. ``["g-curves"]``, what one
    tab holds), each drawn with at least one trace (those in ``allow_empty``: drawn at all, as an empty
    panel saying why), and Dash is idle; returns graph id -> trace count."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, int] = {}
    while time.monotonic() < deadline:
        state = dict(driver.execute_script(GRAPH_STATE_JS))
        loading = driver.execute_script(
            "return document.querySelectorAll('[data-dash-is-loading=\"true\"]').length"
        )
        if (
            sorted(state) == sorted(graph_ids)
            and all(n > 0 or g in allow_empty for g, n in state.items())
            and not loading
        ):
            return state
        time.sleep(0.02)
    raise TimeoutError(f"graphs {graph_ids} not rendered within {timeout_s} s: {state}")


def open_tab(driver: Any, tab: str, graph_ids: list[str], timeout_s: float = 60.0) -> dict[str, int]:
    """Click the dashboard tab ``tab`` (element id ``tab-<tab>``) and wait for its graphs."""
    driver.find_element("id", f"tab-{tab}").click()
    return wait_for_graph_ids(driver, graph_ids, timeout_s)


def console_errors(driver: Any) -> list[str]:
    """SEVERE entries of the browser console since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
