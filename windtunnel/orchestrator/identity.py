"""Trial identity by content: which stored result a trial may reuse.

A stored result is reused only when its ``trial_key`` equals the trial's. The key is
``sha256(json(config payload, data manifest hash, trainer results version))[:16]`` where

- the config payload is the fully resolved ``RunConfig`` (every model, data, optimiser, schedule, precision,
  parallel and evaluation field, the seed and the device) minus the fields in ``NOT_IDENTITY``;
- the data manifest hash is ``trainer.data.prepare_data(cfg).manifest_hash``: the content of the data the
  trial trains on (changing a file's bytes under the same path changes it);
- the trainer results version is ``trainer.loop.RESULTS_VERSION``, raised whenever a trainer change alters
  what a given config trains to.

``NOT_IDENTITY`` lists what deliberately does NOT invalidate a result: the run's name, how often training
metrics are logged (``log_interval``: it thins the logged curve, not the training), the GPU peak the MFU is
reported against (``parallel.peak_tflops``) and where the data cache lives (``data.cache_dir``: the manifest
hash identifies the content). A search group (one Optuna search at one budget and seed) has its own key,
``group_key``: the same payload without the searched fields (``optim.lr``, ``optim.batch_size``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from trainer.config import RunConfig
from trainer.loop import RESULTS_VERSION

NOT_IDENTITY: dict[str, Any] = {
    "name": True,
    "log_interval": True,
    "parallel": {"peak_tflops"},
    "data": {"cache_dir"},
}
REUSE_RULE = (
    "same resolved config, same data manifest and trainer results version "
    f"{RESULTS_VERSION} (run name, log_interval, parallel.peak_tflops and data.cache_dir do not count)"
)


def identity_payload(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as JSON, without the fields that do not change a result (``NOT_IDENTITY``)."""
    return cfg.model_dump(mode="json", exclude=NOT_IDENTITY)


def _digest(payload: dict[str, Any], manifest_hash: str) -> str:
    blob = json.dumps(
        {"config": payload, "data_manifest": manifest_hash, "trainer_results_version": RESULTS_VERSION},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def trial_key(cfg: RunConfig, manifest_hash: str) -> str:
    """A trial's identity: its resolved config, its data's manifest hash and the trainer results version."""
    return _digest(identity_payload(cfg), manifest_hash)


def group_key(base_cfg: RunConfig, searched: list[str], manifest_hash: str) -> str:
    """A search group's identity: ``trial_key`` of its base config without the searched ``optim`` fields."""
    payload = identity_payload(base_cfg)
    for name in searched:
        payload["optim"].pop(name, None)
    return _digest(payload, manifest_hash)


def data_key(cfg: RunConfig) -> str:
    """What ``prepare_data`` depends on: the data section and the model's vocabulary size."""
    return cfg.data.model_dump_json() + f"|{cfg.model.vocab_size}"
