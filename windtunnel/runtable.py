"""The run table: one row per training run, the law engine's only input (docs/DESIGN.md "Contracts").

Columns: ``run_id, sweep, family, params`` (non-embedding active parameters, the size the laws use),
``n_total, n_active, m`` (non-embedding training FLOPs per token), ``tokens, compute`` (= m·tokens, or
6·params·tokens where m is unknown), ``lr, batch_tokens, loss, status``.

Optional extra columns (used by the efficiency-leverage law only): ``act_ratio`` (A = (E_a + E_s)/(E + E_s))
and ``granularity`` (G = 2·d_model/d_expert); NaN for dense runs.

A run that takes points (``trainer.points``: WSM merges or WSD cooldown branches at token fractions f_k)
gives one row per point beside its own (``expand_points``, columns ``POINT_COLUMNS``); ``sweep_compute``
counts what such rows spent, each parent once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

RUN_TABLE_COLUMNS: list[str] = [
    "run_id",
    "sweep",
    "family",
    "params",
    "n_total",
    "n_active",
    "m",
    "tokens",
    "compute",
    "lr",
    "batch_tokens",
    "loss",
    "status",
]
OPTIONAL_COLUMNS: list[str] = ["act_ratio", "granularity"]
STRING_COLUMNS: list[str] = ["run_id", "sweep", "family", "status"]
# every run-table column that is not a label, in table order, then the optional ones
NUMERIC_COLUMNS: list[str] = [c for c in RUN_TABLE_COLUMNS if c not in STRING_COLUMNS] + OPTIONAL_COLUMNS


def validate_run_table(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``df`` with every run-table column present and typed.

    Missing numeric columns become NaN, missing ``status`` becomes ``"finished"``, missing ``run_id`` is
    numbered, ``compute`` is filled as m·tokens, else 6·params·tokens, where it is missing. Extra columns
    are kept. Raises ``ValueError`` if ``df`` is not a DataFrame or a numeric column holds non-numbers.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"run table must be a pandas DataFrame, got {type(df).__name__}")
    out = df.copy()
    for col in NUMERIC_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan
        else:
            converted = pd.to_numeric(out[col], errors="coerce")
            bad = converted.isna() & out[col].notna()
            if bad.any():
                raise ValueError(
                    f"run table column {col!r} holds non-numeric values, e.g. {out[col][bad].iloc[0]!r}"
                )
            out[col] = converted.astype(float)
    if "run_id" not in out.columns:
        out["run_id"] = [f"run{i}" for i in range(len(out))]
    if "status" not in out.columns:
        out["status"] = "finished"
    for col in ("sweep", "family"):
        if col not in out.columns:
            out[col] = ""
    for col in STRING_COLUMNS:
        out[col] = out[col].fillna("").astype(str)
    derived = np.where(out["m"].notna(), out["m"] * out["tokens"], 6.0 * out["params"] * out["tokens"])
    out["compute"] = out["compute"].where(out["compute"].notna(), derived)
    ordered = RUN_TABLE_COLUMNS + [c for c in out.columns if c not in RUN_TABLE_COLUMNS]
    return out[ordered].reset_index(drop=True)


@dataclass
class CleanRuns:
    """Runs usable by a law plus what was dropped and why (reason -> count)."""

    runs: pd.DataFrame
    excluded: dict[str, int] = field(default_factory=dict)


def usable_runs(df: pd.DataFrame, columns: list[str], positive: list[str] | None = None) -> CleanRuns:
    """Keep finished runs whose ``columns`` are finite (and, for ``positive``, > 0); count the rest by
    reason."""
    positive = columns if positive is None else positive
    excluded: dict[str, int] = {}
    keep = np.ones(len(df), dtype=bool)
    status_bad = (df["status"].str.lower() != "finished").to_numpy()
    for status, count in df.loc[status_bad, "status"].value_counts().items():
        excluded[f"status={status or 'empty'}"] = int(count)
    keep &= ~status_bad
    for col in columns:
        values = df[col].to_numpy(dtype=float)
        nonfinite = keep & ~np.isfinite(values)
        if nonfinite.any():
            excluded[f"non-finite {col}"] = int(nonfinite.sum())
        keep &= ~nonfinite
        if col in positive:
            nonpos = keep & (values <= 0)
            if nonpos.any():
                excluded[f"non-positive {col}"] = int(nonpos.sum())
            keep &= ~nonpos
    return CleanRuns(df.loc[keep].reset_index(drop=True), excluded)


# ---- points: several rows from one run (trainer.points) ----------------------------------------------
# Point columns of a run table read from the tracking store. ``parent_run_id``: the run a point row was
# taken from ("" for a run without points; a run with points is its own parent at point_fraction 1);
# ``point_fraction`` f_k; ``point`` D_k, the parent's tokens where the point was taken (a WSD row's ``tokens``
# adds its branch); ``compute_spent``: the FLOPs this row adds to the sweep (the run's own compute for a
# run, 0 for a WSM merge, the branch's m·b_k·B for a WSD branch), so Σ compute_spent counts a parent once.
POINT_COLUMNS: list[str] = ["parent_run_id", "point_fraction", "point", "compute_spent"]
# a trainer point (trainer.points.POINT_KEYS) as stored with its run: key "pt{k}.{field}"
_STORED_POINT_FIELDS = {
    "fraction": "point_fraction",
    "at_tokens": "point_at_tokens",
    "tokens": "point_tokens",
    "loss": "point_val_loss",
    "extra_flops": "point_extra_flops",
}


def stored_point_metrics(points: list[dict[str, float]]) -> dict[str, float]:
    """A run's points (``TrainResult.points``) as flat metrics ``pt{k}.{field}`` to store with the run."""
    return {
        f"pt{k}.{f}": float(p[src]) for k, p in enumerate(points) for f, src in _STORED_POINT_FIELDS.items()
    }


def expand_points(row: dict, stored: dict[str, float]) -> list[dict]:
    """One run-table row per point of a run (``stored``: its ``pt{k}.{field}`` metrics), the run's own row
    first (its point at f = 1). A point row copies the run's columns and takes its own ``run_id``
    (``<run_id>@<f>``), ``tokens`` (D_k plus its branch), ``loss``, ``compute`` = m·tokens (6·params·tokens
    where m is unknown) and ``compute_spent`` (see ``POINT_COLUMNS``)."""
    ks = sorted({int(k[2:].split(".")[0]) for k in stored if k.startswith("pt") and "." in k})
    own = dict(row)
    own.update(parent_run_id=str(row["run_id"]) if ks else "", point_fraction=1.0, point=row["tokens"])
    own["compute_spent"] = row["compute"]
    out = [own]
    for k in ks:
        f = stored.get(f"pt{k}.fraction", float("nan"))
        if not 0 < f < 1:  # f = 1 is the run's own row
            continue
        tokens = stored[f"pt{k}.tokens"]
        m = row.get("m", float("nan"))
        per_token = m if np.isfinite(m) else 6.0 * row["params"]
        point = dict(row)
        point.update(
            run_id=f"{row['run_id']}@{f:g}",
            parent_run_id=str(row["run_id"]),
            point_fraction=f,
            point=stored[f"pt{k}.at_tokens"],
            tokens=tokens,
            loss=stored[f"pt{k}.loss"],
            compute=per_token * tokens,
            compute_spent=stored[f"pt{k}.extra_flops"],
        )
        out.append(point)
    return out


def point_rows(df: pd.DataFrame) -> pd.Series:
    """True for the rows taken from a run below its end (``point_fraction`` < 1); False for every run's own
    row. Decided by ``point_fraction`` alone, not by ``parent_run_id``."""
    if "point_fraction" not in df.columns:
        return pd.Series(False, index=df.index)
    f = pd.to_numeric(df["point_fraction"], errors="coerce")
    return f.notna() & (f < 1.0)


def sweep_compute(df: pd.DataFrame) -> float:
    """FLOPs the rows' runs spent: Σ ``compute_spent`` (a parent once, plus its branches), else Σ compute."""
    if "compute_spent" not in df.columns:
        return float(df["compute"].sum())
    spent = df["compute_spent"].to_numpy(float)
    fallback = np.where(point_rows(df).to_numpy(), 0.0, df["compute"].to_numpy(float))
    return float(np.where(np.isfinite(spent), spent, fallback).sum())
