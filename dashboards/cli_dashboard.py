"""``windtunnel dashboard``: serve the Dash app (read-only) over a tracking store and a laws.json."""

from __future__ import annotations

import argparse
import ipaddress
import os

from windtunnel.errors import UserError

LOOPBACK = "127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    parser.add_argument("--port", type=int, default=8050)
    parser.add_argument(
        "--host", default=LOOPBACK, help="bind address (default 127.0.0.1; others need --token)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("WINDTUNNEL_DASHBOARD_TOKEN"),
        help="access token required on every request (?token=..., then a cookie)",
    )
    parser.add_argument("--laws", default=None, help="laws.json (or 'ling') whose fits are drawn")
    parser.add_argument("--experiment", default=None, help="experiment shown first")
    parser.add_argument("--refresh", type=float, default=5.0, help="live refresh interval in seconds")
    parser.add_argument("--target", type=float, default=6.4e24, help="target compute in FLOPs")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to bind a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise UserError(f"binding to {host} exposes the dashboard: pass --token (or bind 127.0.0.1)")
    if token is not None and len(token) < 8:
        raise UserError("--token must be at least 8 characters")


def main(args: argparse.Namespace) -> int:
    check_bind(args.host, args.token)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a TCP port")
    from dashboards.sqlstore import missing_sqlite_file

    missing = missing_sqlite_file(args.tracking_uri)
    if missing is not None:  # the dashboard is read-only: it never creates a store
        raise UserError(f"--tracking-uri: no MLflow store at {missing}")
    from dashboards.app import create_app

    try:
        app = create_app(
            args.tracking_uri,
            args.laws,
            token=args.token,
            refresh_s=args.refresh,
            experiment=args.experiment,
            target=args.target,
        )
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    shown = f"http://{args.host}:{args.port}/" + (f"?token={args.token}" if args.token else "")
    print(f"windtunnel dashboard on {shown} (store {args.tracking_uri}, read-only)", flush=True)
    app.run(host=args.host, port=args.port, debug=False)
    return 0
