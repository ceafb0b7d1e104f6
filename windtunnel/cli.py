"""The ``windtunnel`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
modules are imported lazily so ``windtunnel schema`` does not pay for importing torch, Ray and MLflow.
Every usage error is one line on stderr and exit code 2 (``OneLineParser``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from typing import NoReturn

from windtunnel.errors import UserError

DESCRIPTION = (
    "A scaling-law wind tunnel for LLM pre-training: run sweeps of small dense and MoE models on Ray "
    "(logged to MLflow), fit Ling-style scaling laws with uncertainty, and recommend a compute-optimal "
    "config at a target budget (1e22-1e26 FLOPs) that the trainer, Megatron-LM and Hugging Face load. "
    "Start with: windtunnel run experiments/quickstart.yaml"
)

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
    "propose": (
        "windtunnel.orchestrator.cli_propose",
        "propose the next runs that most narrow the 95 % interval at a target compute per FLOP",
    ),
    "predict": ("windtunnel.cli_predict", "predict a run's final loss, 95 %% interval, before training it"),
    "dashboard": ("dashboards.cli_dashboard", "serve the web dashboard of fitted curves"),
    "report": ("dashboards.cli_report", "write a static HTML report and figures for an experiment"),
}


# help for options several subcommands share, used where a subcommand's own module gives none
SHARED_HELP: dict[str, str] = {
    "--tracking-uri": "MLflow tracking store: sqlite:///PATH.db or http://HOST:PORT",
    "--experiment": "MLflow experiment name (a sweep's name)",
    "--bootstrap": "bootstrap resamples for the 95%% intervals",
    "--seed": "random seed",
    "--port": "TCP port to serve on",
    "--out": "output path",
}


def fill_help(parser: argparse.ArgumentParser) -> None:
    """Give each option without help text the shared one for its flag (the formatter shows defaults)."""
    for action in parser._actions:
        if action.help is None and action.option_strings:
            action.help = next((SHARED_HELP[f] for f in action.option_strings if f in SHARED_HELP), None)


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``PROG: error: argument --flag: why``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def version() -> str:
    try:
        return importlib.metadata.version("windtunnel")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = OneLineParser(prog="windtunnel", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"windtunnel {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    modules: dict[str, object] = {}
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text.replace("%", "%%"),  # argparse %-formats help strings ("95% interval")
            description=help_text,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        # only import the module of the command being run (keeps `--help` and `schema` fast)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            fill_help(p)
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
