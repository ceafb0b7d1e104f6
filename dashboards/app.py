"""The Dash app: live sweep progress and fitted scaling-law curves over a read-only MLflow store.

The page is a row of filters, tabs of charts (``dashboards.views.TABS``) and the recommendation. Only the
visible tab's charts are built, sent and drawn: the first tab is rendered into the layout itself (one
request on open, no empty-figure pass), the others are built when their tab is picked. All aggregation
happens on the server (``dashboards.data``; laws and the recommendation through ``dashboards.analysis``,
a client of ``windtunnel.laws`` and ``windtunnel.recommend``) and figures are cached per store
version; the live-refresh tick sends nothing while the store version and the selection are unchanged.
``single_page=True`` puts all ten charts on one page (for comparison with the tabbed page).

Safety: no callback writes to the store or reads a request-supplied path; experiment names are checked
against the store's list; with ``token`` set every request must carry it (``?token=``, ``Authorization:
Bearer``, or the cookie set after a valid ``?token=``) or gets 401.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import dash
import flask
from dash import ALL, Dash, Input, Output, State, dcc, html

from dashboards import analysis
from dashboards.data import list_experiments, load_sweeps
from dashboards.views import (
    DEFAULT_TARGET,
    FIGURE_CACHE,
    FIRST_TAB,
    GRAPHS,
    TABS,
    build_figures,
    recommendation,
    summary_text,
)
from windtunnel.laws import LawSet

__all__ = [
    "DEFAULT_TARGET",
    "FIGURE_CACHE",
    "GRAPHS",
    "TABS",
    "build_figures",
    "create_app",
    "serve_in_thread",
]
TOKEN_COOKIE = "windtunnel_token"
GRID = {"display": "grid", "gridTemplateColumns": "repeat(auto-fill, minmax(560px, 1fr))", "gap": "8px"}
GRAPH_CONFIG = {"displaylogo": False}


def _token_ok(expected: str) -> bool:
    req = flask.request
    given = [req.args.get("token", ""), req.cookies.get(TOKEN_COOKIE, "")]
    auth = req.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        given.append(auth[len("Bearer ") :])
    return any(g and hmac.compare_digest(g.encode(), expected.encode()) for g in given)


GRAPH_TYPE = "wt-graph"  # pattern-matching id type of every chart: {"type": GRAPH_TYPE, "name": graph}


def _graphs(figs: dict[str, Any], graphs: list[str]) -> html.Div:
    """One tab's charts; each ``dcc.Graph`` sits in a ``div#g-<graph>`` (a stable DOM id for tests)."""
    return html.Div(
        style=GRID,
        children=[
            html.Div(
                dcc.Graph(id={"type": GRAPH_TYPE, "name": g}, figure=figs[g], config=GRAPH_CONFIG),
                id=f"g-{g}",
            )
            for g in graphs
        ],
    )


PRELOAD = ("dash/dcc/async-graph.js", "plotly/package_data/plotly.min.js")


def _index_with_preload(app: Dash) -> str:
    """Dash's page template plus ``<link rel=preload>`` for the scripts a Graph loads on first render."""
    links = "".join(
        f'<link rel="preload" as="script" href="{app.get_relative_path("/_dash-component-suites/" + p)}">'
        for p in PRELOAD
    )
    return app.index_string.replace("{%metas%}", "{%metas%}" + links, 1)


@dataclass
class Page:
    """What one dashboard serves: the store, the law set (read once at start), and the tab layout."""

    tracking_uri: str
    laws: LawSet
    refresh_s: float
    experiment: str | None
    target: float
    reader: str
    tabs: dict[str, tuple[str, list[str]]]
    first_tab: str

    def view(self, name: str, sweeps, families, tgt, tab: str) -> tuple[dict, list[str], str, list]:  # noqa: ANN001
        """(figures, the tab's graphs, summary text, view key) for one selection; the key says what the page
        shows."""
        tab = tab if tab in self.tabs else self.first_tab
        graphs = self.tabs[tab][1]
        target = float(tgt or self.target)
        figs = build_figures(
            self.tracking_uri,
            name,
            self.laws,
            sweeps or None,
            families or None,
            target,
            self.refresh_s,
            graphs=graphs,
            reader=self.reader,
        )
        s = figs["summary"]
        key = [name, repr(s["version"]), sorted(sweeps or []), sorted(families or []), target, tab]
        return figs, graphs, summary_text(s), key

    def recommend_outputs(self, tgt) -> tuple[list, str, str]:  # noqa: ANN001
        """(table rows, RunConfig YAML, notes) of the recommendation at the target compute."""
        rec = recommendation(self.laws, float(tgt or self.target))
        rows = [html.Tr([html.Th("item"), html.Th("value")])]
        rows += [html.Tr([html.Td(r.item), html.Td(r.value)]) for r in rec.summary.itertuples()]
        return rows, rec.yaml_text, rec.note

    def check_experiment(self, name: str | None) -> str:
        if name is None or name not in list_experiments(self.tracking_uri, self.reader):
            raise dash.exceptions.PreventUpdate
        return name

    def layout(self) -> html.Div:
        """Built per page load, so the experiment list and the filters are current without a round trip;
        the first tab's charts are rendered into it."""
        exps = list_experiments(self.tracking_uri, self.reader)
        first = self.experiment if self.experiment in exps else (exps[0] if exps else None)
        if first:
            data = load_sweeps(self.tracking_uri, first, self.refresh_s, reader=self.reader)
            sweeps, fams = data.sweeps, data.families
            figs, graphs, summary, key = self.view(first, None, fams, self.target, self.first_tab)
            content = _graphs(figs, graphs)
        else:
            sweeps, fams, content, summary, key = [], [], html.Div(), "no experiment", None
        return html.Div(
            style={"fontFamily": "sans-serif", "margin": "12px"},
            children=[
                html.H2("windtunnel — scaling-law wind tunnel"),
                _controls(exps, first, sweeps, fams, self.target, self.refresh_s),
                dcc.Interval(id="tick", interval=int(self.refresh_s * 1000), disabled=False),
                dcc.Store(id="view-key", data=key),
                html.Div(summary, id="summary", style={"margin": "8px 0", "color": "#444"}),
                dcc.Tabs(
                    id="tabs",
                    value=self.first_tab,
                    children=[dcc.Tab(label=lb, value=t, id=f"tab-{t}") for t, (lb, _) in self.tabs.items()],
                ),
                html.Div(content, id="tab-content", style={"minHeight": "400px"}),
                *_recommendation_section(*self.recommend_outputs(self.target)),
                html.Div(
                    f"laws: {self.laws.name} · store: read-only", style={"color": "#888", "fontSize": "12px"}
                ),
            ],
        )


def _labelled(label: str, component: Any) -> html.Div:
    return html.Div([html.Label(label), component])


def _controls(exps, first, sweeps, fams, target: float, refresh_s: float) -> html.Div:  # noqa: ANN001
    """The filter row: experiment, sweeps, families, target compute, refresh interval."""
    refresh = [{"label": "off", "value": 0}, {"label": "5 s", "value": 5}, {"label": "30 s", "value": 30}]
    return html.Div(
        style={"display": "flex", "gap": "16px", "flexWrap": "wrap", "alignItems": "end"},
        children=[
            _labelled(
                "experiment",
                dcc.Dropdown(exps, first, id="experiment", clearable=False, style={"width": "220px"}),
            ),
            _labelled("sweeps", dcc.Dropdown(sweeps, [], id="sweeps", multi=True, style={"width": "260px"})),
            _labelled("families", dcc.Checklist(fams, fams, id="families", inline=True)),
            _labelled(
                "target compute (FLOPs)",
                dcc.Input(id="target", type="number", value=target, min=1e10, debounce=True),
            ),
            _labelled(
                "refresh",
                dcc.Dropdown(
                    refresh,
                    refresh_s if refresh_s in (5, 30) else 5,
                    id="refresh",
                    clearable=False,
                    style={"width": "100px"},
                ),
            ),
        ],
    )


def _recommendation_section(rows: list, yaml_text: str, note: str) -> list:
    """Heading, the policy's notes, the summary table, the download button and the RunConfig YAML."""
    pre = {"background": "#f6f6f6", "padding": "8px", "maxHeight": "300px", "overflow": "auto"}
    return [
        html.H3("Recommendation at the target compute"),
        html.Div(note, id="rec-note", style={"color": "#a60"}),
        html.Table(rows, id="rec-table"),
        html.Button("Download config YAML", id="rec-download-btn"),
        dcc.Download(id="rec-download"),
        html.Pre(yaml_text, id="rec-yaml", style=pre),
    ]


def _require_token(server: flask.Flask, token: str) -> None:
    """Every request must carry ``token`` (query, bearer header or the cookie set after a valid query)."""

    @server.before_request
    def _check():  # noqa: ANN202 - flask hook
        if not _token_ok(token):
            return flask.Response("401 unauthorized: windtunnel dashboard needs its token\n", status=401)
        return None

    @server.after_request
    def _remember_token(resp: flask.Response) -> flask.Response:
        if flask.request.args.get("token") and _token_ok(token):
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return resp


def _filter_callbacks(app: Dash, page: Page) -> None:
    @app.callback(
        Output("tick", "interval"),
        Output("tick", "disabled"),
        Input("refresh", "value"),
        prevent_initial_call=True,
    )
    def _set_refresh(seconds: int) -> tuple[int, bool]:
        return int((seconds or 5) * 1000), not seconds

    @app.callback(
        Output("sweeps", "options"),
        Output("families", "options"),
        Output("families", "value"),
        Input("experiment", "value"),
        prevent_initial_call=True,
    )
    def _filters(name: str | None) -> tuple[list[str], list[str], list[str]]:
        data = load_sweeps(page.tracking_uri, page.check_experiment(name), page.refresh_s, reader=page.reader)
        return data.sweeps, data.families, data.families


def _view_callback(app: Dash, page: Page) -> None:
    @app.callback(
        Output("tab-content", "children"),
        Output({"type": GRAPH_TYPE, "name": ALL}, "figure"),
        Output("summary", "children"),
        Output("view-key", "data"),
        Input("experiment", "value"),
        Input("sweeps", "value"),
        Input("families", "value"),
        Input("target", "value"),
        Input("tick", "n_intervals"),
        Input("tabs", "value"),
        State("view-key", "data"),
        prevent_initial_call=True,
    )
    def _view(name, sweeps, families, tgt, _n, tab, shown):  # noqa: ANN001, ANN202 - dash callback
        """A new tab (or a page without its charts) gets new graphs; a refresh or a filter change on the
        shown tab updates the figures of the graphs in place (no remount: zoom is kept via uirevision)."""
        figs, graphs, summary, key = page.view(page.check_experiment(name), sweeps, families, tgt, tab)
        if key == shown:  # same store version, same selection: the page already shows it
            raise dash.exceptions.PreventUpdate
        present = [o["id"]["name"] for o in dash.ctx.outputs_list[1]]
        if present == graphs:
            return dash.no_update, [figs[g] for g in present], summary, key
        return _graphs(figs, graphs), [dash.no_update] * len(present), summary, key


def _recommendation_callbacks(app: Dash, page: Page) -> None:
    @app.callback(
        Output("rec-table", "children"),
        Output("rec-yaml", "children"),
        Output("rec-note", "children"),
        Input("target", "value"),
        prevent_initial_call=True,
    )
    def _recommend(tgt):  # noqa: ANN001, ANN202 - dash callback
        return page.recommend_outputs(tgt)

    @app.callback(
        Output("rec-download", "data"),
        Input("rec-download-btn", "n_clicks"),
        State("target", "value"),
        prevent_initial_call=True,
    )
    def _download(_clicks, tgt):  # noqa: ANN001, ANN202 - dash callback
        rec = recommendation(page.laws, float(tgt or page.target))
        if not rec.ok:
            raise dash.exceptions.PreventUpdate
        return dcc.send_string(rec.yaml_text, rec.filename)


def create_app(
    tracking_uri: str,
    laws_path: str | None = None,
    token: str | None = None,
    refresh_s: float = 5.0,
    experiment: str | None = None,
    target: float = DEFAULT_TARGET,
    reader: str = "auto",
    single_page: bool = False,
    eager_loading: bool = False,
) -> Dash:
    """Build the Dash app over ``tracking_uri`` (read-only) and the law file ``laws_path`` (read once).

    ``reader``: how the store is read (``dashboards.data.READERS``); ``single_page``: all charts on one page
    instead of tabs; ``eager_loading``: Dash's option to load every async component bundle up front (≈4 MB
    more script, MathJax included). Without it, the page asks the browser to preload just the graph
    component and plotly.js (``_index_with_preload``), so they download while the layout is fetched instead
    of after it has been rendered."""
    page = Page(
        tracking_uri=tracking_uri,
        laws=analysis.load_laws(laws_path),
        refresh_s=refresh_s,
        experiment=experiment,
        target=target,
        reader=reader,
        tabs={"all": ("All charts", GRAPHS)} if single_page else TABS,
        first_tab="all" if single_page else FIRST_TAB,
    )
    app = Dash(
        __name__, title="windtunnel", serve_locally=True, update_title=None, eager_loading=eager_loading
    )
    if not eager_loading:
        app.index_string = _index_with_preload(app)
    if token:
        _require_token(app.server, token)
    _filter_callbacks(app, page)
    _view_callback(app, page)
    _recommendation_callbacks(app, page)
    app.layout = page.layout  # after the callbacks: Dash calls it once here to validate
    return app


def serve_in_thread(app: Dash, host: str = "127.0.0.1", port: int = 0):  # noqa: ANN201 - werkzeug server
    """Serve ``app`` from a background thread (tests, benchmarks); returns the werkzeug server, whose
    ``server_port`` is the bound port and ``shutdown()`` stops it."""
    import threading

    from werkzeug.serving import make_server

    srv = make_server(host, port, app.server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
