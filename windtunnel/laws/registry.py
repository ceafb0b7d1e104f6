"""The registry of laws: each law module registers its laws here (name, required columns, family subset, fit
and evaluate functions); ``lawset.fit_laws`` and ``LawSet.predict`` dispatch through it by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from windtunnel.laws.base import Law


@dataclass(frozen=True)
class FitOptions:
    """What every fit function receives besides the runs."""

    n_boot: int
    rng: np.random.Generator
    band: float


FitFn = Callable[[pd.DataFrame, FitOptions], Law]
EvaluateFn = Callable[[dict[str, Any], Any], Any]


def _always(runs: pd.DataFrame, both_families: bool) -> bool:
    return True


@dataclass(frozen=True)
class LawSpec:
    """One registered law.

    ``subset``: "primary" = the MoE runs when the table has both families, else all runs; "dense" = the dense
    runs of a table with both families; "all" = every run. ``fit_by_default(clean_runs, both_families)``
    says whether ``fit_laws`` without an explicit list fits it. ``signs`` maps a coefficient whose sign is
    known (e.g. an allocation exponent) to +1 or -1, or 0 for "not negative" (a bound the fit may reach):
    a fit with the other sign is refused. ``rank`` orders ``DEFAULT_LAWS``. ``uses_points``: the law also
    takes the rows a run's points add (``trainer.points``, ``windtunnel.runtable.point_rows``); laws that
    pick an optimum among runs at one budget (IsoFLOP, hyper-parameter, leverage, frontier) assume one row
    per run at its own budget and see only runs' own rows.
    """

    name: str
    columns: tuple[str, ...]
    subset: str
    fit: FitFn
    evaluate: EvaluateFn
    rank: int
    signs: tuple[tuple[str, int], ...] = ()
    fit_by_default: Callable[[pd.DataFrame, bool], bool] = _always
    uses_points: bool = False


_REGISTRY: dict[str, LawSpec] = {}


def register(spec: LawSpec) -> LawSpec:
    """Add ``spec`` (a law module calls this at import); a second spec under one name is a programming
    error."""
    if spec.subset not in ("primary", "dense", "all"):
        raise ValueError(f"law {spec.name!r}: subset must be primary, dense or all, not {spec.subset!r}")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"law {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def law_spec(name: str) -> LawSpec:
    """The registered spec of ``name``; KeyError naming the known laws otherwise."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown law {name!r} (known: {', '.join(law_names())})")
    return _REGISTRY[name]


def law_names() -> list[str]:
    """Every registered law name, in rank order."""
    return [s.name for s in sorted(_REGISTRY.values(), key=lambda s: s.rank)]


def power_value(c: dict[str, Any], x: Any) -> Any:
    """y = a·C^b."""
    return c["a"] * np.asarray(x, dtype=float) ** c["b"]
