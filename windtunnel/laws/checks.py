"""Refusals of degenerate fits and the run table's duplicate run_ids (checked by ``lawset.fit_laws``).

A law is refused, with its reason, instead of being reported fitted when: the loss it is fitted to is flat
(every usable run has the same loss up to ``FLAT_REL_SPREAD``: nothing to fit), a coefficient is not finite,
or a coefficient whose sign is known (``LawSpec.signs``, e.g. an allocation exponent b > 0; 0 for a
coefficient that may sit at its bound 0, such as the frontier's floor E) has the other sign.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from windtunnel.laws.base import Law
from windtunnel.laws.registry import LawSpec

FLAT_REL_SPREAD = 1e-9


class DuplicateRunWarning(UserWarning):
    """The run table repeats a run_id; each run_id is counted once."""


def flat_loss(loss_N: np.ndarray) -> str | None:
    """The reason a loss column is flat, (max − min) ≤ FLAT_REL_SPREAD·|a middle value|; None otherwise."""
    loss_N = np.asarray(loss_N, dtype=float)
    if loss_N.size < 2:
        return None
    med = float(np.sort(loss_N)[loss_N.size // 2])  # a middle value (np.median overflows near 1e308)
    if float(loss_N.max() - loss_N.min()) <= FLAT_REL_SPREAD * abs(med):
        return f"flat loss: all {loss_N.size} usable runs have loss {med:.6g}; a constant determines no law"
    return None


def degenerate(law: Law, spec: LawSpec) -> str | None:
    """The reason a fitted law is degenerate (non-finite coefficients, a known sign violated); else None."""
    bad = [k for k, v in law.coefficients.items() if not np.isfinite(v)]
    if bad:
        return f"degenerate fit: non-finite coefficient(s) {', '.join(bad)}"
    expected = {1: "> 0", -1: "< 0", 0: ">= 0"}
    wrong = [
        f"{k} = {law.coefficients[k]:.4g} (expected {expected[sign]})"
        for k, sign in spec.signs
        if k in law.coefficients and (law.coefficients[k] * sign <= 0 if sign else law.coefficients[k] < 0)
    ]
    if wrong:
        return f"degenerate fit: wrong sign of {', '.join(wrong)}"
    return None


def mark_duplicate_runs(runs: pd.DataFrame) -> pd.Series:
    """True for every row whose non-empty run_id an earlier row already has; warns once with the count."""
    ids = runs["run_id"].astype(str)
    dup = ids.duplicated(keep="first") & (ids != "")
    if dup.any():
        examples = ", ".join(repr(r) for r in ids[dup].unique()[:3])
        warnings.warn(
            f"run table: {int(dup.sum())} rows repeat an earlier run_id (e.g. {examples}); "
            "each run_id is counted once (its first row)",
            DuplicateRunWarning,
            stacklevel=3,
        )
    return dup
