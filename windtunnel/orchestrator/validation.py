"""The validation phase of a sweep with a ``target:`` block: predict a run far beyond the ladder from the
ladder's own laws, record the prediction, train the target, compare.

Order (each step needs the one before; a re-run of the sweep resumes where it stopped):
1. the ladder has run and its laws are fitted (``fitting.fit_at_end``, target runs excluded);
2. C_target = ``target.compute`` or ``target.extrapolation`` x the ladder's largest budget; the target's
   size from the sweep's ``m_opt`` law M_opt = a·C^b ("Towards Greater Leverage" sec. 3): the d_model of
   the shape rule whose M (``trainer.flops.flops_per_token``) is closest in log, D = C / M;
3. the prediction (``windtunnel.predict``) is recorded in MLflow under the key ``target`` before any target
   trial starts; a recorded prediction is never replaced (a re-run uses the recorded one);
4. the target trials (one per seed) train through the driver's Ray Tune / MLflow path (``launch``);
5. ``validation_report.write_report``: predicted vs observed table, figure, ``summary.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, RunConfig
from windtunnel.errors import SpecError, one_line
from windtunnel.orchestrator.spec import LadderRule, SweepSpec
from windtunnel.orchestrator.spec_target import TARGET_STUDY, TargetShape

PREDICTION_KEY = "target"  # the prefix of every target prediction's key (``prediction_key``)


def prediction_key(cfg: RunConfig) -> str:
    """The key a target's prediction is recorded under: ``target-<content hash of its config, seed 0>``. One
    per target configuration (its size, tokens, LR, data; not its seed), so a changed target (another
    compute, another ladder's m_opt size, another LR law) gets a prediction of its own instead of being
    judged against an older one; the same target resumed finds its recorded prediction, which stands."""
    return f"{PREDICTION_KEY}-{cfg.with_overrides({'seed': 0}).config_hash()[:12]}"


def ladder_studies(spec: SweepSpec) -> list[Any]:
    return [s for s in spec.studies if s.ladder is not None]


def target_shape(spec: SweepSpec) -> TargetShape:
    """The target's shape rule: ``target.shape``, else the first ladder study's rule."""
    assert spec.target is not None
    if spec.target.shape is not None:
        return spec.target.shape
    for study in ladder_studies(spec):
        rule = study.ladder.rule
        if rule is not None:
            keep = ("head_dim", "aspect_ratio", "ffn_mult", "kv_ratio", "granularity")
            return TargetShape(**{k: getattr(rule, k) for k in keep})
    raise SpecError("target.shape: give a shape (no ladder study has a rule to take it from)")


def check_target(spec: SweepSpec) -> None:
    """Problems a user can fix before the ladder runs (one-line ``SpecError``)."""
    t = spec.target
    if t is None:
        return
    if not ladder_studies(spec):
        raise SpecError("target: needs a ladder study (its allocation law sizes the target)")
    if t.extrapolation is not None and not any(s.ladder.budgets for s in ladder_studies(spec)):
        raise SpecError("target.extrapolation: the ladder studies list no budgets; give target.compute")
    laws = spec.fit.laws
    if laws is not None and "m_opt" not in laws and t.model is None:
        raise SpecError("fit.laws: a target needs the m_opt allocation law; add m_opt")
    if laws is not None and t.law != "auto" and t.law not in laws:
        raise SpecError(f"target.law: {t.law} is not among fit.laws ({', '.join(laws)})")
    if TARGET_STUDY in {s.name for s in spec.studies}:
        raise SpecError(f"studies: the name {TARGET_STUDY!r} is reserved for the target's trials")
    if t.model is None:
        target_shape(spec)
        return
    try:
        _base(spec).with_overrides({f"model.{k}": v for k, v in t.model.items()})
    except ConfigError as err:
        raise SpecError(one_line(f"target.model: {err}")) from None


def ladder_max_budget(spec: SweepSpec) -> float:
    return max(c for s in ladder_studies(spec) for c in (s.ladder.budgets or []))


def _base(spec: SweepSpec) -> RunConfig:
    """The first ladder study's base (the sweep's base with that study's overrides)."""
    base = spec.base_config()
    study = ladder_studies(spec)[0]
    return base.with_overrides(study.overrides) if study.overrides else base


def shape_models(base: RunConfig, shape: TargetShape) -> Iterator[RunConfig]:
    """Every model of the shape rule, narrowest first: n_heads = kv_ratio, 2·kv_ratio, … up to d_model_max,
    d_model = n_heads·head_dim, depth, FFN and experts from the rule (``LadderRule.shapes``) on ``base``."""
    moe = base.model.moe is not None
    for n_heads in range(shape.kv_ratio, shape.d_model_max // shape.head_dim + 1, shape.kv_ratio):
        d = n_heads * shape.head_dim
        rule = LadderRule(
            n_sizes=1,
            d_model_min=d,
            d_model_max=d,
            head_dim=shape.head_dim,
            aspect_ratio=shape.aspect_ratio,
            ffn_mult=shape.ffn_mult,
            kv_ratio=shape.kv_ratio,
            granularity=shape.granularity,
        )
        yield base.with_overrides(rule.shapes(moe)[0])


def size_for(base: RunConfig, shape: TargetShape, m_opt: float) -> tuple[RunConfig, float]:
    """The shape rule's model whose FLOPs per token M is closest to M_opt in log; and its M."""
    from trainer.flops import flops_per_token

    best: tuple[float, RunConfig, float] | None = None
    for cfg in shape_models(base, shape):
        m = float(flops_per_token(cfg.model))
        gap = abs(math.log(m / m_opt))
        if best is None or gap < best[0]:
            best = (gap, cfg, m)
    if best is None:
        raise SpecError(f"target.shape: no d_model up to d_model_max={shape.d_model_max}")
    return best[1], best[2]


def _hparams(spec: SweepSpec, lawset: Any, c: float, cfg: RunConfig) -> tuple[dict[str, Any], list[str]]:
    """LR and batch for the target: from the sweep's identified lr_opt/batch_opt laws, or the base's."""
    assert spec.target is not None
    if spec.target.hparams == "base":
        return {}, [
            f"lr {cfg.optim.lr:g} and batch {cfg.optim.batch_size} from the base (target.hparams: base)"
        ]
    over: dict[str, Any] = {}
    notes = []
    for name, key in (("lr_opt", "optim.lr"), ("batch_opt", "optim.batch_size")):
        law = lawset.laws.get(name)
        if law is None or law.notes.get("degenerate"):
            notes.append(
                f"{key} from the base: the sweep's {name} law is {'degenerate' if law else 'absent'}"
            )
            continue
        value = float(lawset.predict(name, c)[0])
        over[key] = value if name == "lr_opt" else max(1, round(value / cfg.model.seq_len))
    return over, notes


def plan_target(spec: SweepSpec, lawset: Any) -> tuple[list[RunConfig], float, list[str]]:
    """The target's RunConfigs (one per seed), its compute C_target, and notes on how they were set."""
    assert spec.target is not None
    from trainer.flops import flops_per_token

    c = spec.target.target_compute(ladder_max_budget(spec))
    if spec.target.model is not None:
        cfg = _base(spec).with_overrides({f"model.{k}": v for k, v in spec.target.model.items()})
        m = float(flops_per_token(cfg.model))
        how = "the fixed target.model"
    else:
        if "m_opt" not in lawset.laws:
            raise SpecError("target: the sweep's laws have no m_opt (allocation) law to size the target")
        m_opt = float(lawset.predict("m_opt", c)[0])
        cfg, m = size_for(_base(spec), target_shape(spec), m_opt)
        how = f"M_opt(C={c:.3g}) = {m_opt:.4g} FLOPs/token from m_opt"
    over, notes = _hparams(spec, lawset, c, cfg)
    over["optim.tokens"] = int(c / m)
    cfg = cfg.with_overrides(over)
    notes.insert(
        0,
        f"{how}: d_model {cfg.model.d_model}, {cfg.model.n_layers} layers, M = {m:.4g} FLOPs/token, "
        f"D = {cfg.optim.tokens:,} tokens",
    )
    cfgs = []
    for seed in spec.target.seeds:
        run = cfg.with_overrides({"seed": seed})
        cfgs.append(run.model_copy(update={"name": f"{spec.name}-{TARGET_STUDY}-{run.config_hash()[:8]}"}))
    return cfgs, c, notes


def run_target_phase(
    spec: SweepSpec,
    tracking_uri: str,
    parent_run_id: str,
    sweep_dir: Path,
    outcome: Any,
    launch: Callable[[list[RunConfig], list[str], list[str], float], None],
) -> dict[str, Any] | None:
    """Steps 2-5 of the module docstring; lines go to ``outcome.summary``; returns summary.json's dict."""
    from windtunnel.laws import load_laws
    from windtunnel.orchestrator.identity import data_key, trial_key
    from windtunnel.orchestrator.preflight import prepare_manifests
    from windtunnel.orchestrator.tracking import runs_from_mlflow
    from windtunnel.orchestrator.validation_report import write_report
    from windtunnel.predict import laws_sha256, point_from_model, predict_loss

    summary = outcome.summary
    if outcome.laws_path is None:
        summary.append("target: not run: the ladder's laws were not fitted")
        return None
    lawset = load_laws(outcome.laws_path)
    try:
        cfgs, c_target, notes = plan_target(spec, lawset)
    except SpecError as err:
        summary.append(f"target: not run: {err}")
        return None
    point = point_from_model(cfgs[0].model, cfgs[0].optim.tokens)
    pred = predict_loss(
        lawset, point, law=spec.target.law, sha=laws_sha256(outcome.laws_path, lawset), notes=notes
    )
    if spec.target.predict_before:
        pred, line = _record(tracking_uri, spec.name, prediction_key(cfgs[0]), pred, parent_run_id)
        summary.append(line)
    manifests = prepare_manifests(cfgs)
    hashes = [manifests[data_key(c)] for c in cfgs]
    keys = [trial_key(c, m) for c, m in zip(cfgs, hashes, strict=True)]
    df = runs_from_mlflow(tracking_uri, spec.name)
    done = set(df.loc[df["status"].isin(["finished", "diverged"]), "trial_key"])
    todo = [i for i, k in enumerate(keys) if k not in done]  # identity by content, as for every trial
    if todo:
        launch([cfgs[i] for i in todo], [keys[i] for i in todo], [hashes[i] for i in todo], c_target)
        df = runs_from_mlflow(tracking_uri, spec.name)
    # this sweep's ladder and its target only: runs of an earlier, changed sweep stay in the store
    ids = outcome.run_ids
    df = df[df["run_id"].isin(ids) | df["parent_run_id"].isin(ids) | df["trial_key"].isin(keys)]
    return write_report(
        spec, df, lawset, pred, cfgs, c_target, tracking_uri, parent_run_id, sweep_dir, summary
    )


def _record(uri: str, experiment: str, key: str, pred: Any, parent_run_id: str) -> tuple[Any, str]:
    """Record the prediction before the target trains; a different one already recorded stands."""
    from windtunnel.errors import PredictionLocked
    from windtunnel.orchestrator.tracking import ensure_experiment, open_client
    from windtunnel.predict import find_prediction, prediction_from_run, record_prediction

    try:
        run_id, rec = record_prediction(uri, experiment, key, pred, parent_run_id)
    except PredictionLocked as err:
        client = open_client(uri)
        old = find_prediction(client, ensure_experiment(client, experiment), key)
        rec = prediction_from_run(old)
        return rec, f"target prediction: the recorded one stands ({err})"
    return rec, f"target prediction recorded before training (MLflow run {run_id}, made {rec.made_at})"
