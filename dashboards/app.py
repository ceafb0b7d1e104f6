"""The Dash app: live sweep progress and fitted scaling-law curves over a read-only MLflow store.

All aggregation happens on the server (``dashboards.data`` / ``dashboards.analysis``) and whole figure sets
are cached per (experiment, store version, filters, target); callbacks only read. Safety: no callback
writes to the store or reads a request-supplied path; experiment names are checked against the store's list;
with ``token`` set every request must carry it (``?token=``, ``Authorization: Bearer``, or the cookie set
after a valid ``?token=``) or gets 401.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import dash
import flask
from dash import Dash, Input, Output, State, dcc, html

from dashboards import analysis, figures
from dashboards.data import _Cache, list_experiments, load_sweeps, loss_curves

TOKEN_COOKIE = "windtunnel_token"
DEFAULT_TARGET = 6.4e24  # Ling-1T's training compute (DESIGN.md)
GRAPHS = ["progress", "curves", "isoflop", "frontier", "lr", "batch", "lev-A", "lev-G", "resid"]
FIGURE_CACHE = _Cache(64)


def build_figures(
    tracking_uri: str,
    experiment: str,
    laws: analysis.Laws,
    sweeps: list[str] | None,
    families: list[str] | None,
    target: float,
    refresh_s: float = 5.0,
    curve_limit: int = 60,
) -> dict[str, Any]:
    """Every figure of the dashboard for one selection, as a dict graph-id -> Figure, plus ``summary``."""
    data = load_sweeps(tracking_uri, experiment, refresh_s)
    # a filter that selects everything is no filter (one cache entry, one computation)
    sweeps = None if not sweeps or set(sweeps) >= set(data.sweeps) else sorted(sweeps)
    families = None if not families or set(families) >= set(data.families) else sorted(families)
    key = (
        tracking_uri,
        experiment,
        data.version,
        tuple(sweeps or ()),
        tuple(families or ()),
        target,
        laws.source,
        curve_limit,
    )

    def compute() -> dict[str, Any]:
        t0 = time.perf_counter()
        runs = data.select(sweeps, families)
        curves = loss_curves(tracking_uri, runs, limit=curve_limit)
        progress = data.progress()
        if sweeps:
            progress = progress[progress["sweep"].isin(sweeps)]
        out: dict[str, Any] = {
            "progress": figures.progress_figure(progress),
            "curves": figures.loss_curves_figure(curves, runs),
            "isoflop": figures.isoflop_figure(analysis.isoflop_profiles(runs), laws),
            "frontier": figures.frontier_figure(runs, laws, target),
            "lr": figures.hparam_figure(runs, laws, "lr", target),
            "batch": figures.hparam_figure(runs, laws, "batch", target),
            "lev-A": figures.leverage_figure(laws, target, "A"),
            "lev-G": figures.leverage_figure(laws, target, "G"),
            "resid": figures.residuals_figure(analysis.residuals(runs, laws), laws),
        }
        counts = runs["state"].value_counts().to_dict()
        out["summary"] = {
            "n_runs": int(len(runs)),
            "states": {k: int(v) for k, v in counts.items()},
            "load_s": data.load_s,
            "aggregate_s": time.perf_counter() - t0,
        }
        return out

    return FIGURE_CACHE.get_or_compute(key, compute)


def _token_ok(expected: str) -> bool:
    req = flask.request
    given = [req.args.get("token", ""), req.cookies.get(TOKEN_COOKIE, "")]
    auth = req.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        given.append(auth[len("Bearer ") :])
    return any(g and hmac.compare_digest(g.encode(), expected.encode()) for g in given)


def create_app(
    tracking_uri: str,
    laws_path: str | None = None,
    token: str | None = None,
    refresh_s: float = 5.0,
    experiment: str | None = None,
    target: float = DEFAULT_TARGET,
) -> Dash:
    """Build the Dash app over ``tracking_uri`` (read-only) and the law file ``laws_path`` (read once)."""
    laws = analysis.load_laws(laws_path)
    app = Dash(__name__, title="windtunnel", serve_locally=True, update_title=None)
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

    graph = {"displaylogo": False}

    def layout() -> html.Div:
        """Built per page load, so the experiment list and the filters are current without a round trip."""
        exps = list_experiments(tracking_uri)
        first = experiment if experiment in exps else (exps[0] if exps else None)
        fams: list[str] = load_sweeps(tracking_uri, first, refresh_s).families if first else []
        sweeps: list[str] = load_sweeps(tracking_uri, first, refresh_s).sweeps if first else []
        # the first view is rendered into the layout itself: one request, no empty-figure pass, no round trip
        figs = (
            _figure_outputs(first, None, None, target) if first else [{} for _ in GRAPHS] + ["no experiment"]
        )
        rec = _recommend_outputs(target)
        return _layout(exps, first, sweeps, fams, graph, figs, rec)

    def _layout(
        exps: list[str],
        first: str | None,
        sweeps: list[str],
        fams: list[str],
        graph: dict,
        figs: list,
        rec: tuple,
    ) -> html.Div:
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
                                dcc.Dropdown(
                                    exps, first, id="experiment", clearable=False, style={"width": "220px"}
                                ),
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
                html.Div(figs[-1], id="summary", style={"margin": "8px 0", "color": "#444"}),
                html.Div(
                    style={
                        "display": "grid",
                        "gridTemplateColumns": "repeat(auto-fill, minmax(560px, 1fr))",
                        "gap": "8px",
                    },
                    children=[
                        dcc.Graph(id=f"g-{g}", figure=f, config=graph)
                        for g, f in zip(GRAPHS, figs, strict=False)
                    ],
                ),
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
        if name is None or name not in list_experiments(tracking_uri):
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
        data = load_sweeps(tracking_uri, _check_experiment(name), refresh_s)
        return data.sweeps, data.families, data.families

    def _figure_outputs(name: str, sweeps, families, tgt) -> list:  # noqa: ANN001
        figs = build_figures(
            tracking_uri, name, laws, sweeps or None, families or None, float(tgt or target), refresh_s
        )
        s = figs["summary"]
        states = ", ".join(f"{k}: {v}" for k, v in sorted(s["states"].items()))
        text = (
            f"{s['n_runs']} runs ({states}) · store read {s['load_s']:.2f} s · "
            f"aggregated {s['aggregate_s']:.2f} s · updated {time.strftime('%H:%M:%S')}"
        )
        return [figs[g] for g in GRAPHS] + [text]

    def _recommend_outputs(tgt) -> tuple:  # noqa: ANN001
        rec = analysis.recommendation(laws, float(tgt or target))
        rows = [html.Tr([html.Th("item"), html.Th("value")])]
        rows += [html.Tr([html.Td(r.item), html.Td(r.value)]) for r in rec.summary.itertuples()]
        return rows, rec.yaml_text, f"source: {rec.source}. {rec.note}"

    @app.callback(
        [Output(f"g-{g}", "figure") for g in GRAPHS] + [Output("summary", "children")],
        Input("experiment", "value"),
        Input("sweeps", "value"),
        Input("families", "value"),
        Input("target", "value"),
        Input("tick", "n_intervals"),
        prevent_initial_call=True,
    )
    def _figures(name, sweeps, families, tgt, _n):  # noqa: ANN001, ANN202 - dash callback
        return _figure_outputs(_check_experiment(name), sweeps, families, tgt)

    @app.callback(
        Output("rec-table", "children"),
        Output("rec-yaml", "children"),
        Output("rec-note", "children"),
        Input("target", "value"),
        prevent_initial_call=True,
    )
    def _recommend(tgt):  # noqa: ANN001, ANN202 - dash callback
        return _recommend_outputs(tgt)

    @app.callback(
        Output("rec-download", "data"),
        Input("rec-download-btn", "n_clicks"),
        State("target", "value"),
        prevent_initial_call=True,
    )
    def _download(_clicks, tgt):  # noqa: ANN001, ANN202 - dash callback
        rec = analysis.recommendation(laws, float(tgt or target))
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
