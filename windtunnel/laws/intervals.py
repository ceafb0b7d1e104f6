"""95 % prediction intervals: parameter bootstrap plus the residual scale.

A predicted loss has two sources of error: the law's coefficients (the spread of bootstrap refits at x,
percentiles lo_b, hi_b) and the scatter of a single run around the law, which for an extrapolation includes
the law's own misfit beyond the fit range. The second is measured, in log-loss units, as

    sigma² = sigma_res² + sigma_roll²,

sigma_res = RMS in-sample log residual of the fit, sigma_roll = RMS log error of the chosen form when it
predicted the held-out largest models of its own fit set (``selection.select_form``). The two are added in
quadrature on each side (a normal approximation, as in regression prediction intervals: Seber & Lee 2003,
§5.3, ŷ ± t·sqrt(s² + se(ŷ)²)):

    log hi = log v + sqrt((log hi_b − log v)² + (z·sigma)²),
    log lo = log v − sqrt((log v − log lo_b)² + (z·sigma)²),

with z = 1.96. The law entry's ``pi95`` records the method and sigma so readers can re-form the interval.

Optimum laws (IsoFLOP ``params_opt``/``m_opt``/``d_opt``, ``lr_opt``/``batch_opt``, ``steplaw_*``) use
the same interval in log X* units (``optimum_pi95``). There sigma_res is the scatter of the per-budget (or
per-cell) observed optima around the law with the fit's degrees of freedom taken out,
sigma_res² = Σ r² / (K − p) (the unbiased residual variance of least squares, Seber & Lee 2003, §3.3), and
sigma_roll is the RMS log error of the law's own backtest (fitted without the top budget, predicting it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Z95 = 1.959964


def residual_scale(log_residuals: np.ndarray, n_params: int = 0) -> float:
    """sqrt(Σ r² / (n − n_params)) over the finite log residuals (0 if n ≤ n_params)."""
    r = np.asarray(log_residuals, dtype=float)
    r = r[np.isfinite(r)]
    dof = r.size - n_params
    return float(np.sqrt(np.sum(r * r) / dof)) if dof > 0 else 0.0


def log_errors(pred: np.ndarray, obs: np.ndarray) -> list[float]:
    """log(pred / obs) per finite pair: the rollout residuals a backtest reports for its ``pi95``."""
    with np.errstate(all="ignore"):
        r = np.log(np.asarray(pred, dtype=float) / np.asarray(obs, dtype=float))
    return [float(v) for v in np.atleast_1d(r) if np.isfinite(v)]


def optimum_pi95(fit_log_residuals: np.ndarray, n_params: int, backtest: dict[str, Any]) -> dict[str, Any]:
    """``pi95`` of an optimum law: sigma_res from the fitted optima's log residuals (dof-corrected),
    sigma_roll from the backtest's ``log_errors`` (0 when the backtest was skipped)."""
    sigma_res = residual_scale(fit_log_residuals, n_params)
    sigma_roll = residual_scale(np.asarray(backtest.get("log_errors", []), dtype=float))
    return pi95_record(sigma_res, sigma_roll, quantity="optimum")


def pi95_record(sigma_res: float, sigma_roll: float, quantity: str = "loss") -> dict[str, Any]:
    """The laws.json ``pi95`` entry of a law predicting ``quantity`` (sigmas in log ``quantity``)."""
    return {
        "method": f"parameter bootstrap percentiles widened in quadrature by z*sigma in log {quantity}, "
        "sigma^2 = sigma_res^2 + sigma_roll^2",
        "z": Z95,
        "sigma_res": float(sigma_res),
        "sigma_roll": float(sigma_roll),
        "sigma_log": float(np.hypot(sigma_res, sigma_roll)),
    }


def widen(value: Any, lo: Any, hi: Any, pi95: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the 95 % prediction interval from the bootstrap interval (lo, hi) of a positive value."""
    s = float(pi95.get("z", Z95)) * float(pi95.get("sigma_log", 0.0))
    with np.errstate(all="ignore"):
        lv = np.log(np.asarray(value, dtype=float))
        dlo = np.nan_to_num(lv - np.log(np.asarray(lo, dtype=float)), nan=0.0).clip(min=0.0)
        dhi = np.nan_to_num(np.log(np.asarray(hi, dtype=float)) - lv, nan=0.0).clip(min=0.0)
        return np.exp(lv - np.hypot(dlo, s)), np.exp(lv + np.hypot(dhi, s))
