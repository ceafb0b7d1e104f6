"""The sweep YAML's ``adaptive:`` block: after the studies, the wind tunnel plans and runs its own next runs.

    adaptive:
      target: 1.5e13          # target compute C in FLOPs (C = M·D): the interval to narrow is at its
                              # compute-optimal point under the fitted parametric law
      rounds: 3               # at most this many propose -> run -> fit rounds
      k: 4                    # runs proposed per round
      stop_at_pi_width: 0.05  # stop once the 95 % interval of the predicted loss is this narrow (nats)
      budget: 2.0e12          # training FLOPs all rounds may spend together (default: no limit)
      bootstrap: 50           # bootstrap resamples of each round's fit
      points: {at_fractions: [0.25, 0.5, 1.0], mode: wsd}   # optional: proposed runs may give several
                              # (N, D_k) rows each (trainer.points); the design weighs all of a run's rows
                              # against its FLOPs counted once (WSD branches added)

Each round (``adaptive.py``) fits the sweep's runs, proposes k runs (``propose.py``, ``laws.design``),
records the proposal in MLflow, trains the runs through the sweep's Ray Tune path and logs the round's
``pi95_width_at_target``; a re-run of the sweep reuses recorded rounds and finished runs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from trainer.config import PointsConfig

ADAPTIVE_PREFIX = "adaptive_r"  # study name of round r's trials: adaptive_r1, adaptive_r2, ...


class AdaptiveSpec(BaseModel):
    """Adaptive run design rounds after the sweep's studies (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    target: float = Field(gt=0, description="target compute C in FLOPs (C = M*D)")
    rounds: int = Field(ge=1, le=1000, description="largest number of propose -> run -> fit rounds")
    k: int = Field(4, ge=1, le=1000, description="runs proposed per round")
    stop_at_pi_width: float | None = Field(
        None, gt=0, description="stop once the target's 95% interval is at most this wide (loss units)"
    )
    budget: float | None = Field(None, gt=0, description="training FLOPs all rounds may spend together")
    bootstrap: int = Field(50, ge=2, le=100_000, description="bootstrap resamples of each round's fit")
    points: PointsConfig | None = Field(
        None,
        description="proposed runs may carry these points (trainer.points); each run is offered with and "
        "without them, and schedule.kind becomes the points' mode for a run with them",
    )
