"""Law evaluation and per-budget aggregation for the dashboard (reads laws.json; never fits the laws).

Formulas (DESIGN.md, "Law file" and "Published laws"):

- power laws ``lr_opt``, ``batch_opt``, ``m_opt``, ``params_opt``, ``d_opt``: y = a·C^b
- ``frontier``: L(C) = E + A·C^(−alpha)
- ``parametric`` (Hoffmann et al. 2022, eq. 2): L(N, D) = E + A/N^alpha + B/D^beta
- ``leverage`` (Ling, arXiv 2507.17702): EL(A, G, C) = Â^(alpha_C + gamma·(log2 G)² + beta·log2 G),
  alpha_C = a + d·log10 C, 1/Â = 1/(A + (1/A_start − 1/A_max)^−1) + 1/A_max
- IsoFLOP profile at one budget (Hoffmann et al. 2022, approach 2): L = c0 + c1·x + c2·x², x = ln N,
  optimum N* = exp(−c1 / (2·c2)) when c2 > 0.

Interval bands: ``LawSet.predict`` of ``windtunnel.laws`` when that package is installed; otherwise the
envelope of the law over the corners of its ``ci95`` box (conservative: it ignores coefficient correlation).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dashboards.data import NEAR_OPTIMAL_TOL

POWER_LAWS = ("lr_opt", "batch_opt", "m_opt", "params_opt", "d_opt")


@dataclass
class Laws:
    """The ``laws`` mapping of a laws.json (name -> entry with form, coefficients, ci95, n_runs, run_ids,
    backtest), plus the ``windtunnel.laws.LawSet`` it came from when that package could read it."""

    entries: dict[str, dict[str, Any]]
    source: str
    lawset: Any = None

    def has(self, name: str) -> bool:
        return name in self.entries and bool(self.entries[name].get("coefficients"))

    def coef(self, name: str) -> dict[str, float]:
        return {k: float(v) for k, v in self.entries[name]["coefficients"].items()}


def load_laws(path: str | Path | None) -> Laws:
    """Read a laws.json (DESIGN.md format), or the built-in ``ling`` set via ``windtunnel.laws.load_laws``."""
    if path is None:
        return Laws({}, "none")
    lawset = None
    try:
        from windtunnel.laws import load_laws as wt_load_laws  # the law engine's reader, when present
    except ImportError:
        wt_load_laws = None
    if wt_load_laws is not None:
        try:
            lawset = wt_load_laws(str(path))
        except Exception:  # noqa: BLE001 - fall back to reading the documented JSON format ourselves
            lawset = None
    if lawset is not None and hasattr(lawset, "laws"):
        entries = {}
        for name, law in lawset.laws.items():
            entries[name] = {
                "form": getattr(law, "form", ""),
                "coefficients": dict(getattr(law, "coefficients", {})),
                "ci95": {k: list(v) for k, v in dict(getattr(law, "ci95", {}) or {}).items()},
                "n_runs": getattr(law, "n_runs", 0),
                "run_ids": list(getattr(law, "run_ids", []) or []),
                "backtest": dict(getattr(law, "backtest", {}) or {}),
            }
        return Laws(entries, str(path), lawset)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"laws file not found: {p}")
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("laws"), dict):
        raise ValueError(f"{p}: expected {{'laws': {{NAME: ...}}}}")
    return Laws(data["laws"], str(p))


# ---- law forms ---------------------------------------------------------------------------------------------
def power_law(c: dict[str, float], C: np.ndarray) -> np.ndarray:
    """y = a·C^b."""
    return c["a"] * np.asarray(C, dtype=float) ** c["b"]


def frontier_law(c: dict[str, float], C: np.ndarray) -> np.ndarray:
    """L(C) = E + A·C^(−alpha)."""
    return c["E"] + c["A"] * np.asarray(C, dtype=float) ** (-c["alpha"])


def parametric_law(c: dict[str, float], N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, eq. 2)."""
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    return c["E"] + c["A"] / N ** c["alpha"] + c["B"] / D ** c["beta"]


def leverage_law(c: dict[str, float], A: np.ndarray, G: np.ndarray, C: np.ndarray) -> np.ndarray:
    """EL(A, G, C) = Â^(alpha_C + gamma (log2 G)² + beta log2 G), Ling (arXiv 2507.17702)."""
    A, G, C = (np.asarray(v, dtype=float) for v in (A, G, C))
    inv_A_hat = 1.0 / (A + 1.0 / (1.0 / c["A_start"] - 1.0 / c["A_max"])) + 1.0 / c["A_max"]
    A_hat = 1.0 / inv_A_hat
    alpha_C = c["a"] + c["d"] * np.log10(C)
    log2G = np.log2(G)
    return A_hat ** (alpha_C + c["gamma"] * log2G**2 + c["beta"] * log2G)


def base_name(name: str) -> str:
    """``params_opt_dense`` -> ``params_opt``: the law engine may fit allocation laws per family."""
    for base in POWER_LAWS:
        if name == base or name.startswith(base + "_"):
            return base
    return name


def _form(name: str) -> Callable[..., np.ndarray]:
    if base_name(name) in POWER_LAWS:
        return power_law
    return {"frontier": frontier_law, "parametric": parametric_law, "leverage": leverage_law}[name]


def predict(laws: Laws, name: str, *x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, lo95, hi95) of law ``name`` at ``x`` (C for power laws and frontier; N, D; A, G, C)."""
    if laws.lawset is not None and hasattr(laws.lawset, "predict"):
        try:
            arg = x[0] if len(x) == 1 else tuple(x)
            v, lo, hi = (np.asarray(a, dtype=float) for a in laws.lawset.predict(name, arg))
            if not np.allclose(lo, hi, rtol=1e-12, equal_nan=True):  # no bootstrap draws: lo == hi
                return v, lo, hi
        except Exception:  # noqa: BLE001 - a law the engine cannot predict here: use the ci95 corners
            pass
    fn = _form(name)
    coef = laws.coef(name)
    value = fn(coef, *x)
    ci = laws.entries[name].get("ci95") or {}
    keys = [k for k in coef if k in ci and len(ci[k]) == 2]
    if not keys:
        return value, value.copy(), value.copy()
    corners = []
    for combo in itertools.product(*[(float(ci[k][0]), float(ci[k][1])) for k in keys]):
        corners.append(fn({**coef, **dict(zip(keys, combo, strict=True))}, *x))
    stack = np.stack(corners)
    with np.errstate(invalid="ignore"):
        return value, np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)


# ---- run aggregation ---------------------------------------------------------------------------------------
def budget_groups(runs: pd.DataFrame, tol_dex: float = 0.05) -> pd.Series:
    """Label each run with its compute budget: runs whose log10 C lie within ``tol_dex`` of the previous
    (sorted) run share a budget; the label is the group's geometric-mean compute."""
    c = runs["compute"].to_numpy(dtype=float)
    ok = np.isfinite(c) & (c > 0)
    labels = pd.Series(np.nan, index=runs.index)
    if not ok.any():
        return labels
    logc = np.log10(c[ok])
    order = np.argsort(logc)
    group = np.zeros(len(logc), dtype=int)
    group[order] = np.concatenate([[0], np.cumsum(np.diff(logc[order]) > tol_dex)])
    centres = pd.Series(logc).groupby(group).transform("mean").to_numpy()
    labels[ok] = 10**centres
    return labels


def near_optimal(runs: pd.DataFrame, tol: float = NEAR_OPTIMAL_TOL) -> pd.Series:
    """True where a finished run's loss is within ``tol`` (relative) of the best loss at its budget."""
    df = runs.assign(budget=budget_groups(runs))
    finished = (df["state"] == "finished") & np.isfinite(df["loss"])
    best = df[finished].groupby("budget")["loss"].transform("min")
    out = pd.Series(False, index=runs.index)
    out[best.index] = df.loc[best.index, "loss"] <= best * (1 + tol)
    return out


@dataclass
class IsoFlopProfile:
    budget: float
    runs: pd.DataFrame
    coeffs: tuple[float, float, float] | None  # (c0, c1, c2) of L = c0 + c1 x + c2 x², x = ln N
    n_opt: float | None
    loss_opt: float | None


def isoflop_profiles(runs: pd.DataFrame, min_points: int = 3) -> list[IsoFlopProfile]:
    """Per compute budget, fit L = c0 + c1·ln N + c2·(ln N)² to finished runs (Hoffmann et al. approach 2)."""
    df = runs[(runs["state"] == "finished") & np.isfinite(runs["loss"]) & (runs["params"] > 0)]
    df = df.assign(budget=budget_groups(df))
    out = []
    for budget, grp in df.groupby("budget"):
        coeffs = n_opt = loss_opt = None
        x = np.log(grp["params"].to_numpy(dtype=float))
        if len(grp) >= min_points and np.ptp(x) > 0:
            c2, c1, c0 = np.polyfit(x, grp["loss"].to_numpy(dtype=float), 2)
            coeffs = (float(c0), float(c1), float(c2))
            if c2 > 0:
                x_opt = -c1 / (2 * c2)
                n_opt = float(np.exp(x_opt))
                loss_opt = float(c0 + c1 * x_opt + c2 * x_opt**2)
        out.append(IsoFlopProfile(float(budget), grp, coeffs, n_opt, loss_opt))
    return out


def residuals(runs: pd.DataFrame, laws: Laws) -> pd.DataFrame:
    """Backtest residuals of the parametric law: observed − predicted loss for finished runs, with
    ``in_fit`` (run was used to fit the law) so held-out runs can be told apart."""
    cols = ["run_id", "sweep", "family", "compute", "loss", "predicted", "residual", "in_fit"]
    if not laws.has("parametric"):
        return pd.DataFrame(columns=cols)
    df = runs[
        (runs["state"] == "finished")
        & np.isfinite(runs["loss"])
        & (runs["params"] > 0)
        & (runs["tokens"] > 0)
    ]
    pred = parametric_law(laws.coef("parametric"), df["params"], df["tokens"])
    fit_ids = set(laws.entries["parametric"].get("run_ids") or [])
    out = df.assign(predicted=pred, residual=df["loss"] - pred, in_fit=df["run_id"].isin(fit_ids))
    return out[cols]


def leverage_grid(laws: Laws, compute: float) -> dict[str, Any]:
    """EL over activation ratio A (log grid 1%..100%) for G in {1, 2, 4, 8, 12, 16}, and over G for
    A in {1.6%, 3.1%, 7.8%, 25%}, both at ``compute``."""
    A_grid = np.logspace(-2, 0, 60)
    G_grid = np.logspace(0, np.log2(64), 60, base=2)
    by_A = {
        g: predict(laws, "leverage", A_grid, np.full_like(A_grid, g), np.full_like(A_grid, compute))
        for g in (1, 2, 4, 8, 12, 16)
    }
    by_G = {
        a: predict(laws, "leverage", np.full_like(G_grid, a), G_grid, np.full_like(G_grid, compute))
        for a in (0.016, 0.031, 0.078, 0.25)
    }
    return {"A": A_grid, "G": G_grid, "by_A": by_A, "by_G": by_G}


def law_predictions(laws: Laws, compute: float) -> pd.DataFrame:
    """Each available law's value and 95% interval at the target compute (columns law, value, lo95, hi95)."""
    rows = []
    names = ["frontier"] + [n for base in POWER_LAWS for n in sorted(laws.entries) if base_name(n) == base]
    for name in names:
        if laws.has(name):
            v, lo, hi = predict(laws, name, np.array([compute]))
            rows.append({"law": name, "value": float(v[0]), "lo95": float(lo[0]), "hi95": float(hi[0])})
    return pd.DataFrame(rows, columns=["law", "value", "lo95", "hi95"])


@dataclass
class RecommendationView:
    """What the dashboard shows for the target budget: a summary table and a YAML document to download."""

    summary: pd.DataFrame  # columns item, value
    yaml_text: str
    filename: str
    source: str  # "windtunnel.recommend" or "laws.json predictions"
    note: str = ""


def recommendation(laws: Laws, compute: float) -> RecommendationView:
    """The recommender's config for ``compute`` (``windtunnel.recommend.recommend``) when it is installed and
    the laws allow it; otherwise the law predictions at ``compute`` as YAML (not a trainer config)."""
    import yaml

    note = ""
    if laws.lawset is not None:
        try:
            from windtunnel.recommend import Target, recommend

            rec = recommend(laws.lawset, Target(compute=float(compute)))
            rows = [{"item": k, "value": _fmt(v)} for k, v in _flat(dict(rec.summary)).items()]
            return RecommendationView(
                pd.DataFrame(rows, columns=["item", "value"]),
                rec.run_config.to_yaml(),
                f"recommended-{compute:.0e}.yaml",
                "windtunnel.recommend",
                " ".join(str(n) for n in rec.notes),
            )
        except Exception as err:  # noqa: BLE001 - show law predictions and say why
            note = f"windtunnel.recommend unavailable ({type(err).__name__}: {err}); showing law predictions."
    else:
        note = "no LawSet object (windtunnel.laws not importable); showing law predictions from laws.json."
    preds = law_predictions(laws, compute)
    doc = {
        "target_compute": float(compute),
        "source": laws.source,
        "predictions": {r.law: {"value": r.value, "ci95": [r.lo95, r.hi95]} for r in preds.itertuples()},
    }
    rows = [{"item": "target compute (FLOPs)", "value": f"{compute:.3g}"}]
    rows += [
        {"item": r.law, "value": f"{r.value:.4g}  [{r.lo95:.4g}, {r.hi95:.4g}]"} for r in preds.itertuples()
    ]
    return RecommendationView(
        pd.DataFrame(rows, columns=["item", "value"]),
        yaml.safe_dump(doc, sort_keys=False),
        f"law-predictions-{compute:.0e}.yaml",
        "laws.json predictions",
        note,
    )


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
