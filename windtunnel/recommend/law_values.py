"""What the recommender reads from a law set: predictions, the allocation target, EL and the loss.

Laws (docs/DESIGN.md "Contracts", law file; Ling, "Towards Greater Leverage", arXiv 2507.17702): allocation
``m_opt`` M_opt(C) = a·C^b (else ``d_opt``: M_opt = C / D_opt(C), else ``params_opt``); ``leverage`` EL(A, G,
C); loss from ``parametric`` L(N, D) = E + A/N^α + B/D^β or ``frontier`` L(C) = E + A·C^−α, the one
``windtunnel predict`` takes (one policy for every caller: ``windtunnel.predict.choose_law``).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from windtunnel.errors import RecommendError
from windtunnel.predict import LOSS_LAWS, choose_law
from windtunnel.recommend.search import Candidate


class LawSetLike(Protocol):
    laws: dict[str, Any]

    def predict(self, name: str, x: Any) -> tuple[float, float, float]: ...


def has_law(lawset: LawSetLike, name: str) -> bool:
    return name in lawset.laws


def predict_positive(lawset: LawSetLike, name: str, x: Any) -> tuple[float, float, float]:
    """(value, lo95, hi95) of a law; RecommendError when the value is not a finite positive number."""
    with np.errstate(all="ignore"):
        value, lo, hi = (float(v) for v in lawset.predict(name, x))
    if not (math.isfinite(value) and value > 0):
        at = f"{x:.3g}" if isinstance(x, float) else str(x)
        raise RecommendError(f"law {name!r} predicts {value:.3g} at {at}: not a usable positive value")
    return value, lo, hi


def require_laws(lawset: LawSetLike, names: tuple[str, ...], why: str) -> None:
    missing = [n for n in names if not has_law(lawset, n)]
    if missing:
        have = ", ".join(sorted(lawset.laws)) or "none"
        raise RecommendError(f"the law set lacks {', '.join(missing)} ({why}); it has: {have}")


def law_name(lawset: LawSetLike, name: str, family: str) -> str:
    """``m_opt`` etc. for MoE; for a dense family the ``*_dense`` variant when the set has one."""
    if family == "dense" and has_law(lawset, f"{name}_dense"):
        return f"{name}_dense"
    return name


def size_target(
    lawset: LawSetLike, compute: float, family: str = "moe"
) -> tuple[str, float, dict[str, float]]:
    """(metric, target value, report) of the compute-optimal size at C from the allocation laws.

    m_opt: M_opt = a·C^b; else d_opt: M_opt = C / D_opt(C); else params_opt: N_opt = a·C^b.
    """
    m_law, d_law, n_law = (law_name(lawset, n, family) for n in ("m_opt", "d_opt", "params_opt"))
    report: dict[str, Any] = {}
    if has_law(lawset, d_law):
        d, d_lo, d_hi = predict_positive(lawset, d_law, compute)
        report.update(d_opt=d, d_opt_lo=d_lo, d_opt_hi=d_hi)
    if has_law(lawset, m_law):
        m, lo, hi = predict_positive(lawset, m_law, compute)
        return "m", m, {"m_opt": m, "m_opt_lo": lo, "m_opt_hi": hi, "allocation_law": m_law, **report}
    if has_law(lawset, d_law):
        m = compute / report["d_opt"]
        lo, hi = compute / report["d_opt_hi"], compute / report["d_opt_lo"]
        return "m", m, {"m_opt": m, "m_opt_lo": lo, "m_opt_hi": hi, "allocation_law": d_law, **report}
    if has_law(lawset, n_law):
        n, lo, hi = predict_positive(lawset, n_law, compute)
        return (
            "params",
            n,
            {"params_opt": n, "params_opt_lo": lo, "params_opt_hi": hi, "allocation_law": n_law},
        )
    require_laws(lawset, ("m_opt",), "a compute target needs an allocation law: m_opt, d_opt or params_opt")
    raise AssertionError("unreachable")


def compute_for_size(lawset: LawSetLike, m: float, family: str = "moe") -> float:
    """Invert the allocation law: the C whose optimal M is ``m``.

    m_opt: M = a·C^b → C = (M/a)^(1/b); d_opt: C/M = a·C^b → C = (a·M)^(1/(1−b)).
    """
    m_law, d_law = law_name(lawset, "m_opt", family), law_name(lawset, "d_opt", family)
    if has_law(lawset, m_law):
        co = lawset.laws[m_law].coefficients
        return (m / co["a"]) ** (1.0 / co["b"])
    if has_law(lawset, d_law):
        co = lawset.laws[d_law].coefficients
        return (co["a"] * m) ** (1.0 / (1.0 - co["b"]))
    raise RecommendError("a total-parameter target needs m_opt or d_opt in the law set to find its compute")


def leverage(lawset: LawSetLike, cand: Candidate, compute: float) -> tuple[float, float, float] | None:
    """EL against dense at equal loss: 1 for a dense model; None when the law set has no ``leverage`` law."""
    if cand.model.moe is None:
        return (1.0, 1.0, 1.0)
    if not has_law(lawset, "leverage"):
        return None
    with np.errstate(all="ignore"):
        value, lo, hi = lawset.predict("leverage", (cand.activation_ratio, cand.granularity, compute))
    return float(value), float(lo), float(hi)


def predicted_loss(lawset: LawSetLike, cand: Candidate, tokens: float, compute: float) -> dict[str, Any]:
    """The predicted final loss and its 95 % interval from the loss law ``windtunnel predict`` takes
    (``windtunnel.predict.choose_law``: the smaller backtest error at the top budget's best run,
    parametric when neither has a backtest): parametric L(N, D) at N = non-embedding active parameters,
    D = ``tokens``; frontier L(C) at C = ``compute``. ``loss_law_choice`` says why that law was taken."""
    if not any(has_law(lawset, n) for n in LOSS_LAWS):
        return {
            "predicted_loss": None,
            "predicted_loss_lo": None,
            "predicted_loss_hi": None,
            "loss_law": "n/a",
        }
    law, why = choose_law(lawset)
    x = (float(cand.counts.active_nonembed), float(tokens)) if law == "parametric" else float(compute)
    v, lo, hi = predict_positive(lawset, law, x)
    return {
        "predicted_loss": v,
        "predicted_loss_lo": lo,
        "predicted_loss_hi": hi,
        "loss_law": law,
        "loss_law_choice": why,
    }
