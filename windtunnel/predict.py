"""Predictions made before a run: the final validation loss of a model trained on D tokens (or of the
compute-optimal model at a budget C), from a law set, with its 95 % interval and the law it came from.

Two loss laws can predict (docs/DESIGN.md "Contracts"):
- ``parametric``  L(N, D) = E + A/N^alpha + B/D^beta   (Hoffmann et al. 2022, eq. 2; N = non-embedding
  active parameters, D = training tokens);
- ``frontier``    L(C) = E + A·C^-alpha                  (loss of the compute-optimal run at C = M·D).
Intervals are ``LawSet.predict(name, x) -> (value, lo, hi)`` as the law engine forms them. With both in the
set, ``auto`` takes the one whose backtest (the law engine's: fit on the smaller budgets, predict the
largest) erred less, and says so; the other one's prediction is reported beside it.

The operating point (N, M, D, C):
- ``--model M.yaml --tokens D``: N and M (FLOPs per token) from the trainer's accounting, C = M·D;
- ``--compute C``: M_opt = a·C^b from the ``m_opt`` allocation law ("Towards Greater Leverage" sec. 3),
  D = C / M_opt, N from ``params_opt`` (N_opt = a·C^b) when the set has it, else N = M / 6 (dense
  accounting, 6 FLOPs per parameter per token; said in ``notes``).

A prediction is recorded in the tracking store (``record_prediction``) as an MLflow run whose params hold
it; MLflow refuses to change a logged param, and ``record_prediction`` refuses a second, different
prediction under the same key, so a prediction cannot be adjusted after the run it predicts.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from windtunnel.errors import PredictionError, PredictionLocked

LOSS_LAWS = ("parametric", "frontier")
PREDICTION_ROLE = "prediction"


@dataclass
class Prediction:
    """prediction JSON: ``law, x, predicted, pi95, laws_sha256, made_at`` (+ other laws' values)."""

    law: str
    x: dict[str, float]
    predicted: float
    pi95: tuple[float, float]
    laws_sha256: str
    made_at: str
    alternatives: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pi95"] = [float(self.pi95[0]), float(self.pi95[1])]
        return d


def laws_sha256(path: str | Path | None, lawset: Any) -> str:
    """sha256 of the laws file's bytes (or of the set's JSON for the built-in ``ling`` set)."""
    if path is not None and str(path) != "ling" and Path(path).is_file():
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(lawset.to_dict(), sort_keys=True).encode()).hexdigest()


def point_from_model(model_cfg: Any, tokens: float) -> dict[str, float]:
    """(N, M, D, C) of a fixed architecture trained on ``tokens``: N non-embedding active, C = M·D."""
    from trainer.flops import count_params, flops_per_token

    m = float(flops_per_token(model_cfg))
    n = float(count_params(model_cfg).active_nonembed)
    return {"params": n, "m": m, "tokens": float(tokens), "compute": m * float(tokens)}


def point_from_compute(lawset: Any, compute: float) -> tuple[dict[str, float], list[str]]:
    """(N, M, D, C) of the compute-optimal run at C from the set's allocation laws; and notes."""
    if "m_opt" not in lawset.laws:
        raise PredictionError(
            "--compute needs the m_opt allocation law (M_opt = a*C^b) in the law set; "
            f"it has: {', '.join(lawset.laws) or 'none'}"
        )
    m_opt = float(lawset.predict("m_opt", compute)[0])
    notes = []
    if "params_opt" in lawset.laws:
        n_opt = float(lawset.predict("params_opt", compute)[0])
    else:
        n_opt = m_opt / 6.0
        notes.append("params = M_opt / 6 (no params_opt law in the set)")
    return {"params": n_opt, "m": m_opt, "tokens": compute / m_opt, "compute": compute}, notes


def _law_x(law: str, point: dict[str, float]) -> Any:
    return (point["params"], point["tokens"]) if law == "parametric" else point["compute"]


def _one(lawset: Any, law: str, point: dict[str, float]) -> dict[str, Any]:
    value, lo, hi = lawset.predict(law, _law_x(law, point))
    if not all(math.isfinite(float(v)) for v in (value, lo, hi)):
        raise PredictionError(f"law {law!r} gives a non-finite loss at {point}")
    return {"predicted": float(value), "pi95": [float(lo), float(hi)]}


def _backtest_error(law: Any) -> float:
    """The law's relative error at the held-out top budget's compute-optimal point: ``frontier_rel_err``
    (the parametric law's error at that budget's best run) where the backtest has it, else its
    ``mean_rel_err`` (the frontier law's backtest predicts exactly that point)."""
    bt = law.backtest or {}
    err = bt.get("frontier_rel_err", bt.get("mean_rel_err"))
    return float(err) if isinstance(err, int | float) and math.isfinite(err) else math.inf


def choose_law(lawset: Any) -> tuple[str, str]:
    """``auto``: the loss law with the smaller backtest error on the same point: each law is fitted below
    the sweep's largest budget and judged by its relative error at that budget's best run, the
    compute-optimal point a target is (``_backtest_error``); parametric when neither has a backtest.
    The parametric law's error over every size of that budget is not the criterion: sizes far from the
    optimum are not what a target predicts."""
    have = [n for n in LOSS_LAWS if n in lawset.laws]
    if not have:
        raise PredictionError(f"the law set has no loss law ({' or '.join(LOSS_LAWS)})")
    errors = {n: _backtest_error(lawset.laws[n]) for n in have}
    best = min(have, key=lambda n: (errors[n], LOSS_LAWS.index(n)))
    told = ", ".join(f"{n} {e:.2%}" if math.isfinite(e) else f"{n} none" for n, e in errors.items())
    return best, f"law chosen by backtest error at the top budget's best run ({told})"


def predict_loss(
    lawset: Any, point: dict[str, float], law: str = "auto", sha: str = "", notes: list[str] | None = None
) -> Prediction:
    """The final-loss prediction at ``point`` from ``law`` (``auto``: ``choose_law``); the other loss
    laws of the set are reported in ``alternatives``."""
    have = [n for n in LOSS_LAWS if n in lawset.laws]
    notes = list(notes or [])
    if law == "auto":
        law, why = choose_law(lawset)
        notes.append(why)
    elif law not in lawset.laws:
        raise PredictionError(f"--law {law}: not in the law set (have: {', '.join(lawset.laws)})")
    main = _one(lawset, law, point)
    alternatives = {}
    for other in have:
        if other != law:
            try:
                alternatives[other] = _one(lawset, other, point)
            except PredictionError as err:
                alternatives[other] = {"error": str(err)}
    made_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return Prediction(
        law=law,
        x={k: float(v) for k, v in point.items()},
        predicted=main["predicted"],
        pi95=(main["pi95"][0], main["pi95"][1]),
        laws_sha256=sha,
        made_at=made_at,
        alternatives=alternatives,
        notes=notes,
    )


def format_prediction(p: Prediction) -> str:
    x = ", ".join(f"{k}={v:.4g}" for k, v in p.x.items())
    lines = [
        f"predicted final validation loss: {p.predicted:.4f}  "
        f"95% interval [{p.pi95[0]:.4f}, {p.pi95[1]:.4f}]  (law: {p.law})",
        f"at {x}",
    ]
    for name, alt in p.alternatives.items():
        if "error" in alt:
            lines.append(f"  {name}: {alt['error']}")
        else:
            lo, hi = alt["pi95"]
            lines.append(f"  {name} would predict {alt['predicted']:.4f} [{lo:.4f}, {hi:.4f}]")
    lines.extend(f"note: {n}" for n in p.notes)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# the tracking store: a prediction is an MLflow run whose params hold it (params are write-once)


def _params(p: Prediction) -> dict[str, str]:
    out = {
        "law": p.law,
        "predicted": repr(p.predicted),
        "pi95_lo": repr(float(p.pi95[0])),
        "pi95_hi": repr(float(p.pi95[1])),
        "laws_sha256": p.laws_sha256,
        "made_at": p.made_at,
    }
    out.update({f"x.{k}": repr(v) for k, v in p.x.items()})
    return out


def find_prediction(client: Any, exp_id: str, key: str) -> Any | None:
    """The recorded prediction run with this key, or None."""
    from windtunnel.orchestrator.tracking import ROLE, search_all

    query = f"tags.`{ROLE}` = '{PREDICTION_ROLE}' and tags.prediction_key = '{key}'"
    found = search_all(client, exp_id, query)
    return found[0] if found else None


def prediction_from_run(run: Any) -> Prediction:
    p = run.data.params
    x = {k.removeprefix("x."): float(v) for k, v in p.items() if k.startswith("x.")}
    extra = json.loads(run.data.tags.get("prediction_json", "{}"))
    return Prediction(
        law=p["law"],
        x=x,
        predicted=float(p["predicted"]),
        pi95=(float(p["pi95_lo"]), float(p["pi95_hi"])),
        laws_sha256=p["laws_sha256"],
        made_at=p["made_at"],
        alternatives=extra.get("alternatives", {}),
        notes=extra.get("notes", []),
    )


def record_prediction(
    tracking_uri: str, experiment: str, key: str, p: Prediction, parent_run_id: str | None = None
) -> tuple[str, Prediction]:
    """Record ``p`` under ``key`` in ``experiment`` (created if needed) and end its run.

    Returns (run id, the recorded prediction). A prediction already recorded under ``key`` is returned as it
    is when it agrees with ``p`` on law, point and laws file (a resumed sweep); a different one raises
    ``PredictionLocked``: a recorded prediction is never replaced."""
    from mlflow.entities import Param, RunTag

    from windtunnel.orchestrator.tracking import ROLE, ensure_experiment, open_client, with_retry

    client = open_client(tracking_uri)
    exp_id = ensure_experiment(client, experiment)
    old = find_prediction(client, exp_id, key)
    if old is not None:
        prev = prediction_from_run(old)
        same = prev.law == p.law and prev.laws_sha256 == p.laws_sha256 and prev.x.keys() == p.x.keys()
        same = same and all(math.isclose(prev.x[k], p.x[k], rel_tol=1e-9) for k in p.x)
        if not same:
            raise PredictionLocked(
                f"prediction {key!r} is already recorded (run {old.info.run_id}, made {prev.made_at}: "
                f"{prev.predicted:.4f} by {prev.law}); a recorded prediction is never overwritten"
            )
        return old.info.run_id, prev
    tags = {ROLE: PREDICTION_ROLE, "prediction_key": key, "status": "finished"}
    tags["prediction_json"] = json.dumps({"alternatives": p.alternatives, "notes": p.notes})[:5000]
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = with_retry(client.create_run, exp_id, run_name=f"prediction-{key}", tags=tags)
    params = [Param(k, v) for k, v in _params(p).items()]
    with_retry(client.log_batch, run.info.run_id, params=params, tags=[RunTag("locked", "true")])
    with_retry(client.set_terminated, run.info.run_id, "FINISHED")
    return run.info.run_id, p
