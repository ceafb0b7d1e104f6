"""The built-in law set ``ling``: published Ling coefficients (docs/DESIGN.md "Published laws to reproduce").

Sources: Ling "Towards Greater Leverage" (arXiv 2507.17702) — η_opt = 1.1576·C^−0.1529, B_opt =
0.0694·C^0.3644
(tokens), MoE M_opt = 0.1915·C^0.5095, D_opt = 5.2232·C^0.4905, dense M_opt = 0.0655·C^0.5422,
D_opt = 15.2582·C^0.4578, and the efficiency-leverage law (a, d, gamma, beta, A_start, A_max) =
(1.23, −7.61e-2, 1.67e-2, −1.17e-1, 1.63e-2, 5.28e16). Published numbers carry no ci95 here.
"""

from __future__ import annotations

from windtunnel.laws.base import Law

_POWER = "a * C^b"
LING_SOURCE = "Ling, Towards Greater Leverage (arXiv 2507.17702); MoE A = 7.8%, G = 2 for lr/batch"


def ling_laws() -> dict[str, Law]:
    """The ``ling`` laws, keyed by name."""

    def power(name: str, what: str, a: float, b: float) -> Law:
        return Law(
            name=name, form=f"{what} = {_POWER}", coefficients={"a": a, "b": b}, notes={"source": LING_SOURCE}
        )

    laws = [
        power("lr_opt", "lr", 1.1576, -0.1529),
        power("batch_opt", "batch_tokens", 0.0694, 0.3644),
        power("m_opt", "m (MoE, non-embedding FLOPs/token)", 0.1915, 0.5095),
        power("d_opt", "tokens (MoE)", 5.2232, 0.4905),
        power("m_opt_dense", "m (dense)", 0.0655, 0.5422),
        power("d_opt_dense", "tokens (dense)", 15.2582, 0.4578),
        Law(
            name="leverage",
            form="EL = Ahat^(a + d*log10 C + gamma*(log2 G)^2 + beta*log2 G), "
            "1/Ahat = 1/(A + (1/A_start - 1/A_max)^-1) + 1/A_max",
            coefficients={
                "a": 1.23,
                "d": -7.61e-2,
                "gamma": 1.67e-2,
                "beta": -1.17e-1,
                "A_start": 1.63e-2,
                "A_max": 5.28e16,
            },
            notes={"source": LING_SOURCE},
        ),
    ]
    return {law.name: law for law in laws}
