"""Seed a real MLflow store with synthetic sweep runs shaped like windtunnel's (tests, demos, benchmarks).

The runs are written with MLflow's own client API, exactly as the orchestrator logs them: one parent run per
sweep (tag ``windtunnel.role=parent``), child runs tagged ``sweep``/``status``/``family``/``config_hash`` with
``mlflow.parentRunId``, run-table columns as params (``params, n_total, n_active, m, tokens, compute, lr,
batch_tokens``) and metrics (``loss``, ``val_loss``), and per-step ``loss``/``val_loss``/``lr`` histories.

Synthetic final losses follow the Chinchilla parametric form (Hoffmann et al. 2022, eq. 2)
``L(N, D) = E + A / N**alpha + B / D**beta`` with an lr/batch penalty quadratic in log space around
Ling's hyper-parameter laws (arXiv 2507.17702): ``lr_opt = 1.1576 C**-0.1529``, ``B_opt = 0.0694 C**0.3644``.
MoE runs get an efficiency leverage ``EL`` (effective compute = EL x compute).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from windtunnel.laws.builtin import ling_laws

# generating coefficients (Chinchilla-like; Hoffmann et al. 2022 Table A3 "approach 3" rounded)
TRUE_E, TRUE_A, TRUE_B, TRUE_ALPHA, TRUE_BETA = 1.69, 406.4, 410.7, 0.34, 0.28
LR_A, LR_B = 1.1576, -0.1529
BATCH_A, BATCH_B = 0.0694, 0.3644
MOE_LEVERAGE = 2.0


@dataclass(frozen=True)
class SeedSpec:
    experiment: str = "demo"
    sweeps: tuple[str, ...] = ("isoflop", "hparam")
    n_runs: int = 36
    n_steps: int = 20
    n_running: int = 2
    n_failed: int = 1
    seed: int = 0


def parametric_loss(n_params: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Chinchilla form L = E + A/N^alpha + B/D^beta with the generating coefficients above."""
    return TRUE_E + TRUE_A / n_params**TRUE_ALPHA + TRUE_B / tokens**TRUE_BETA


def _budgets(n: int) -> np.ndarray:
    return np.logspace(13.5, 15.5, n)


N_BUDGETS = 4


@dataclass(frozen=True)
class SyntheticRun:
    """One child run: its place in the sweep, its shape, its final loss and its state."""

    sweep: str
    family: str
    compute: float
    n_params: float
    tokens: float
    lr: float
    batch: float
    loss: float
    status: str


def _synthetic_run(spec: SeedSpec, i: int, rng: np.random.Generator) -> SyntheticRun:
    """Run ``i``: ``isoflop`` runs vary size at fixed compute (a 5-size ladder per budget, tokens/params
    2..200, Ling's lr/batch; dense, then MoE ladders); runs of other sweeps scatter lr x batch around the laws
    at 20 tokens/parameter. The loss is the parametric law (MoE at ``MOE_LEVERAGE`` x compute) plus a
    quadratic lr/batch penalty in log space and noise."""
    budgets_C = _budgets(N_BUDGETS)
    sweep = spec.sweeps[i % len(spec.sweeps)]
    k = i // len(spec.sweeps)  # index of the run within its sweep
    if sweep == "isoflop":
        budget = (k // 5) % N_BUDGETS
        family = "moe" if (k // (5 * N_BUDGETS)) % 2 else "dense"
        compute = float(budgets_C[budget]) * float(rng.uniform(0.99, 1.01))
        ratio = 10 ** (0.3 + 2.0 * (k % 5) / 4)
        lr = LR_A * compute**LR_B
        batch = BATCH_A * compute**BATCH_B
    else:
        family = "moe" if k % 3 == 2 else "dense"
        compute = float(budgets_C[k % N_BUDGETS]) * float(rng.uniform(0.99, 1.01))
        ratio = 20.0
        lr = LR_A * compute**LR_B * 2 ** float(rng.uniform(-2.5, 2.5))
        batch = BATCH_A * compute**BATCH_B * 2 ** float(rng.uniform(-2, 2))
    n_params = math.sqrt(compute / (6 * ratio))
    tokens = compute / (6 * n_params)
    eff_C = compute * (MOE_LEVERAGE if family == "moe" else 1.0)
    eff_N = math.sqrt(eff_C / (6 * ratio)) if family == "moe" else n_params
    loss = float(parametric_loss(np.array(eff_N), np.array(tokens * eff_C / compute)))
    loss += (
        0.08 * math.log(lr / (LR_A * compute**LR_B)) ** 2
        + 0.03 * math.log(batch / (BATCH_A * compute**BATCH_B)) ** 2
    )
    loss += float(rng.normal(0, 0.004))
    status = "finished"
    if i < spec.n_failed:
        status = "failed"
    elif i >= spec.n_runs - spec.n_running:
        status = "running"
    return SyntheticRun(sweep, family, compute, n_params, tokens, lr, batch, loss, status)


def _log_run(
    client, exp_id: str, parent_id: str, spec: SeedSpec, i: int, run: SyntheticRun, now_ms: int
) -> str:  # noqa: ANN001
    """Write ``run`` as the orchestrator does: tags, per-step histories, params, and the run-table row as
    ``rt.*`` metrics when it finished. Returns its run id."""
    from mlflow.entities import Metric, Param, RunTag

    created = client.create_run(
        exp_id,
        run_name=f"{run.sweep}-{i:04d}",
        start_time=now_ms + i,
        tags={
            "mlflow.parentRunId": parent_id,
            "sweep": run.sweep,
            "family": run.family,
            "status": run.status,
            "config_hash": f"{spec.seed:04x}{i:012x}",
        },
    )
    rid = created.info.run_id
    n_steps = spec.n_steps if run.status != "running" else max(2, spec.n_steps // 2)
    steps = np.arange(1, n_steps + 1)
    curve = run.loss + 3.0 / (1 + steps * 4.0 / spec.n_steps) ** 1.5
    warm = max(1, spec.n_steps // 10)
    ts = now_ms + i
    metrics = [Metric("loss", float(v), ts, int(s)) for s, v in zip(steps, curve, strict=True)]
    metrics += [Metric("lr", float(run.lr * min(1.0, s / warm)), ts, int(s)) for s in steps]
    metrics += [
        Metric("val_loss", float(v + 0.01), ts, int(s))
        for s, v in zip(steps, curve, strict=True)
        if s % 5 == 0
    ]
    # params: a few flattened RunConfig fields, as TrialLogger logs the whole config
    params = {"optim.lr": run.lr, "optim.tokens": int(run.tokens), "model.family": run.family}
    client.log_batch(
        rid,
        metrics=metrics,
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag("windtunnel.role", "trial")],
    )
    if run.status == "finished":  # the run-table row as rt.* metrics, as TrialLogger.finish logs it
        n_active = int(run.n_params)
        row = {
            "params": n_active,
            "n_total": int(run.n_params * (4 if run.family == "moe" else 1)),
            "n_active": n_active,
            "m": 6.0 * n_active,
            "tokens": int(run.tokens),
            "compute": run.compute,
            "lr": run.lr,
            "batch_tokens": int(run.batch),
            "loss": run.loss,
        }
        client.log_batch(rid, metrics=[Metric(f"rt.{k}", float(v), ts, 0) for k, v in row.items()])
        client.set_terminated(rid, "FINISHED")
    elif run.status == "failed":
        client.set_terminated(rid, "FAILED")
    return rid


def seed_store(tracking_uri: str, spec: SeedSpec = SeedSpec()) -> dict[str, object]:
    """Create ``spec.experiment`` in ``tracking_uri`` with ``spec.n_runs`` child runs spread over the sweeps
    (``_synthetic_run``). Returns ``{"experiment_id", "parent_run_ids", "run_ids", "n_finished"}``."""
    from mlflow.tracking import MlflowClient

    rng = np.random.default_rng(spec.seed)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(spec.experiment)
    parents: dict[str, str] = {}
    for sweep in spec.sweeps:
        parent = client.create_run(
            exp_id, run_name=f"sweep-{sweep}", tags={"windtunnel.role": "parent", "sweep": sweep}
        )
        parents[sweep] = parent.info.run_id
    run_ids: list[str] = []
    n_finished = 0
    now_ms = int(time.time() * 1000)
    for i in range(spec.n_runs):
        run = _synthetic_run(spec, i, rng)
        run_ids.append(_log_run(client, exp_id, parents[run.sweep], spec, i, run, now_ms))
        n_finished += run.status == "finished"
    for sweep in spec.sweeps:
        if spec.n_running == 0:
            client.set_terminated(parents[sweep], "FINISHED")
    return {
        "experiment_id": exp_id,
        "parent_run_ids": list(parents.values()),
        "run_ids": run_ids,
        "n_finished": n_finished,
    }


def write_true_laws(path: str | Path, run_ids: list[str] | None = None) -> Path:
    """Write a laws.json (docs/DESIGN.md "Law file") with the generating coefficients of the synthetic store.

    Allocation of the Chinchilla form (Hoffmann 2022, eq. 4): N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b with
    a = beta/(alpha+beta), b = alpha/(alpha+beta), G = (alpha A / (beta B))^(1/(alpha+beta)). The frontier is
    the loss along that allocation; the leverage entry is Ling's published law (docs/DESIGN.md). ci95 are +-5%
    boxes; without bootstrap samples the law engine gives these laws zero-width intervals.
    """
    a_exp = TRUE_BETA / (TRUE_ALPHA + TRUE_BETA)
    b_exp = TRUE_ALPHA / (TRUE_ALPHA + TRUE_BETA)
    g = (TRUE_ALPHA * TRUE_A / (TRUE_BETA * TRUE_B)) ** (1 / (TRUE_ALPHA + TRUE_BETA))
    ids = list(run_ids or [])
    # at the optimum both terms scale as C^-(alpha beta/(alpha+beta)): frontier = E + K C^-alpha_f
    alpha_front = TRUE_ALPHA * TRUE_BETA / (TRUE_ALPHA + TRUE_BETA)
    n_unit, d_unit = g * 6**-a_exp, 6**-b_exp / g
    k_front = TRUE_A * n_unit**-TRUE_ALPHA + TRUE_B * d_unit**-TRUE_BETA

    def law(form: str, coef: dict[str, float]) -> dict[str, object]:
        ci = {k: sorted([v * 0.95, v * 1.05]) for k, v in coef.items()}
        return {
            "form": form,
            "coefficients": coef,
            "ci95": ci,
            "n_runs": len(ids),
            "run_ids": ids,
            "backtest": {},
        }

    ling = ling_laws()["leverage"]  # the published EL law (docs/DESIGN.md "Published laws to reproduce")
    laws = {
        "parametric": law(
            "L = E + A/params^alpha + B/tokens^beta",
            {"E": TRUE_E, "A": TRUE_A, "B": TRUE_B, "alpha": TRUE_ALPHA, "beta": TRUE_BETA},
        ),
        "lr_opt": law("lr = a*C^b", {"a": LR_A, "b": LR_B}),
        "batch_opt": law("batch_tokens = a*C^b", {"a": BATCH_A, "b": BATCH_B}),
        "params_opt": law("params = a*C^b", {"a": g * 6**-a_exp, "b": a_exp}),
        "d_opt": law("tokens = a*C^b", {"a": 6**-b_exp / g, "b": b_exp}),
        "m_opt": law("m = a*C^b", {"a": 6 * g * 6**-a_exp, "b": a_exp}),
        "frontier": law("L = E + A*C^-alpha", {"E": TRUE_E, "A": k_front, "alpha": alpha_front}),
        "leverage": law(ling.form, dict(ling.coefficients)),
    }
    path = Path(path)
    path.write_text(json.dumps({"laws": laws}, indent=1))
    return path
