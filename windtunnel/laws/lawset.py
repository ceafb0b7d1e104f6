"""LawSet: fitted (or built-in) laws, laws.json I/O, prediction with 95 % intervals, and ``fit_laws``.

Prediction intervals: for a law with bootstrap draws of its coefficients, ``predict`` evaluates the law at x
for every draw and returns the 2.5/97.5 percentiles (the 95 % interval of the fitted law's value at x —
the spread of the law). A law with a ``pi95`` record (every fitted loss and optimum law) widens it to a
95 % prediction interval by its residual and rollout scale (``windtunnel.laws.intervals``). Laws without
draws or ``pi95`` (the built-in ``ling`` set) return lo = hi = value.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from windtunnel.laws import hparam, isoflop, leverage, steplaw  # noqa: F401  (importing registers their laws)
from windtunnel.laws.base import Law, LawError, jsonable
from windtunnel.laws.builtin import ling_laws
from windtunnel.laws.checks import degenerate, flat_loss, mark_duplicate_runs
from windtunnel.laws.hparam import NEAR_OPTIMAL_BAND
from windtunnel.laws.intervals import widen
from windtunnel.laws.parametric import fit_parametric_law
from windtunnel.laws.powerlaw import fit_frontier_law, frontier_value
from windtunnel.laws.registry import FitOptions, LawSpec, law_names, law_spec, power_value, register
from windtunnel.runtable import point_rows, usable_runs, validate_run_table

# The parametric and frontier fits are registered here through their public fit functions.


def _parametric_value(c: dict[str, Any], x: Any) -> Any:
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Eq. 2)."""
    N, D = (np.asarray(v, dtype=float) for v in x)
    return c["E"] + c["A"] / N ** c["alpha"] + c["B"] / D ** c["beta"]


register(
    LawSpec(
        name="parametric",
        columns=("params", "tokens", "loss"),
        subset="primary",
        fit=lambda runs, o: fit_parametric_law(runs, n_boot=o.n_boot, rng=o.rng),
        evaluate=_parametric_value,
        rank=0,
        signs=(("E", 1), ("A", 1), ("B", 1), ("alpha", 1), ("beta", 1)),
        uses_points=True,  # any (N, D, loss) row, a point at D_k included, is a sample of L(N, D)
    )
)
register(
    LawSpec(
        name="frontier",
        columns=("compute", "loss"),
        subset="primary",
        fit=lambda runs, o: fit_frontier_law(runs, n_boot=o.n_boot, rng=o.rng),
        evaluate=lambda c, x: frontier_value(c["E"], c["A"], c["alpha"], np.asarray(x, dtype=float)),
        rank=30,
        signs=(("E", 0), ("A", 1), ("alpha", 1)),  # E = 0 (e^(log E) underflowed): a pure power law
    )
)

DEFAULT_LAWS = law_names()
# law name -> (columns it needs, family subset): a read-only view of the registry
LAW_COLUMNS: dict[str, tuple[list[str], str]] = {
    n: (list(law_spec(n).columns), law_spec(n).subset) for n in DEFAULT_LAWS
}
# the laws of the form y = a·C^b
POWER_LAWS = {n for n in DEFAULT_LAWS if law_spec(n).evaluate is power_value}


@dataclass
class LawSet:
    """Laws by name, the reasons laws could not be fitted, and the runs excluded per law."""

    laws: dict[str, Law] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)
    name: str = ""

    def with_fallback(self, other: LawSet) -> tuple[LawSet, list[str]]:
        """This set's laws, plus ``other``'s for the names this set lacks (e.g. a sweep that fitted only
        ``lr_opt`` and ``frontier`` completed by the published ``ling`` set). Returns the merged set and the
        names taken from ``other``, so a caller can say where each law came from."""
        borrowed = [n for n in other.laws if n not in self.laws]
        merged = LawSet(
            laws={**self.laws, **{n: other.laws[n] for n in borrowed}},
            errors={k: v for k, v in self.errors.items() if k not in borrowed},
            excluded=dict(self.excluded),
            name=f"{self.name or 'fitted'}+{other.name or 'fallback'}",
        )
        return merged, borrowed

    # ---- I/O ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "laws": {n: law.to_dict() for n, law in self.laws.items()},
            "errors": dict(self.errors),
            "excluded": jsonable(self.excluded),
        }

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False, default=_nan_to_none))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "") -> LawSet:
        if not isinstance(data, dict) or not isinstance(data.get("laws"), dict):
            raise ValueError('a laws file must be a JSON object with a "laws" mapping')
        laws = {n: Law.from_dict(n, entry) for n, entry in data["laws"].items()}
        return cls(
            laws=laws, errors=dict(data.get("errors", {})), excluded=dict(data.get("excluded", {})), name=name
        )

    @classmethod
    def from_json(cls, path: str | Path) -> LawSet:
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text()), name=str(path))

    # ---- prediction ----------------------------------------------------------------------------
    def predict(self, name: str, x: Any) -> tuple[Any, Any, Any]:
        """(value, lo95, hi95) of law ``name`` at x: C for power laws and frontier, (N, D) for parametric
        and the StepFun laws ``steplaw_lr``/``steplaw_batch``, (A, G, C) for leverage. Arrays broadcast;
        scalars give floats."""
        if name not in self.laws:
            raise KeyError(f"no law {name!r} in this set (have: {', '.join(self.laws) or 'none'})")
        law = self.laws[name]
        value = _evaluate(name, law.coefficients, x)
        draws = law.samples
        if not draws or not all(len(v) for v in draws.values()):
            return _with_pi95(law, value, value, value)
        keys = list(draws)
        R = min(len(draws[k]) for k in keys)
        coef_R = {
            k: np.asarray(draws[k][:R], dtype=float).reshape((R,) + (1,) * np.ndim(value)) for k in keys
        }
        with np.errstate(all="ignore"):
            vals = _evaluate(name, coef_R, x)
        vals = np.where(np.isfinite(vals), vals, np.nan)
        lo, hi = np.nanpercentile(vals, [2.5, 97.5], axis=0)
        return _with_pi95(law, value, lo, hi)


def _with_pi95(law: Law, value: Any, lo: Any, hi: Any) -> tuple[Any, Any, Any]:
    """A law with a ``pi95`` record (loss laws) widens its bootstrap interval by its residual scale."""
    if "pi95" in law.extra:
        lo, hi = widen(value, lo, hi, law.extra["pi95"])
    return _scalar(value), _scalar(lo), _scalar(hi)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _scalar(v: Any) -> Any:
    arr = np.asarray(v, dtype=float)
    return float(arr) if arr.ndim == 0 else arr


def _evaluate(name: str, c: dict[str, Any], x: Any) -> Any:
    return law_spec(name).evaluate(c, x)


def load_laws(source: str | Path) -> LawSet:
    """``"ling"`` → the built-in published set; anything else → a laws.json path."""
    if str(source) == "ling":
        return LawSet(laws=ling_laws(), name="ling")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such laws file (use 'ling' for the built-in set)")
    return LawSet.from_json(path)


def fit_laws(
    runs_df: pd.DataFrame,
    laws: list[str] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    band: float = NEAR_OPTIMAL_BAND,
) -> LawSet:
    """Fit every requested law its columns allow; a law that cannot be fitted gets a reason in ``errors``.

    Runs with status != "finished" and rows with non-finite or non-positive values in a law's columns are
    excluded per law; the counts per reason go to ``LawSet.excluded[name]`` and the law's ``notes``. A row
    repeating an earlier run_id is counted once (``DuplicateRunWarning``). A fit on a flat loss, or with
    non-finite or wrong-signed coefficients, is refused with its reason (``windtunnel.laws.checks``).
    Without ``laws``, laws whose columns are absent or whose family subset is empty are silently skipped;
    requested ones get an error naming the reason.
    """
    requested = laws is not None
    names = list(laws) if laws is not None else DEFAULT_LAWS
    known = law_names()
    runs = validate_run_table(runs_df)
    runs = runs.assign(_duplicate=mark_duplicate_runs(runs).to_numpy())
    both = {"dense", "moe"} <= set(runs["family"].str.lower())
    out = LawSet(name="fitted")
    for n in names:
        if n not in known:
            out.errors[n] = f"unknown law (known: {', '.join(known)})"
    for i, name in enumerate(n for n in names if n in known):
        spec = law_spec(name)
        sub, problem = _family_subset(runs, spec, both)
        if problem is not None:
            if requested:
                out.errors[name] = problem
            continue
        points = point_rows(sub) if not spec.uses_points else pd.Series(False, index=sub.index)
        sub = sub[~points]
        cols = list(spec.columns)
        if not requested and sub[cols].isna().all().any():
            continue
        clean = usable_runs(sub[~sub["_duplicate"]].drop(columns="_duplicate").reset_index(drop=True), cols)
        if not requested and not spec.fit_by_default(clean.runs, both):
            continue
        excluded = dict(clean.excluded)
        if sub["_duplicate"].any():
            excluded["duplicate run_id"] = int(sub["_duplicate"].sum())
        if points.any():
            excluded["point rows (one row per run)"] = int(points.sum())
        if excluded:
            out.excluded[name] = excluded
        opts = FitOptions(n_boot=bootstrap, rng=np.random.default_rng(seed + i), band=band)
        law, reason = _fit_checked(spec, clean.runs, opts)
        if law is None:
            out.errors[name] = f"{name}: {reason}" + _excluded_text(excluded)
            continue
        if excluded:
            law.notes["excluded"] = excluded
        fitted_C = clean.runs["compute"].to_numpy(float)  # the range a recommendation extrapolates from
        law.notes["compute_range"] = [float(np.nanmin(fitted_C)), float(np.nanmax(fitted_C))]
        out.laws[name] = law
    return out


def _family_subset(runs: pd.DataFrame, spec: LawSpec, both: bool) -> tuple[pd.DataFrame, str | None]:
    """The runs a law is fitted to (see ``LawSpec.subset``), or the reason there are none."""
    family = runs["family"].str.lower()
    if spec.subset == "primary" and both:
        return runs[family == "moe"], None
    if spec.subset == "dense":
        if not both:
            return runs.iloc[:0], "needs both dense and MoE runs in the table (family column)"
        return runs[family == "dense"], None
    return runs, None


def _fit_checked(spec: LawSpec, runs: pd.DataFrame, opts: FitOptions) -> tuple[Law | None, str | None]:
    """(law, None) for a usable fit; (None, reason) when the loss is flat, the fit fails or degenerates."""
    flat = flat_loss(runs["loss"].to_numpy(float)) if len(runs) else None
    if flat:
        return None, flat
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            law = spec.fit(runs, opts)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except LawError as err:
        return None, str(err)
    except (np.linalg.LinAlgError, FloatingPointError, ValueError) as err:
        return None, f"fit failed ({type(err).__name__}: {err})"
    reason = degenerate(law, spec)
    return (None, reason) if reason else (law, None)


def _excluded_text(excluded: dict[str, int]) -> str:
    return f" [excluded: {', '.join(f'{v} {k}' for k, v in excluded.items())}]" if excluded else ""
