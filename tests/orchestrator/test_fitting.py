"""End-of-sweep recommendation: the sweep's own laws, completed by the published ``ling`` set."""

from __future__ import annotations

import json
import math

import pytest

from trainer.config import RunConfig
from windtunnel.laws import fit_laws, load_laws
from windtunnel.laws.synthetic import synthetic_runs
from windtunnel.orchestrator.fitting import recommendation_line


def test_quickstart_like_laws_borrow_from_ling_and_write_a_loadable_config(tmp_path):
    # a quickstart fits only lr_opt and frontier: batch_opt, m_opt and leverage must come from ling
    runs = synthetic_runs(n_runs=120, seed=3)
    fitted = fit_laws(runs, laws=["lr_opt", "frontier"], bootstrap=20, seed=0)
    assert set(fitted.laws) == {"lr_opt", "frontier"}

    merged, borrowed = fitted.with_fallback(load_laws("ling"))
    assert "batch_opt" in borrowed and "lr_opt" not in borrowed
    # the sweep's own law wins over the published one
    assert merged.laws["lr_opt"].coefficients == fitted.laws["lr_opt"].coefficients

    line = recommendation_line(fitted, tmp_path)
    assert "from ling: " in line and "not possible" not in line, line
    cfg = RunConfig.from_yaml(tmp_path / "recommended.yaml")
    assert cfg.optim.lr > 0 and cfg.model.moe is not None
    assert (tmp_path / "recommended.hf" / "config.json").exists()


def _store_with_lr_runs(
    tmp_path, optimum_by_budget: dict[float, float], target: bool = False
) -> tuple[str, str]:
    """A real MLflow SQLite store holding a sweep's trial runs: 3 LRs per budget, the best at
    ``optimum_by_budget[C]``; loss falls with C; with ``target``, one validation target run at 1e15 FLOPs
    (study ``target``). Returns (tracking uri, parent run id)."""
    import math

    from mlflow import MlflowClient

    from windtunnel.orchestrator.tracking import TrialLogger, ensure_experiment, ensure_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, "lrsweep")
    parent = ensure_parent_run(client, exp_id, "lrsweep", {"n_trials": 12})
    m = 1.0e6
    trials = [(c, lr, "lr") for c, best in optimum_by_budget.items() for lr in (best / 2, best, best * 2)]
    for c, lr, study in trials + ([(1e15, 0.5, "target")] if target else []):
        best = optimum_by_budget.get(c, lr)
        loss = 3.0 - 0.1 * math.log10(c / 1e12) + 0.05 * math.log(lr / best) ** 2
        tags = {"sweep": "lrsweep", "config_hash": f"{c:.3g}-{lr:.3g}", "family": "dense"}
        tags.update(study=study, budget=f"{c:.6g}", run_name="r")
        params = {"optim.lr": lr, "optim.batch_size": 8, "model.seq_len": 128}
        log = TrialLogger(uri, exp_id, parent, tags, params)
        log.start()
        row = {"params": 1e5, "n_total": 2e5, "n_active": 2e5, "m": m, "tokens": c / m, "compute": c}
        log.finish("finished", {**row, "lr": lr, "batch_tokens": 1024.0, "loss": loss})
    return uri, parent


def _fit(tmp_path, optima, max_decades: float = 12.0, target: bool = False):
    from types import SimpleNamespace

    from windtunnel.orchestrator.fitting import fit_at_end

    uri, parent = _store_with_lr_runs(tmp_path, optima, target)
    spec = SimpleNamespace(
        name="lrsweep",
        min_runs_to_fit=6,
        fit=SimpleNamespace(laws=["lr_opt"], bootstrap=20, max_extrapolation_decades=max_decades),
        target=SimpleNamespace() if target else None,
    )
    outcome = SimpleNamespace(summary=[], laws_path=None)
    fit_at_end(spec, uri, parent, tmp_path, outcome)
    return outcome.summary, json.loads((tmp_path / "laws.json").read_text())["laws"]["lr_opt"]


def test_degenerate_lr_law_is_flagged_and_not_used_for_the_recommendation(tmp_path):
    summary, law = _fit(tmp_path, {1e12: 2e-3, 1e13: 2e-3, 1e14: 2e-3})
    text = "\n".join(summary)
    assert law["notes"]["degenerate"] is True
    assert "[interval not identified: degenerate fit]" in text
    assert "WARNING (degenerate fit, not used for the recommendation) lr_opt: every budget's best run" in text
    rec = next(x for x in summary if x.startswith("recommendation"))
    assert "from ling: lr_opt" in rec and "degenerate here: lr_opt" in rec


def test_identified_lr_law_is_used(tmp_path):
    summary, law = _fit(tmp_path, {1e12: 4e-3, 1e13: 2e-3, 1e14: 1e-3})
    text = "\n".join(summary)
    assert law["notes"]["degenerate"] is False and "warnings" not in law["notes"]
    assert law["coefficients"]["b"] == pytest.approx(-math.log10(2), rel=1e-3)  # halves per decade of C
    assert "WARNING" not in text and "interval not identified" not in text
    assert "per-budget optima (best finished run): C=1e+12: 0.004, C=1e+13: 0.002, C=1e+14: 0.001" in text
    rec = next(x for x in summary if x.startswith("recommendation"))
    assert "from the sweep: lr_opt" in rec
    assert "extrapolated 10.8 decades beyond its largest run" in rec  # 6.4e24 / 1e14


def test_a_validation_target_is_not_a_budget_of_the_lr_check(tmp_path):
    """The target's run (its LR from the law, at 1e15 FLOPs) is predicted, not fitted: the per-budget
    optima, the edge warnings and the degenerate check see the ladder's budgets only."""
    summary, law = _fit(tmp_path, {1e12: 4e-3, 1e13: 2e-3, 1e14: 1e-3}, target=True)
    text = "\n".join(summary)
    assert (
        "per-budget optima (best finished run): C=1e+12: 0.004, C=1e+13: 0.002, C=1e+14: 0.001\n"
        in text + "\n"
    )
    assert "1e+15" not in json.dumps(law["notes"]["optima_by_budget"]) and law["notes"]["degenerate"] is False


def test_laws_too_far_from_the_target_do_not_recommend(tmp_path):
    # the same identified law, but the spec allows 5 decades of extrapolation: ling recommends, and says why
    summary, law = _fit(tmp_path, {1e12: 4e-3, 1e13: 2e-3, 1e14: 1e-3}, max_decades=5.0)
    assert law["notes"]["degenerate"] is False  # the sweep's law is still fitted and reported
    rec = next(x for x in summary if x.startswith("recommendation"))
    assert "all laws from ling" in rec and "10.8 decades below the target, beyond the 5" in rec, rec
    assert "from the sweep" not in rec
    ling_lr = load_laws("ling").predict("lr_opt", 6.4e24)[0]
    cfg = RunConfig.from_yaml(tmp_path / "recommended.yaml")
    assert cfg.optim.lr == pytest.approx(ling_lr, rel=0.05)
