"""Which laws set a recommendation: the one policy behind ``windtunnel recommend``, the end-of-sweep summary
and the dashboard.

A law set (a sweep's laws.json, or the built-in ``ling`` set) rarely holds every law ``recommend`` needs: a
quickstart sweep fits ``lr_opt`` and ``frontier`` only. The policy:

1. Degenerate laws (``notes.degenerate``: a hyper-parameter law whose optima the sweep did not identify) are
   not extrapolated: they are dropped.
2. The set is extrapolated at most ``max_decades`` decades of compute beyond the largest run it was fitted on
   (``fitted_compute_max``: the ``compute_range`` note the law engine writes on every fitted law; a file
   without it is not checked, and the notes say so). The Ling
   report extrapolates its laws about 4 decades (sweeps up to ~1e20-1e21 FLOPs, Ling-1T at 6.4e24 FLOPs;
   Ling 2.0, arXiv 2510.22115, and "Towards Greater Leverage", arXiv 2507.17702); a CPU sweep lies ~10-13
   decades below that target. Beyond the limit the set's laws are refused (``refusal``: one sentence that
   names the distance and the limit) and all laws come from the published ``ling`` set.
3. The laws the set lacks are taken from ``ling`` (``borrowed``), so that a sweep's own laws win where it
   has them. The allocation laws (``ALLOCATION_LAWS``) are alternatives of one another: a set with any of
   them keeps its own allocation and borrows none (``recommend`` would otherwise prefer a published
   ``m_opt`` or ``m_opt_dense`` over the sweep's ``d_opt`` or ``m_opt``).

``decades`` = log10(C_target / C_fitted_max), where C_target is the target compute (for a total-parameter
or fixed-model target: the compute of the recommendation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from windtunnel.laws import LawSet, load_laws
from windtunnel.recommend.recommend import Recommendation, recommend
from windtunnel.recommend.targets import Constraints, Target

RECOMMEND_COMPUTE = 6.4e24  # Ling-1T's training compute: the default target of the summary and the dashboard
MAX_EXTRAPOLATION_DECADES = 5.0  # default of a sweep spec's fit.max_extrapolation_decades
FALLBACK_LAWS = "ling"
ALLOCATION_LAWS = ("m_opt", "d_opt", "params_opt", "m_opt_dense", "d_opt_dense", "params_opt_dense")
FAR_DECADES = 3.0  # within the limit but further than this: the summary says how far next to the numbers


@dataclass
class PolicyRecommendation:
    """A recommendation and where its laws came from."""

    recommendation: Recommendation
    own: list[str]  # laws of the given set that were used
    borrowed: list[str]  # laws taken from the fallback set
    degenerate: list[str]  # laws of the given set dropped as degenerate
    decades: float  # log10(target compute / largest fitted compute); NaN when the set records no range
    fitted_max_compute: float
    refusal: str = ""  # why the set's own laws were refused (too far), else ""
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, Any]:
        """The recommender's summary with the policy's notes first (what ``format_table`` prints)."""
        out = dict(self.recommendation.summary)
        out["notes"] = [*self.notes, *out.get("notes", [])]
        return out


def fitted_compute_max(lawset: LawSet) -> float:
    """The largest compute any law of ``lawset`` was fitted on (``notes.compute_range``); NaN if none says."""
    highs = [
        float(law.notes["compute_range"][1])
        for law in lawset.laws.values()
        if isinstance(law.notes.get("compute_range"), list | tuple) and len(law.notes["compute_range"]) == 2
    ]
    highs = [h for h in highs if math.isfinite(h) and h > 0]
    return max(highs) if highs else math.nan


def _subset(lawset: LawSet, names: list[str]) -> LawSet:
    return LawSet(
        laws={n: lawset.laws[n] for n in names},
        errors=dict(lawset.errors),
        excluded=dict(lawset.excluded),
        name=lawset.name,
    )


def _complete(lawset: LawSet, names: list[str], fallback: LawSet) -> tuple[LawSet, list[str]]:
    """``names`` of ``lawset`` completed by ``fallback`` (rule 3 of the module docstring)."""
    if any(n in ALLOCATION_LAWS for n in names):
        keep = [n for n in fallback.laws if n not in ALLOCATION_LAWS]
        fallback = _subset(fallback, keep)
    return _subset(lawset, names).with_fallback(fallback)


def _refusal(c_max: float, decades: float, max_decades: float) -> str:
    return (
        f"all laws from {FALLBACK_LAWS}: the sweep's largest run, C={c_max:.3g}, is {decades:.1f} decades"
        f" below the target, beyond the {max_decades:g} a recommendation may extrapolate"
    )


def _decades(target_compute: float, c_max: float) -> float:
    if math.isfinite(c_max) and c_max > 0 and target_compute > 0:
        return math.log10(target_compute / c_max)
    return math.nan


def recommend_with_policy(
    lawset: LawSet,
    target: Target,
    constraints: Constraints | None = None,
    max_decades: float = MAX_EXTRAPOLATION_DECADES,
    fitted_max_compute: float | None = None,
) -> PolicyRecommendation:
    """Recommend for ``target`` from ``lawset`` under the policy of the module docstring.

    ``fitted_max_compute`` overrides ``fitted_compute_max(lawset)``. Raises ``RecommendError`` when even the
    completed set allows no recommendation (the message says why)."""
    fallback = load_laws(FALLBACK_LAWS)
    degenerate = [n for n, law in lawset.laws.items() if law.notes.get("degenerate")]
    own = [n for n in lawset.laws if n not in degenerate]
    c_max = fitted_compute_max(lawset) if fitted_max_compute is None else float(fitted_max_compute)
    published = lawset.name == FALLBACK_LAWS  # the reference set: nothing to complete, check or refuse
    if published:
        own, degenerate, c_max = list(lawset.laws), [], math.nan
    decades = _decades(float(target.compute), c_max) if target.compute is not None else math.nan
    refused = bool(own) and decades > max_decades
    merged, borrowed = _complete(lawset, [] if refused else own, fallback)
    rec = recommend(merged, target, constraints)
    if target.compute is None and own and not refused:  # the target's compute is known only now
        decades = _decades(float(rec.summary["compute"]), c_max)
        if decades > max_decades:
            refused = True
            merged, borrowed = _complete(lawset, [], fallback)
            rec = recommend(merged, target, constraints)
    used = [] if refused else own
    notes = []
    if refused:
        notes.append(_refusal(c_max, decades, max_decades))
    elif borrowed and not published:
        why = f", degenerate here: {', '.join(degenerate)}" if degenerate else ""
        mine = ", ".join(used) or "none"
        notes.append(f"laws from the sweep: {mine}; from {FALLBACK_LAWS}: {', '.join(borrowed)}{why}")
    if used and not published and math.isnan(c_max):
        notes.append("the law file does not record the compute it was fitted on: extrapolation not checked")
    if used and decades > FAR_DECADES:
        notes.append(f"the sweep's laws are extrapolated {decades:.1f} decades beyond its largest run")
    return PolicyRecommendation(
        recommendation=rec,
        own=used,
        borrowed=borrowed,
        degenerate=degenerate,
        decades=decades,
        fitted_max_compute=c_max,
        refusal=notes[0] if refused else "",
        notes=notes,
    )
