"""The run table: one row per training run, the law engine's only input (docs/DESIGN.md "Contracts").

Columns: ``run_id, sweep, family, params`` (non-embedding active parameters, the size the laws use),
``n_total, n_active, m`` (non-embedding training FLOPs per token), ``tokens, compute`` (= m·tokens, or
6·params·tokens where m is unknown), ``lr, batch_tokens, loss, status``.

Optional extra columns (used by the efficiency-leverage law only): ``act_ratio`` (A = (E_a + E_s)/(E + E_s))
and ``granularity`` (G = 2·d_model/d_expert); NaN for dense runs.
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
