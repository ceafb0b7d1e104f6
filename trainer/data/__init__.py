"""The trainer's data pipeline: offline corpus -> local byte-level BPE -> cached token shards -> batches.

``prepare_data(run_cfg) -> DataArtifacts`` builds (or reuses) the shards; ``TokenData(artifacts, seq_len,
seed)`` serves deterministic batches. ``TokenData`` is imported lazily so that ``prepare_data`` can run
without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.data.common import EOT_TOKEN, DataError
from trainer.data.prepare import DataArtifacts, prepare_data

if TYPE_CHECKING:
    from trainer.data.loader import TokenData

__all__ = ["EOT_TOKEN", "DataArtifacts", "DataError", "TokenData", "prepare_data"]


def __getattr__(name: str) -> Any:
    if name == "TokenData":
        from trainer.data.loader import TokenData

        return TokenData
    raise AttributeError(f"module 'trainer.data' has no attribute {name!r}")
