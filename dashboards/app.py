"""The Dash app: live sweep progress and fitted scaling-law curves over a read-only MLflow store.

The page is a row of filters, tabs of charts (``dashboards.views.TABS``) and the recommendation. Only the
visible tab's charts are built, sent and drawn: the first tab is rendered into the layout itself (one
request on open, no empty-figure pass), the others are built when their tab is picked. All aggregation
happens on the server (``dashboards.data`` / ``dashboards.analysis``) and figures are cached per store
version; the live-refresh tick sends nothing while the store version and the selection are unchanged.
``single_page=True`` keeps the former layout (all nine charts on one page) for comparison.

Safety: no callback writes to the store or reads a request-supplied path; experiment names are checked
against the store's list; with ``token`` set every request must carry it (``?token=``, ``Authorization:
Bearer``, or the cookie set after a valid ``?token=``) or gets 401.
"""

from __future__ import annotations

import hmac
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
    laws = analysis.load_laws(laws_path)
    app = Dash(
        __name__, title="windtunnel", serve_locally=True, update_title=None, eager_loading=eager_loading
    )
    if not eager_loading:
        app.index_string = _index_with_preload(app)
    server = app.server
    if token:

        @server.before_request
        def _require_token():  # noqa: ANN202 - flask hook
            if not _token_ok(token):
                return flask.Response("401 unauthorized: windtunnel dashboard needs its token\n", status=401)
            return None

        @server.after_request
        def _remember_token(resp: flask.Response) -> flask.Response:
            if flask.request.args.get("token") and _token_ok(token):
                resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            return resp

    tabs_graphs = {"all": ("All charts", GRAPHS)} if single_page else TABS
    first_tab = "all" if single_page else FIRST_TAB

    def view(name: str, sweeps, families, tgt, tab: str) -> tuple[dict, list[str], str, list]:  # noqa: ANN001
        """(figures, the tab's graphs, summary text, view key) for one selection; the key says what the page
        shows."""
        tab = tab if tab in tabs_graphs else first_tab
        graphs = tabs_graphs[tab][1]
        figs = build_figures(
            tracking_uri,
            name,
            laws,
            sweeps or None,
            families or None,
            float(tgt or target),
            refresh_s,
            graphs=graphs,
            reader=reader,
        )
        s = figs["summary"]
        key = [
            name,
            repr(s["version"]),
            sorted(sweeps or []),
            sorted(families or []),
            float(tgt or target),
            tab,
        ]
        return figs, graphs, summary_text(s), key

    def recommend_outputs(tgt) -> tuple:  # noqa: ANN001
        rec = recommendation(laws, float(tgt or target))
        rows = [html.Tr([html.Th("item"), html.Th("value")])]
        rows += [html.Tr([html.Td(r.item), html.Td(r.value)]) for r in rec.summary.itertuples()]
        return rows, rec.yaml_text, f"source: {rec.source}. {rec.note}"

    def layout() -> html.Div:
        """Built per page load, so the experiment list and the filters are current without a round trip;
        the first tab's charts are rendered into it."""
        exps = list_experiments(tracking_uri, reader)
        first = experiment if experiment in exps else (exps[0] if exps else None)
        if first:
            data = load_sweeps(tracking_uri, first, refresh_s, reader=reader)
            sweeps, fams = data.sweeps, data.families
            figs, graphs, summary, key = view(first, None, fams, target, first_tab)
            content = _graphs(figs, graphs)
        else:
            sweeps, fams, content, summary, key = [], [], html.Div(), "no experiment", None
        return _layout(exps, first, sweeps, fams, content, summary, key, recommend_outputs(target))

    def _layout(exps, first, sweeps, fams, content, summary, key, rec) -> html.Div:  # noqa: ANN001
        control = {"style": {"width": "220px"}}
        return html.Div(
            style={"fontFamily": "sans-serif", "margin": "12px"},
            children=[
                html.H2("windtunnel — scaling-law wind tunnel"),
                html.Div(
                    style={"display": "flex", "gap": "16px", "flexWrap": "wrap", "alignItems": "end"},
                    children=[
                        html.Div(
                            [
                                html.Label("experiment"),
                                dcc.Dropdown(exps, first, id="experiment", clearable=False, **control),
                            ]
                        ),
                        html.Div(
                            [
                                html.Label("sweeps"),
                                dcc.Dropdown(sweeps, [], id="sweeps", multi=True, style={"width": "260px"}),
                            ]
                        ),
                        html.Div(
                            [html.Label("families"), dcc.Checklist(fams, fams, id="families", inline=True)]
                        ),
                        html.Div(
                            [
                                html.Label("target compute (FLOPs)"),
                                dcc.Input(id="target", type="number", value=target, min=1e10, debounce=True),
                            ]
                        ),
                        html.Div(
                            [
                                html.Label("refresh"),
                                dcc.Dropdown(
                                    [
                                        {"label": "off", "value": 0},
                                        {"label": "5 s", "value": 5},
                                        {"label": "30 s", "value": 30},
                                    ],
                                    refresh_s if refresh_s in (5, 30) else 5,
                                    id="refresh",
                                    clearable=False,
                                    style={"width": "100px"},
                                ),
                            ]
                        ),
                    ],
                ),
                dcc.Interval(id="tick", interval=int(refresh_s * 1000), disabled=False),
                dcc.Store(id="view-key", data=key),
                html.Div(summary, id="summary", style={"margin": "8px 0", "color": "#444"}),
                dcc.Tabs(
                    id="tabs",
                    value=first_tab,
                    children=[
                        dcc.Tab(label=label, value=t, id=f"tab-{t}") for t, (label, _) in tabs_graphs.items()
                    ],
                ),
                html.Div(content, id="tab-content", style={"minHeight": "400px"}),
                html.H3("Recommendation at the target compute"),
                html.Div(rec[2], id="rec-note", style={"color": "#a60"}),
                html.Table(rec[0], id="rec-table"),
                html.Button("Download config YAML", id="rec-download-btn"),
                dcc.Download(id="rec-download"),
                html.Pre(
                    rec[1],
                    id="rec-yaml",
                    style={
                        "background": "#f6f6f6",
                        "padding": "8px",
                        "maxHeight": "300px",
                        "overflow": "auto",
                    },
                ),
                html.Div(
                    f"laws: {laws.source} · store: read-only", style={"color": "#888", "fontSize": "12px"}
                ),
            ],
        )

    def _check_experiment(name: str | None) -> str:
        if name is None or name not in list_experiments(tracking_uri, reader):
            raise dash.exceptions.PreventUpdate
        return name

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
        data = load_sweeps(tracking_uri, _check_experiment(name), refresh_s, reader=reader)
        return data.sweeps, data.families, data.families

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
        figs, graphs, summary, key = view(_check_experiment(name), sweeps, families, tgt, tab)
        if key == shown:  # same store version, same selection: the page already shows it
            raise dash.exceptions.PreventUpdate
        present = [o["id"]["name"] for o in dash.ctx.outputs_list[1]]
        if present == graphs:
            return dash.no_update, [figs[g] for g in present], summary, key
        return _graphs(figs, graphs), [dash.no_update] * len(present), summary, key

    @app.callback(
        Output("rec-table", "children"),
        Output("rec-yaml", "children"),
        Output("rec-note", "children"),
        Input("target", "value"),
        prevent_initial_call=True,
    )
    def _recommend(tgt):  # noqa: ANN001, ANN202 - dash callback
        return recommend_outputs(tgt)

    @app.callback(
        Output("rec-download", "data"),
        Input("rec-download-btn", "n_clicks"),
        State("target", "value"),
        prevent_initial_call=True,
    )
    def _download(_clicks, tgt):  # noqa: ANN001, ANN202 - dash callback
        rec = recommendation(laws, float(tgt or target))
        return dcc.send_string(rec.yaml_text, rec.filename)

    app.layout = layout  # after the callbacks: Dash calls it once here to validate
    return app


def serve_in_thread(app: Dash, host: str = "127.0.0.1", port: int = 0):  # noqa: ANN201 - werkzeug server
    """Serve ``app`` from a background thread (tests, benchmarks); returns the werkzeug server, whose
    ``server_port`` is the bound port and ``shutdown()`` stops it."""
    import threading

    from werkzeug.serving import make_server

    srv = make_server(host, port, app.server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
