"""The sweep YAML's ``target:`` block: a run far beyond the ladder, predicted before it is trained.

    target:
      extrapolation: 30          # C_target = 30 x the ladder's largest budget (or give compute: 1e13)
      predict_before: true       # record the prediction in MLflow before the target trains
      seeds: [0, 1, 2]           # the target is trained once per seed; their spread is the seed noise
      law: auto                  # the loss law that predicts: parametric (N, D) | frontier (C) | auto
      shape: {head_dim: 8, aspect_ratio: 48, ffn_mult: 2.75}   # default: the first ladder study's rule
      model: {d_model: 96, n_layers: 2, ...}   # optional: a fixed target model instead of the M_opt size

After the ladder's laws are fitted (``windtunnel.orchestrator.validation``): M_opt = a·C^b from the sweep's
own ``m_opt`` law sets the target's size (the shape rule's d_model whose M is closest), D = C / M, the
prediction is recorded, then the target trains through the same Ray Tune / MLflow path as the ladder.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TARGET_STUDY = "target"  # the study name the target trials carry in the store


class TargetShape(BaseModel):
    """The width/depth rule the target's d_model is chosen in (``LadderRule`` without the size range)."""

    model_config = ConfigDict(extra="forbid")

    head_dim: int = Field(16, ge=2)
    aspect_ratio: float = Field(64.0, gt=0, description="d_model / n_layers")
    ffn_mult: float = Field(2.75, gt=0)
    kv_ratio: int = Field(1, ge=1, description="n_heads / n_kv_heads")
    granularity: float | None = Field(None, gt=0, description="MoE only: G = 2 d_model / d_expert")
    d_model_max: int = Field(4096, ge=8, description="largest d_model the target may take")


class TargetSpec(BaseModel):
    """A validation target: predicted from the ladder's laws, then trained and compared."""

    model_config = ConfigDict(extra="forbid")

    compute: float | None = Field(None, gt=0, description="target compute C = M·D in FLOPs")
    extrapolation: float | None = Field(
        None, gt=1, description="target compute as a multiple of the ladder's largest budget"
    )
    predict_before: bool = Field(True, description="record the prediction in MLflow before training it")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    law: Literal["auto", "parametric", "frontier"] = "auto"
    shape: TargetShape | None = Field(None, description="default: the first ladder study's rule")
    model: dict[str, Any] | None = Field(
        None,
        description="a fixed target model (ModelConfig fields, e.g. d_model, n_layers) instead of the "
        "compute-optimal size from the sweep's m_opt law; D = C / M",
    )
    hparams: Literal["base", "law"] = Field(
        "base",
        description="law: lr/batch from the sweep's lr_opt/batch_opt laws when fitted and identified "
        "(else the base's, said in the summary)",
    )
    min_extrapolation: float = Field(
        30.0, gt=0, description="the summary flags a target closer than this to the ladder"
    )

    @field_validator("seeds", mode="before")
    @classmethod
    def _count_to_list(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError(f"must be >= 1 (a count) or a list of seeds, got {v}")
            return list(range(v))
        return v

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if (self.compute is None) == (self.extrapolation is None):
            raise ValueError("give exactly one of compute or extrapolation")
        if self.compute is not None and not math.isfinite(self.compute):
            raise ValueError(f"compute: must be finite, got {self.compute}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: duplicates in {self.seeds}")
        return self

    def target_compute(self, ladder_max: float) -> float:
        return float(self.compute) if self.compute is not None else float(self.extrapolation) * ladder_max
