"""The recommendation policy (``windtunnel.recommend.policy``): which laws set a recommendation."""

from __future__ import annotations

import math

import pytest

from windtunnel.laws import Law, LawSet, load_laws
from windtunnel.recommend import Target
from windtunnel.recommend.policy import fitted_compute_max, recommend_with_policy


def _law(name: str, a: float, b: float, c_range: tuple[float, float], **notes) -> Law:
    return Law(
        name=name,
        form="a*C^b",
        coefficients={"a": a, "b": b},
        notes={"compute_range": list(c_range), **notes},
    )


def test_a_sweeps_allocation_law_is_not_replaced_by_a_published_one():
    # the sweep fitted d_opt only: ling's m_opt (which recommend prefers) must not be borrowed
    sweep = LawSet(laws={"d_opt": _law("d_opt", 4.0, 0.4905, (1e19, 1e21))}, name="sweep")
    result = recommend_with_policy(sweep, Target(compute=1e23))
    assert result.own == ["d_opt"] and not set(result.borrowed) & {"m_opt", "m_opt_dense", "params_opt"}
    s = result.recommendation.summary
    assert s["allocation_law"] == "d_opt" and s["d_opt"] == pytest.approx(4.0 * 1e23**0.4905)
    assert {"lr_opt", "batch_opt", "leverage"} <= set(result.borrowed)
    assert result.decades == pytest.approx(2.0) and result.refusal == ""


def test_a_total_params_target_is_refused_when_its_compute_is_too_far():
    sweep = LawSet(laws={"lr_opt": _law("lr_opt", 1.0, -0.15, (1e13, 1e15))}, name="sweep")
    result = recommend_with_policy(sweep, Target(total_params=1e12))
    assert result.own == [] and result.refusal.startswith(
        "all laws from ling: the sweep's largest run, C=1e+15"
    )
    ling = load_laws("ling").predict("lr_opt", result.recommendation.summary["compute"])[0]
    assert result.recommendation.summary["peak_lr"] == pytest.approx(ling)


def test_degenerate_laws_are_dropped_and_named():
    lr = _law("lr_opt", 1.0, -0.15, (1e19, 1e21), degenerate=True)
    batch = _law("batch_opt", 0.07, 0.36, (1e19, 1e21))
    result = recommend_with_policy(
        LawSet(laws={"lr_opt": lr, "batch_opt": batch}, name="s"), Target(compute=1e22)
    )
    assert result.degenerate == ["lr_opt"] and "lr_opt" in result.borrowed and result.own == ["batch_opt"]
    assert "degenerate here: lr_opt" in result.notes[0]
    assert result.recommendation.summary["batch_tokens_law"] == pytest.approx(0.07 * 1e22**0.36)


def test_the_published_set_is_used_as_it_is():
    ling = load_laws("ling")
    result = recommend_with_policy(ling, Target(compute=6.4e24))
    assert result.borrowed == [] and result.notes == [] and math.isnan(result.decades)
    assert math.isnan(fitted_compute_max(ling))
