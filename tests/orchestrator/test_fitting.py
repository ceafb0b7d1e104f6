"""End-of-sweep recommendation: the sweep's own laws, completed by the published ``ling`` set."""

from __future__ import annotations

from trainer.config import RunConfig
from windtunnel.laws import fit_laws, load_laws
from windtunnel.laws.synthetic import synthetic_runs
from windtunnel.orchestrator.fitting import _recommendation


def test_quickstart_like_laws_borrow_from_ling_and_write_a_loadable_config(tmp_path):
    # a quickstart fits only lr_opt and frontier: batch_opt, m_opt and leverage must come from ling
    runs = synthetic_runs(n_runs=120, seed=3)
    fitted = fit_laws(runs, laws=["lr_opt", "frontier"], bootstrap=20, seed=0)
    assert set(fitted.laws) == {"lr_opt", "frontier"}

    merged, borrowed = fitted.with_fallback(load_laws("ling"))
    assert "batch_opt" in borrowed and "lr_opt" not in borrowed
    # the sweep's own law wins over the published one
    assert merged.laws["lr_opt"].coefficients == fitted.laws["lr_opt"].coefficients

    line = _recommendation(fitted, tmp_path)
    assert "from ling: " in line and "not possible" not in line, line
    cfg = RunConfig.from_yaml(tmp_path / "recommended.yaml")
    assert cfg.optim.lr > 0 and cfg.model.moe is not None
    assert (tmp_path / "recommended.hf_config.json").exists()
