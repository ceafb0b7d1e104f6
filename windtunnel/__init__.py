"""windtunnel: sweeps on Ray Tune, runs in MLflow, Ling-style scaling laws, compute-optimal configs."""

__version__ = "0.1.0"
