"""The adaptive phase of a sweep with an ``adaptive:`` block: propose -> run -> fit, round by round.

Round r (1..rounds), after the sweep's studies have run and their laws are fitted:
1. fit the sweep's runs (its studies' and earlier rounds'; never the validation target's) and take the 95 %
   interval of the predicted loss at the target (``propose.fit_target``); stop when it is at most
   ``stop_at_pi_width`` wide, or when no proposed run fits in what is left of ``budget``;
2. propose k runs (``propose.propose``) within the round's budget (what is left of ``budget`` spread evenly
   over the rounds left) and record the proposal in MLflow before any of them starts: a
   round run (tags ``windtunnel.role=adaptive_round``, ``adaptive_round=r``; params: each proposal's
   overrides of the sweep's base as JSON, the target, the expected width after);
3. train the proposals through the sweep's Ray Tune path (``launch``), study ``adaptive_r{r}``, each
   trial tagged ``adaptive_round=r``;
4. refit and log the round's ``pi95_width_at_target`` (on the round run, and on the parent run at step r);
   ``finish_round``.

When the loop ends, why it ended (the interval narrow enough, the budget spent, or all rounds run) is the tag
``adaptive_stop_reason`` on the last round run and on the sweep's parent run. With ``adaptive.points`` the
proposals may be runs with several points (``propose``), whose point rows join the fit like any others.

Resume: a round already recorded is not proposed again (its recorded runs stand); its runs are identified
by ``trial_key`` like every trial, so finished ones are not re-run; a round whose width is logged is done.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from trainer.config import RunConfig
from windtunnel.orchestrator.spec import SweepSpec
from windtunnel.orchestrator.spec_adaptive import ADAPTIVE_PREFIX

ROUND_ROLE = "adaptive_round"
WIDTH_METRIC = "pi95_width_at_target"
STOP_TAG = "adaptive_stop_reason"


def design_base(spec: SweepSpec) -> tuple[RunConfig, Any]:
    """The base the proposals override and their width/depth rule: the first ladder study's base and rule
    when the sweep has one, else the sweep's base and the rule its own model follows."""
    from windtunnel.orchestrator.propose import shape_of
    from windtunnel.orchestrator.spec_target import TargetShape

    base = spec.base_config()
    for study in spec.studies:
        if study.ladder is not None:
            base = base.with_overrides(study.overrides) if study.overrides else base
            rule = study.ladder.rule
            if rule is not None:
                keep = ("head_dim", "aspect_ratio", "ffn_mult", "kv_ratio", "granularity")
                return base, TargetShape(**{k: getattr(rule, k) for k in keep})
            break
    return base, shape_of(base)


def sweep_runs(uri: str, spec: SweepSpec, run_ids: set[str]) -> Any:
    """The run table of this sweep's studies (``run_ids``) and adaptive rounds."""
    from windtunnel.orchestrator.tracking import runs_from_mlflow

    df = runs_from_mlflow(uri, spec.name)
    if len(df) == 0:
        return df
    keep = df["run_id"].isin(run_ids) | df["study"].str.startswith(ADAPTIVE_PREFIX)
    if "parent_run_id" in df:
        keep |= df["parent_run_id"].isin(run_ids)  # the point rows of the studies' runs
    return df[keep].reset_index(drop=True)


def find_round(client: Any, exp_id: str, r: int) -> Any | None:
    from windtunnel.orchestrator.tracking import ROLE, search_all

    found = search_all(client, exp_id, f"tags.`{ROLE}` = '{ROUND_ROLE}' and tags.adaptive_round = '{r}'")
    return found[0] if found else None


def record_round(client: Any, exp_id: str, parent_id: str, r: int, ps: Any) -> Any:
    """The round run holding the proposal (params are write-once: the proposal cannot change later)."""
    from mlflow.entities import Param

    from windtunnel.orchestrator.propose import proposal_overrides
    from windtunnel.orchestrator.tracking import ROLE, with_retry

    tags = {ROLE: ROUND_ROLE, "adaptive_round": str(r), "mlflow.parentRunId": parent_id, "status": "running"}
    run = with_retry(client.create_run, exp_id, run_name=f"adaptive-round-{r}", tags=tags)
    params = {
        "target_compute": repr(ps.target_compute),
        "width_before": repr(ps.width_before),
        "expected_width_after": repr(ps.width_after),
        "proposed_flops": repr(ps.flops),
        "n_proposals": str(len(ps.proposals)),
    }
    params.update({f"proposal.{j}": json.dumps(proposal_overrides(p)) for j, p in enumerate(ps.proposals)})
    with_retry(client.log_batch, run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return with_retry(client.get_run, run.info.run_id)


def recorded_configs(run: Any, base: RunConfig) -> list[RunConfig]:
    p = run.data.params
    n = int(p.get("n_proposals", "0"))
    return [base.with_overrides(json.loads(p[f"proposal.{j}"])) for j in range(n)]


def round_items(cfgs: list[RunConfig], r: int, spec: SweepSpec) -> tuple[list[dict], list[str]]:
    """Trial items of round r (study ``adaptive_r{r}``, tag ``adaptive_round``) and their trial keys."""
    from windtunnel.orchestrator.identity import data_key, trial_key
    from windtunnel.orchestrator.preflight import prepare_manifests
    from windtunnel.orchestrator.resume import trial_item

    study = f"{ADAPTIVE_PREFIX}{r}"
    named = [c.model_copy(update={"name": f"{spec.name}-{study}-{c.config_hash()[:8]}"}) for c in cfgs]
    manifests = prepare_manifests(named)
    items, keys = [], []
    for c in named:
        m = manifests[data_key(c)]
        items.append({**trial_item(c, study, "adaptive", None, m), "adaptive_round": r})
        keys.append(trial_key(c, m))
    return items, keys


def run_adaptive(
    spec: SweepSpec, uri: str, parent_id: str, outcome: Any, launch: Callable[[list[dict], int], None]
) -> bool:
    """Rounds of the module docstring; lines go to ``outcome.summary``; returns whether any round ran
    (so the caller refits the sweep's laws with the rounds' runs). Adds the rounds' runs to
    ``outcome.run_ids``."""
    from windtunnel.orchestrator.expand import trial_flops
    from windtunnel.orchestrator.tracking import ensure_experiment, open_client

    a = spec.adaptive
    assert a is not None
    client = open_client(uri)
    exp_id = ensure_experiment(client, spec.name)
    base, shape = design_base(spec)
    left = a.budget if a.budget is not None else math.inf
    ran, last = False, 0
    stop = f"rounds: all {a.rounds} rounds ran"
    for r in range(1, a.rounds + 1):
        cfgs, why = _round_configs(spec, uri, client, exp_id, parent_id, outcome, r, base, shape, left)
        if cfgs is None:
            outcome.summary.append(f"adaptive: stopped before round {r}: {why}")
            stop = why
            break
        left -= sum(trial_flops(c) for c in cfgs)
        items, keys = round_items(cfgs, r, spec)
        done = _done_keys(client, exp_id)
        todo = [it for it, k in zip(items, keys, strict=True) if k not in done]
        if todo:
            launch(todo, r)
        ran, last = True, r
        width = finish_round(spec, uri, client, exp_id, parent_id, outcome, r)
        outcome.summary.append(
            f"adaptive round {r}: {len(cfgs)} runs ({why}); pi95 width at target {width:.4f}"
        )
    record_stop(client, exp_id, parent_id, last, stop)
    return ran


def record_stop(client: Any, exp_id: str, parent_id: str, last_round: int, reason: str) -> None:
    """Tag ``adaptive_stop_reason`` on the last round run (if a round ran) and on the sweep's parent run."""
    from windtunnel.orchestrator.tracking import with_retry

    rec = find_round(client, exp_id, last_round) if last_round else None
    for run_id in ([rec.info.run_id] if rec is not None else []) + [parent_id]:
        with_retry(client.set_tag, run_id, STOP_TAG, reason[:5000])


def _done_keys(client: Any, exp_id: str) -> set[str]:
    from windtunnel.orchestrator.tracking import effective_status, trial_runs

    return {
        k
        for k, run in trial_runs(client, exp_id).items()
        if effective_status(run) in ("finished", "diverged")
    }


def _round_configs(
    spec: SweepSpec, uri, client, exp_id, parent_id, outcome, r: int, base, shape, left: float
) -> tuple[list[RunConfig] | None, str]:
    """Round r's configs: the recorded ones, or a new proposal (None and why when the loop stops)."""
    from windtunnel.orchestrator.propose import fit_target, propose

    a = spec.adaptive
    rec = find_round(client, exp_id, r)
    if rec is not None:
        return recorded_configs(rec, base), f"recorded proposal, run {rec.info.run_id}"
    df = sweep_runs(uri, spec, outcome.run_ids)
    if a.stop_at_pi_width is not None:
        tf = fit_target(df, a.target, a.bootstrap, seed=r)
        if tf.width <= a.stop_at_pi_width:
            return None, f"pi95 width {tf.width:.4f} <= stop_at_pi_width {a.stop_at_pi_width:g}"
    round_budget = left / (a.rounds - r + 1)  # the budget left, spread evenly over the rounds left
    ps = propose(df, base, a.target, a.k, round_budget, a.bootstrap, seed=r, shape=shape, points=a.points)
    if not ps.proposals:
        return None, f"no proposed run fits in this round's {round_budget:.3g} FLOPs of adaptive.budget"
    rec = record_round(client, exp_id, parent_id, r, ps)
    return [p.cfg for p in ps.proposals], f"expected width {ps.width_before:.4f} -> {ps.width_after:.4f}"


def finish_round(spec: SweepSpec, uri, client, exp_id, parent_id, outcome, r: int) -> float:
    """Round r's 95 % interval width at the target: refit the sweep's runs with round r's (their point rows
    included), log ``pi95_width_at_target`` (round run, parent at step r) and return it; a round whose width
    is logged returns that width without refitting."""
    from mlflow.entities import Metric

    from windtunnel.orchestrator.propose import fit_target
    from windtunnel.orchestrator.tracking import trial_runs, with_retry

    for run in trial_runs(client, exp_id).values():
        if run.data.tags.get("adaptive_round") == str(r):
            outcome.run_ids.add(run.info.run_id)
    rec = find_round(client, exp_id, r)
    if WIDTH_METRIC in rec.data.metrics:
        return float(rec.data.metrics[WIDTH_METRIC])
    a = spec.adaptive
    tf = fit_target(sweep_runs(uri, spec, outcome.run_ids), a.target, a.bootstrap, seed=r)
    now = int(1000 * time.time())
    with_retry(client.log_batch, rec.info.run_id, metrics=[Metric(WIDTH_METRIC, tf.width, now, r)])
    with_retry(client.log_batch, parent_id, metrics=[Metric(WIDTH_METRIC, tf.width, now, r)])
    with_retry(client.set_tag, rec.info.run_id, "status", "finished")
    with_retry(client.set_terminated, rec.info.run_id, "FINISHED")
    return tf.width
