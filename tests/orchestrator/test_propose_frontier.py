"""The frontier-law design (``propose_frontier``): its Jacobian against finite differences, the budget it
picks at equal cost (the one nearest the target; a random proposer fails), and on a run table of real
trainer shapes whose losses follow a known law, blocks the trainer accepts at the budgets they claim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from micro_spec import MICRO_DATA, law_runs, micro_base

from trainer.config import RunConfig
from trainer.flops import flops_per_token
from windtunnel.laws.design import frontier_log_jacobian
from windtunnel.laws.powerlaw import frontier_value_log
from windtunnel.orchestrator.propose import shape_of, shape_of_runs, sweep_fragment
from windtunnel.orchestrator.propose_frontier import FrontierState, choose_blocks, propose_budgets
from windtunnel.orchestrator.spec import expand, parse_spec


def test_frontier_jacobian_matches_finite_differences():
    x = np.array([np.log(30.0), np.log(1.8), 0.12])
    C = np.array([1e10, 1e13, 1e16])
    J = frontier_log_jacobian(x, C)
    for p in range(3):
        h = np.zeros(3)
        h[p] = 1e-6
        fd = (np.log(frontier_value_log(x + h, C)) - np.log(frontier_value_log(x - h, C))) / 2e-6
        assert J[:, p] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_at_equal_cost_the_design_takes_the_budget_nearest_the_target():
    """Five candidate budgets between the ladder and the target at one cost each: extrapolating from the
    nearest one leaves the least variance at the target, so the design takes it (a random proposer: 1 in
    5)."""
    x = np.array([np.log(30.0), np.log(1.8), 0.12])
    rng = np.random.default_rng(0)
    L = rng.standard_normal((3, 3))
    state = FrontierState(x, 1e-3 * (L @ L.T + np.eye(3)), 0.005, 0.005, 1e15, 2.1, 2.0, 2.2)
    budgets = np.geomspace(1e11, 1e14, 5)
    choice = choose_blocks(state, budgets, np.ones(5), k=2)
    assert choice.chosen[0] == 4
    assert choice.width_after[0] < choice.width_before and choice.width_after[1] <= choice.width_after[0]


def test_propose_budgets_gives_blocks_at_their_budgets_around_m_opt():
    from windtunnel.orchestrator.expand import trial_flops

    base = RunConfig.from_dict({**micro_base(40_000), "data": MICRO_DATA})
    runs = law_runs(base, (2e3, 2e5), (2e10, 6e10, 2e11, 6e11))  # 5 sizes bracket every optimum
    ps = propose_budgets(runs, base, target_compute=2e13, k=2, bootstrap=20, n_sizes=3, lr_factors=(0.5, 1.0))
    assert len(ps.proposals) == 2 * 3 * 2  # 2 blocks x 3 sizes x 2 LRs
    assert ps.width_after <= ps.width_before
    budgets = sorted({round(math.log10(p.tokens * flops_per_token(p.cfg.model)), 1) for p in ps.proposals})
    assert len(budgets) == 2 and all(
        math.log10(1.2e12) - 0.05 <= b <= math.log10(2e13 / 3) + 0.05 for b in budgets
    )
    for p in ps.proposals:
        c = p.tokens * float(flops_per_token(p.cfg.model))
        assert p.tokens % base.batch_tokens == 0 and p.flops == trial_flops(p.cfg)
        assert p.cfg.optim.lr in (pytest.approx(1.5e-3), pytest.approx(3e-3))  # base lr x factors
        assert any(abs(math.log(c / 10**b)) < 0.25 for b in budgets)
    assert any("residual and backtest scale" in n for n in ps.notes)
    frag = yaml.safe_load(yaml.safe_dump(sweep_fragment(ps)))
    spec = parse_spec({"name": "next", "data": dict(MICRO_DATA), "base": micro_base(40_000), **frag})
    assert {t.run_cfg.config_hash() for t in expand(spec).trials} == {
        p.cfg.config_hash() for p in ps.proposals
    }


def test_shape_of_runs_reads_a_one_layer_ladder():
    """A one-layer ladder's d32 model alone reads as aspect ratio 32 (a d64 model would get 2 layers); the
    runs together say every width has one layer."""
    base = RunConfig.from_dict({**micro_base(40_000), "data": MICRO_DATA})
    wide = base.with_overrides({"model.d_model": 64, "model.n_heads": 8, "model.d_ffn": 176})
    assert base.model.n_layers == 1 and shape_of(base).aspect_ratio == base.model.d_model
    assert shape_of_runs([base, wide]).aspect_ratio == 1e5
    deep = wide.with_overrides({"model.n_layers": 2})
    assert shape_of_runs([base, deep]).aspect_ratio == 32.0
