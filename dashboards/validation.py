"""The validation study of an experiment, read from the store: the ladder, the prediction recorded before the
target trained, and the target's observed runs (``windtunnel.orchestrator.validation``).

What belongs to the study:
- the prediction: the run ``windtunnel.predict.record_prediction`` wrote under a target key
  (``validation.prediction_key``: ``target-<config hash>``; its params are write-once), the latest one when a
  changed target recorded several, parsed by ``predict.prediction_from_run``;
- the ladder: the experiment's finished trials of every study but ``TARGET_STUDY``;
- the target: the trials of ``TARGET_STUDY`` trained on the predicted point (D = x.tokens, and N = x.params
  where a run has its size); target trials of another configuration are left out and counted;
- the laws: the sweep parent's ``laws.json`` artifact, checked against the prediction's ``laws_sha256``;
  without it, the dashboard's law file, said in ``laws_note``.

The figures are those of ``validation_report.build_summary`` (the sweep's ``summary.json``): observed = mean
of the finished target runs' final loss, seed std = their sample std (ddof = 1), error = observed − predicted,
extrapolation factor = C_target / the ladder's largest run's C, ladder share = Σ C(ladder) / C_target.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from windtunnel.laws import LawSet
from windtunnel.laws import load_laws as engine_load_laws
from windtunnel.orchestrator.spec_target import TARGET_STUDY
from windtunnel.orchestrator.validation import PREDICTION_KEY
from windtunnel.predict import Prediction, prediction_from_run

LAWS_ARTIFACT = "laws.json"
SAME_POINT_RTOL = 1e-6


@dataclass
class ValidationStudy:
    prediction: Prediction
    prediction_run_id: str
    recorded_at: pd.Timestamp | None  # the prediction run's end: it was recorded by then
    ladder: pd.DataFrame  # finished ladder runs
    target: pd.DataFrame  # target trials on the predicted point, every state
    other_target_runs: int  # target trials of another configuration (a changed sweep), left out
    laws: LawSet | None
    laws_note: str

    @property
    def finished(self) -> pd.DataFrame:
        t = self.target
        return t[(t["state"] == "finished") & np.isfinite(t["loss"])]

    def stats(self) -> dict[str, Any]:
        """The study's numbers, defined as in the sweep's ``summary.json`` (module docstring)."""
        losses = self.finished["loss"].to_numpy(float)
        lo, hi = (float(v) for v in self.prediction.pi95)
        c_target = float(self.prediction.x.get("compute", math.nan))
        observed = float(losses.mean()) if losses.size else math.nan
        ladder_c = self.ladder["compute"].to_numpy(float)
        starts = self.target["start_time"].dropna()
        before = None
        if self.recorded_at is not None and len(starts):
            before = bool(self.recorded_at <= starts.min())
        return {
            "law": self.prediction.law,
            "predicted": self.prediction.predicted,
            "pi95": [lo, hi],
            "observed": observed,
            "observed_losses": losses.tolist(),
            "seed_std": float(np.std(losses, ddof=1)) if losses.size >= 2 else None,
            "abs_error": abs(observed - self.prediction.predicted) if losses.size else math.nan,
            "inside_pi95": bool(lo <= observed <= hi) if losses.size else None,
            "target_compute": c_target,
            "extrapolation_factor": c_target / ladder_c.max() if ladder_c.size else math.nan,
            "ladder_compute": float(ladder_c.sum()),
            "ladder_share": float(ladder_c.sum()) / c_target,
            "n_target": int(len(self.target)),
            "recorded_before_target": before,
        }

    def table(self) -> pd.DataFrame:
        """(item, value) rows: predicted, pi95, observed (mean ± seed std), |error|, extrapolation factor,
        ladder compute share, and when the prediction was recorded."""
        s = self.stats()
        lo, hi = s["pi95"]
        n_fin = len(s["observed_losses"])
        if n_fin:
            std = "n/a (one seed)" if s["seed_std"] is None else f"{s['seed_std']:.4f}"
            seeds = ", ".join(f"{v:.4f}" for v in s["observed_losses"])
            observed = f"{s['observed']:.4f} ± {std}  ({n_fin} of {s['n_target']} seeds finished: {seeds})"
            inside = "inside" if s["inside_pi95"] else "OUTSIDE"
            error = f"{s['abs_error']:.4f} nats, {inside} the 95% interval"
        else:
            observed = f"none yet (0 of {s['n_target']} target runs finished)"
            error = "n/a"
        when = {True: "before the first target run started", False: "AFTER the first target run started"}
        rows = [
            ("loss law", self.prediction.law),
            ("predicted", f"{s['predicted']:.4f}"),
            ("95% interval", f"[{lo:.4f}, {hi:.4f}]"),
            ("observed (mean ± seed std)", observed),
            ("|error|", error),
            (
                "extrapolation factor",
                f"{s['extrapolation_factor']:.1f}x (C_target {s['target_compute']:.3g})",
            ),
            ("ladder compute share", f"{s['ladder_share']:.2%} ({s['ladder_compute']:.3g} FLOPs)"),
            (
                "recorded",
                f"{self.prediction.made_at}, {when.get(s['recorded_before_target'], 'no target run yet')}",
            ),
            ("laws", self.laws_note),
        ]
        if self.other_target_runs:
            rows.append(("left out", f"{self.other_target_runs} target run(s) of another configuration"))
        return pd.DataFrame(rows, columns=["item", "value"])


def _prediction_row(predictions: pd.DataFrame) -> pd.Series | None:
    if predictions.empty or "tags.prediction_key" not in predictions:
        return None
    keys = predictions["tags.prediction_key"].astype(str)
    rows = predictions[(keys == PREDICTION_KEY) | keys.str.startswith(PREDICTION_KEY + "-")]
    if rows.empty:
        return None
    return rows.sort_values("start_time").iloc[-1] if "start_time" in rows else rows.iloc[-1]


def _prediction(row: pd.Series) -> Prediction:
    """The recorded prediction, parsed by ``windtunnel.predict.prediction_from_run`` from the row's
    ``params.*`` and ``tags.*`` (the run's own data)."""

    def prefixed(prefix: str) -> dict[str, str]:
        return {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix) and isinstance(v, str)}

    run = SimpleNamespace(data=SimpleNamespace(params=prefixed("params."), tags=prefixed("tags.")))
    return prediction_from_run(run)


def _on_point(target: pd.DataFrame, x: dict[str, float]) -> pd.Series:
    """Target trials trained on the predicted point: the same tokens up to one batch (the trainer trains
    whole batches, so D = C / M is rounded down to a multiple of the run's batch tokens), and the same size
    where the run has it."""
    tokens = target["tokens"].to_numpy(float)
    batch = target["batch_tokens"].to_numpy(float) if "batch_tokens" in target else np.zeros(len(target))
    slack = np.where(np.isfinite(batch), batch, 0.0) + SAME_POINT_RTOL * np.abs(tokens)
    ok = np.abs(tokens - x.get("tokens", np.nan)) <= slack
    params = target["params"].to_numpy(float)
    same_n = np.isclose(params, x.get("params", np.nan), rtol=SAME_POINT_RTOL)
    return pd.Series(ok & (np.isnan(params) | same_n), index=target.index)


def _read_laws_artifact(tracking_uri: str, parent_run_id: str) -> tuple[bytes, LawSet]:
    """The bytes and the law set of the parent run's laws.json: read in place from a local artifact store,
    else downloaded into a temporary folder."""
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking.artifact_utils import get_artifact_uri
    from mlflow.utils.file_utils import local_file_uri_to_path

    uri = get_artifact_uri(parent_run_id, LAWS_ARTIFACT, tracking_uri)
    if urlparse(uri).scheme in ("", "file"):
        path = Path(local_file_uri_to_path(uri))
        return path.read_bytes(), engine_load_laws(str(path))
    with tempfile.TemporaryDirectory(prefix="windtunnel-validation-") as tmp:
        path = Path(download_artifacts(artifact_uri=uri, dst_path=tmp))
        return path.read_bytes(), engine_load_laws(str(path))


def study_laws(
    tracking_uri: str, parent_run_id: str, sha: str, fallback: LawSet | None
) -> tuple[LawSet | None, str]:
    """The sweep's laws.json (artifact of its parent run) and a note saying whether it is the file that
    made the prediction; the dashboard's law set when the artifact cannot be read."""
    from mlflow.exceptions import MlflowException

    try:
        raw, lawset = _read_laws_artifact(tracking_uri, parent_run_id)
    except (MlflowException, OSError, ValueError, KeyError, TypeError) as err:
        why = f"the sweep's {LAWS_ARTIFACT} could not be read ({type(err).__name__})"
        if fallback is not None and fallback.laws:
            return fallback, f"{why}; curves from the dashboard's law file {fallback.name}"
        return None, f"{why}; no law curve"
    if hashlib.sha256(raw).hexdigest() == sha:
        return lawset, f"the sweep's {LAWS_ARTIFACT}, the file that made the prediction (sha256 {sha[:12]})"
    return (
        lawset,
        f"the sweep's {LAWS_ARTIFACT}, refitted after the prediction (sha256 differs from {sha[:12]})",
    )


def load_study(data: Any, tracking_uri: str, fallback: LawSet | None = None) -> ValidationStudy | None:
    """The validation study of one experiment (``dashboards.data.SweepData``), or None without a recorded
    target prediction."""
    row = _prediction_row(data.predictions)
    if row is None:
        return None
    pred = _prediction(row)
    runs = data.runs
    is_target = runs["study"] == TARGET_STUDY
    target = runs[is_target]
    on_point = _on_point(target, pred.x)
    ladder = runs[~is_target & (runs["state"] == "finished") & np.isfinite(runs["loss"])]
    ladder = ladder[np.isfinite(ladder["compute"]) & (ladder["compute"] > 0)]
    parent = row.get("tags.mlflow.parentRunId")
    laws, note = (
        study_laws(tracking_uri, parent, pred.laws_sha256, fallback)
        if isinstance(parent, str) and parent
        else (fallback, "the prediction names no sweep run; curves from the dashboard's law file")
    )
    end = row.get("end_time")
    return ValidationStudy(
        prediction=pred,
        prediction_run_id=str(row["run_id"]),
        recorded_at=end if isinstance(end, pd.Timestamp) and not pd.isna(end) else None,
        ladder=ladder,
        target=target[on_point],
        other_target_runs=int((~on_point).sum()),
        laws=laws,
        laws_note=note,
    )


def law_path(laws: LawSet, law: str, C_G: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, lo95, hi95) of a loss law along the compute-optimal path, as the sweep's validation figure
    draws it: frontier L(C); parametric L(N_opt(C), D_opt(C)) with (N, D) from the allocation laws
    (``windtunnel.predict.point_from_compute``). NaN where the law set cannot place the point."""
    from windtunnel.errors import PredictionError
    from windtunnel.predict import point_from_compute

    if law == "frontier":
        v, lo, hi = laws.predict("frontier", C_G)
        return tuple(np.asarray(a, dtype=float) for a in (v, lo, hi))  # type: ignore[return-value]
    out = np.full((3, len(C_G)), np.nan)
    for g, c in enumerate(C_G):
        try:
            point, _ = point_from_compute(laws, float(c))
            out[:, g] = [float(a) for a in laws.predict(law, (point["params"], point["tokens"]))]
        except (PredictionError, KeyError, ValueError):
            continue
    return out[0], out[1], out[2]
