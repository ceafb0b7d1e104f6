"""The built-in ``ling`` law set reproduces Ling's published numbers."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import flops
from windtunnel.laws import load_laws
from windtunnel.laws.leverage import leverage_value, optimal_granularity

MODELS = [  # name, C, peak lr, batch (sequences of 4096)
    ("ling-mini-2.0", 1.35e23, 3.36e-4, 4400),
    ("ling-flash-2.0", 7.13e23, 2.61e-4, 8352),
    ("ling-1t", 6.4e24, 1.86e-4, 18144),
]


@pytest.mark.parametrize(("name", "C", "lr", "batch"), MODELS)
def test_ling_lr_and_batch(name: str, C: float, lr: float, batch: int) -> None:
    ling = load_laws("ling")
    lr_hat, lo, hi = ling.predict("lr_opt", C)
    assert abs(lr_hat / lr - 1) < 0.03, (name, lr_hat)
    assert lo == hi == lr_hat  # published coefficients carry no bootstrap draws
    b_hat, _, _ = ling.predict("batch_opt", C)
    assert abs(b_hat / 4096 / batch - 1) < 0.10, (name, b_hat / 4096)


def test_ling_leverage_optimal_granularity_and_el() -> None:
    ling = load_laws("ling")
    coef = ling.laws["leverage"].coefficients
    assert 10 <= optimal_granularity(coef) <= 13
    G = np.arange(2, 65)
    el_G = leverage_value(coef, 0.031, G, 1e22)
    assert 10 <= G[np.argmax(el_G)] <= 13
    el, _, _ = ling.predict("leverage", (0.031, 12, 1e22))
    assert el > 7
    # lower activation ratio gives more leverage
    assert leverage_value(coef, 0.01, 12, 1e22) > el


def test_ling_allocation_laws_present() -> None:
    ling = load_laws("ling")
    for name in ("m_opt", "d_opt", "m_opt_dense", "d_opt_dense"):
        assert set(ling.laws[name].coefficients) == {"a", "b"}
    # C = M·D: MoE M_opt·D_opt ≈ C (0.1915·5.2232 ≈ 1.0, exponents sum to 1)
    C = 1e22
    m, _, _ = ling.predict("m_opt", C)
    d, _, _ = ling.predict("d_opt", C)
    assert abs(m * d / C - 1) < 0.01


def test_ling_with_trainer_flops() -> None:
    from pathlib import Path

    from trainer.config import RunConfig

    root = Path(__file__).resolve().parents[2] / "experiments" / "models"
    ling = load_laws("ling")
    for name, C_ref, lr, _ in MODELS:
        path = root / f"{name}.yaml"
        if not path.exists():
            pytest.skip(f"{path} not written yet")
        cfg = RunConfig.from_yaml(path)
        C = flops.flops_per_token(cfg.model) * 20e12
        assert abs(C / C_ref - 1) < 0.05, (name, C)
        assert abs(ling.predict("lr_opt", C)[0] / lr - 1) < 0.03
