"""Fixtures of the scale-out tests. Ray cluster fixtures live in ``ray_cluster.py`` (imported here)."""

from .ray_cluster import ray_cluster, worker_node  # noqa: F401 - pytest fixtures
