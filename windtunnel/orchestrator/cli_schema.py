"""``windtunnel schema``: print the sweep YAML's JSON Schema (pydantic ``SweepSpec``)."""

from __future__ import annotations

import argparse
import json

from windtunnel.orchestrator.spec import json_schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--indent", type=int, default=2, help="JSON indentation")


def main(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=args.indent))
    return 0
