"""Sweep orchestration: sweep spec -> trials -> Ray Tune -> trainer -> MLflow.

Heavy dependencies (Ray, MLflow, torch) are imported lazily by the modules that need them so that
``windtunnel schema`` and spec validation stay fast.
"""

from __future__ import annotations

from typing import Any

# spec first: it imports expand at its end, so either module may be imported first by users
from windtunnel.orchestrator import spec as _spec  # noqa: F401

__all__ = ["runs_from_mlflow"]


def runs_from_mlflow(tracking_uri: str, experiment: str) -> Any:
    """Rebuild the run table (docs/DESIGN.md "Contracts") from an MLflow experiment.

    See ``tracking.runs_from_mlflow``.
    """
    from windtunnel.orchestrator.tracking import runs_from_mlflow as _runs

    return _runs(tracking_uri, experiment)
