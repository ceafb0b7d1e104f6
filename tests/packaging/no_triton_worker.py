"""Run fit, recommend, dashboard (app creation) and report in a process where ``import triton`` fails.

Invoked by test_without_triton.py as ``python no_triton_worker.py WORKDIR``; prints one JSON line.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
from pathlib import Path


class BlockTriton(importlib.abc.MetaPathFinder):
    """A laptop without Triton wheels: every ``import triton`` fails as if it were not installed."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 - importlib protocol
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def main(workdir: Path) -> dict:
    sys.meta_path.insert(0, BlockTriton())
    from dashboards.app import create_app
    from dashboards.seed import SeedSpec, seed_store, write_true_laws
    from windtunnel.cli import main as cli

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    info = seed_store(uri, SeedSpec(experiment="demo", n_runs=36, n_steps=5, n_running=0, n_failed=0))
    laws = str(write_true_laws(workdir / "true_laws.json", run_ids=info["run_ids"]))
    rc = {
        "fit": cli(
            [
                "fit",
                "--experiment",
                "demo",
                "--tracking-uri",
                uri,
                "--out",
                str(workdir / "laws.json"),
                "--bootstrap",
                "20",
            ]
        ),
        "recommend": cli(
            ["recommend", "--laws", "ling", "--compute", "1e23", "--out", str(workdir / "r.yaml")]
        ),
        "report": cli(
            [
                "report",
                "--experiment",
                "demo",
                "--tracking-uri",
                uri,
                "--laws",
                laws,
                "--out",
                str(workdir / "rep"),
            ]
        ),
    }
    rc["dashboard"] = 0 if create_app(uri, laws) is not None else 1
    return {"rc": rc, "triton_loaded": any(m == "triton" or m.startswith("triton.") for m in sys.modules)}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
