"""Nested dicts as one level of dotted keys (``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def flatten(
    data: dict[str, Any], prefix: str = "", leaves: Collection[str] = (), keep_empty: bool = False
) -> dict[str, Any]:
    """Dotted keys for every non-dict value under ``data``, each key prefixed with ``prefix``.

    A dict under a key named in ``leaves`` is kept whole as a value (e.g. a model's ``moe`` block, which is
    set as one field); an empty dict is kept as a value with ``keep_empty`` and dropped otherwise.
    """
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in leaves and (v or not keep_empty):
            out.update(flatten(v, key + ".", leaves, keep_empty))
        else:
            out[key] = v
    return out
