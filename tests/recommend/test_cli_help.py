"""The ``windtunnel`` command line describes itself: a user-facing description, --version, help per option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from windtunnel.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help(command, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["windtunnel", command])
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    missing = [a.option_strings[0] for a in sub._actions if a.option_strings and not a.help]
    assert missing == []


def test_top_level_help_and_version():
    env_cmd = [sys.executable, "-m", "windtunnel"]
    out = subprocess.run([*env_cmd, "--help"], capture_output=True, text=True, cwd=REPO).stdout
    assert "scaling-law wind tunnel" in out and "dispatcher" not in out and "--version" in out
    ver = subprocess.run([*env_cmd, "--version"], capture_output=True, text=True, cwd=REPO)
    assert ver.returncode == 0 and ver.stdout.startswith("windtunnel 0.")
    bad = subprocess.run([*env_cmd, "recommend", "--laws"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
