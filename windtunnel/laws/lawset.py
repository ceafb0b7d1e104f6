"""LawSet: fitted (or built-in) laws, laws.json I/O, prediction with 95 % intervals, and ``fit_laws``.

Prediction intervals: for a law with bootstrap draws of its coefficients, ``predict`` evaluates the law at x
for every draw and returns the 2.5/97.5 percentiles (the 95 % interval of the fitted law's value at x —
the spread of the law, not of a single run's noise). Laws without draws (the built-in ``ling`` set) return
lo = hi = value.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from windtunnel.laws.base import Law, LawError, _jsonable
from windtunnel.laws.builtin import ling_laws
from windtunnel.laws.hparam import NEAR_OPTIMAL_BAND, fit_hparam_law
from windtunnel.laws.intervals import widen
from windtunnel.laws.isoflop import fit_isoflop_law
from windtunnel.laws.leverage import fit_leverage_law, leverage_value
from windtunnel.laws.parametric import fit_parametric_law
from windtunnel.laws.powerlaw import fit_frontier_law, frontier_value
from windtunnel.laws.steplaw import STEPLAW_LAWS, fit_steplaw_law, steplaw_problem, steplaw_value
from windtunnel.runtable import usable_runs, validate_run_table

# law name -> (columns it needs, family subset: "primary" = MoE runs if the table has both families, else all)
LAW_COLUMNS: dict[str, tuple[list[str], str]] = {
    "parametric": (["params", "tokens", "loss"], "primary"),
    "lr_opt": (["compute", "lr", "loss"], "primary"),
    "batch_opt": (["compute", "batch_tokens", "loss"], "primary"),
    "m_opt": (["compute", "m", "loss"], "primary"),
    "params_opt": (["compute", "params", "loss"], "primary"),
    "d_opt": (["compute", "tokens", "loss"], "primary"),
    "m_opt_dense": (["compute", "m", "loss"], "dense"),
    "params_opt_dense": (["compute", "params", "loss"], "dense"),
    "d_opt_dense": (["compute", "tokens", "loss"], "dense"),
    "frontier": (["compute", "loss"], "primary"),
    "leverage": (["compute", "loss"], "all"),
    "steplaw_lr": (["params", "tokens", "lr", "batch_tokens", "loss"], "primary"),
    "steplaw_batch": (["params", "tokens", "lr", "batch_tokens", "loss"], "primary"),
}
DEFAULT_LAWS = list(LAW_COLUMNS)
POWER_LAWS = {
    "lr_opt",
    "batch_opt",
    "m_opt",
    "params_opt",
    "d_opt",
    "m_opt_dense",
    "params_opt_dense",
    "d_opt_dense",
}


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
            "excluded": _jsonable(self.excluded),
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
    if name == "parametric":
        N, D = (np.asarray(v, dtype=float) for v in x)
        return c["E"] + c["A"] / N ** c["alpha"] + c["B"] / D ** c["beta"]
    if name == "leverage":
        A, G, C = x
        return leverage_value(c, A, G, C)
    if name in STEPLAW_LAWS:
        N, D = x
        return steplaw_value(name, c, N, D)
    C = np.asarray(x, dtype=float)
    if name == "frontier":
        return frontier_value(c["E"], c["A"], c["alpha"], C)
    return c["a"] * C ** c["b"]


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
    excluded per law; the counts per reason go to ``LawSet.excluded[name]`` and the law's ``notes``.
    Without ``laws``, laws whose columns are absent or whose family subset is empty are silently skipped;
    requested ones get an error naming the reason.
    """
    requested = laws is not None
    names = list(laws) if laws is not None else DEFAULT_LAWS
    unknown = [n for n in names if n not in LAW_COLUMNS]
    runs = validate_run_table(runs_df)
    families = set(runs["family"].str.lower())
    both = {"dense", "moe"} <= families
    out = LawSet(name="fitted")
    for n in unknown:
        out.errors[n] = f"unknown law (known: {', '.join(LAW_COLUMNS)})"
    for i, name in enumerate(n for n in names if n in LAW_COLUMNS):
        cols, subset = LAW_COLUMNS[name]
        if subset == "primary" and both:
            sub = runs[runs["family"].str.lower() == "moe"]
        elif subset == "dense":
            if not both:
                if requested:
                    out.errors[name] = "needs both dense and MoE runs in the table (family column)"
                continue
            sub = runs[runs["family"].str.lower() == "dense"]
        else:
            sub = runs
        if not requested and name != "leverage" and sub[cols].isna().all().any():
            continue
        if not requested and name == "leverage" and not both:
            continue
        clean = usable_runs(sub.reset_index(drop=True), cols)
        if not requested and name in STEPLAW_LAWS and steplaw_problem(clean.runs, "steplaw_lr") is not None:
            continue  # by default only on StepFun-style grids: cells that vary lr and batch, N and D
        if clean.excluded:
            out.excluded[name] = clean.excluded
        rng = np.random.default_rng(seed + i)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                law = _fit_one(name, clean.runs, bootstrap, rng, band)
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except LawError as err:
            out.errors[name] = f"{name}: {err}" + _excluded_text(clean.excluded)
            continue
        except (np.linalg.LinAlgError, FloatingPointError, ValueError) as err:
            out.errors[name] = f"{name}: fit failed ({type(err).__name__}: {err})" + _excluded_text(
                clean.excluded
            )
            continue
        if clean.excluded:
            law.notes["excluded"] = clean.excluded
        out.laws[name] = law
    return out


def _excluded_text(excluded: dict[str, int]) -> str:
    return f" [excluded: {', '.join(f'{v} {k}' for k, v in excluded.items())}]" if excluded else ""


def _fit_one(name: str, runs: pd.DataFrame, n_boot: int, rng: np.random.Generator, band: float) -> Law:
    if name == "parametric":
        return fit_parametric_law(runs, n_boot=n_boot, rng=rng)
    if name in ("lr_opt", "batch_opt"):
        return fit_hparam_law(
            runs, name, "lr" if name == "lr_opt" else "batch_tokens", n_boot=n_boot, rng=rng, band=band
        )
    if name in POWER_LAWS:
        column = {"m": "m", "params": "params", "d": "tokens"}[name.split("_")[0]]
        return fit_isoflop_law(runs, name, column, n_boot=n_boot, rng=rng)
    if name == "frontier":
        return fit_frontier_law(runs, n_boot=n_boot, rng=rng)
    if name == "leverage":
        return fit_leverage_law(runs, n_boot=n_boot, rng=rng)
    if name in STEPLAW_LAWS:
        return fit_steplaw_law(runs, name, n_boot=n_boot, rng=rng, band=band)
    raise LawError(f"unknown law {name!r}")
