"""95 % prediction intervals: parameter bootstrap plus the residual scale.

A predicted loss has two sources of error: the law's coefficients (the spread of bootstrap refits at x,
percentiles lo_b, hi_b) and the scatter of a single run around the law, which for an extrapolation includes
the law's own misfit beyond the fit range. The second is measured, in log-loss units, as

    sigma² = sigma_res² + sigma_roll²,

sigma_res = RMS in-sample log residual of the fit, sigma_roll = RMS log error of the chosen form when it
predicted the held-out largest budgets of its own fit set (``selection.select_form``). The two are added in
quadrature on each side (a normal approximation, as in regression prediction intervals: Seber & Lee 2003,
§5.3, ŷ ± t·sqrt(s² + se(ŷ)²)):

    log hi = log v + sqrt((log hi_b − log v)² + (z·sigma)²),
    log lo = log v − sqrt((log v − log lo_b)² + (z·sigma)²),

with z = 1.96. The law entry's ``pi95`` records the method and sigma so readers can re-form the interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Z95 = 1.959964


def residual_scale(log_residuals: np.ndarray) -> float:
    """RMS of the finite log residuals (0 if none)."""
    r = np.asarray(log_residuals, dtype=float)
    r = r[np.isfinite(r)]
    return float(np.sqrt(np.mean(r * r))) if r.size else 0.0


def pi95_record(sigma_res: float, sigma_roll: float) -> dict[str, Any]:
    """The laws.json ``pi95`` entry of a loss law."""
    return {
        "method": "parameter bootstrap percentiles widened in quadrature by z*sigma in log loss, "
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
