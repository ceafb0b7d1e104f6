"""The ``windtunnel`` command line: a thin dispatcher.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
modules are imported lazily so ``windtunnel schema`` does not pay for importing torch, Ray and MLflow.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("windtunnel.orchestrator.cli_run", "run a sweep YAML on Ray Tune, logging to MLflow"),
    "plan": (
        "windtunnel.orchestrator.cli_plan",
        "estimate a sweep's FLOPs and wall time; refuse it over --budget",
    ),
    "status": ("windtunnel.orchestrator.cli_status", "show the progress of sweeps in a tracking store"),
    "schema": ("windtunnel.orchestrator.cli_schema", "print the sweep YAML's JSON Schema"),
    "fit": ("windtunnel.laws.cli", "fit scaling laws to a run table or an MLflow experiment"),
    "recommend": ("windtunnel.recommend.cli", "recommend a compute-optimal config from a law set"),
    "dashboard": ("dashboards.cli_dashboard", "serve the web dashboard of fitted curves"),
    "report": ("dashboards.cli_report", "write a static HTML report and figures for an experiment"),
}


class UserError(Exception):
    """An error caused by the user's input: printed as one line, no traceback, exit code 2."""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="windtunnel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # only import the module of the command being run (keeps `--help` and `schema` fast)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = ["windtunnel", *argv]
    parser, modules = build_parser()
    args = parser.parse_args()
    if args.command is None:
        parser.print_help()
        return 1
    try:
        return int(modules[args.command].main(args) or 0)
    except UserError as err:
        print(f"windtunnel {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"windtunnel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # re-import through the package so UserError is the same class the subcommands raise
    from windtunnel.cli import main as _main

    sys.exit(_main())
