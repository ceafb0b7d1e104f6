"""Sweep spec: a pydantic v2 model of the sweep YAML and its expansion into fully validated trials.

A sweep has a ``base`` RunConfig and a list of ``studies``; each study expands into trials:

- ``grid``: dotted RunConfig field -> list of values (Cartesian product);
- ``ladder``: compute budgets C x model sizes (listed shapes, or a width/depth rule spacing d_model as a
  power law); each trial trains D = C / M tokens, M = ``trainer.flops.flops_per_token`` (IsoFLOP profile,
  "Towards Greater Leverage" sec. 3). With ``tokens: law`` each size instead trains to its compute-optimal
  D_opt from a law set (M_opt = a*C^b inverted: C = (M/a)^(1/b), D = C/M) and may take LR/batch from the
  ``lr_opt``/``batch_opt`` laws (the Ling "wind tunnel", Ling 2.0 report sec. 3);
- ``search``: per budget C, an Optuna TPE search over learning rate and/or batch size (run by the driver).

Every trial is a complete ``RunConfig``; which stored result it may reuse is decided by content
(``identity.py``). Bad input raises ``SpecError`` with ONE line naming the field path, e.g.
``studies[0].grid.optim.lr: empty list``. Every number must be finite (``inf``/``nan``, and YAML numbers
too large for a float such as ``1e400``, are refused with their path) and within the bounds below; a trial
costing more than ``limits.max_trial_flops`` training FLOPs is refused unless the YAML raises the limit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.config import DataConfig, RunConfig
from windtunnel.errors import SpecError, one_line
from windtunnel.orchestrator.spec_adaptive import ADAPTIVE_PREFIX, AdaptiveSpec
from windtunnel.orchestrator.spec_target import TargetSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


MAX_SEED = 2**32 - 1  # numpy's seed range (torch's is wider)
DEFAULT_MAX_TRIAL_FLOPS = 1.0e21


class Resources(_Strict):
    """Resources per trial (Ray Tune ``with_resources``); torch threads = ``cpus``."""

    cpus: float = Field(
        1.0, gt=0, le=1024, description="CPUs per trial; torch.set_num_threads(max(1, int(cpus)))"
    )
    gpus: float = Field(
        0.0, ge=0, le=64, description="GPU fraction per trial (e.g. 0.25 packs 4 trials on one GPU)"
    )


class Limits(_Strict):
    """Refuse sweeps that could not finish: raise these in the YAML to run more on purpose.

    A trial's cost is its training FLOPs with the output layer, D * (M + 6 * d_model * vocab). The default
    ``max_trial_flops`` = 1e21 is about 3.6 days on 8 H100s at a sustained 4e14 FLOP/s each (40 % of the dense
    BF16 peak; ~700 H100-hours; the largest trial of experiments/ling_windtunnel.yaml costs 1.7e20), and
    centuries on a 2-core CPU: a budget typed a few exponents too high is refused, not run until killed.
    """

    max_trial_flops: float = Field(
        DEFAULT_MAX_TRIAL_FLOPS, gt=0, description="largest training FLOPs of one trial (with the head)"
    )
    max_trials: int = Field(10_000, ge=1, le=10_000_000, description="largest number of trials in the sweep")


class LogRange(_Strict):
    """A continuous range sampled on a log scale (or linear with ``log: false``)."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)
    log: bool = True

    @model_validator(mode="after")
    def _check(self) -> LogRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        return self


class SearchStudy(_Strict):
    """Optuna TPE search (``ray.tune.search.optuna.OptunaSearch``) of LR and/or batch size at each budget."""

    budgets: list[float] = Field(min_length=1, description="compute budgets C in FLOPs (tokens = C / M)")
    lr: LogRange | None = Field(None, description="learning-rate range")
    batch_size: list[int] | None = Field(
        None, min_length=1, description="batch sizes (sequences) to choose from"
    )
    num_samples: int = Field(8, ge=1, le=100_000, description="trials per budget")
    lr_grid: int = Field(
        0,
        ge=0,
        le=100_000,
        description="first run this many log-spaced LRs spanning lr.low..lr.high (ends included) at every "
        "budget; TPE conditions on them and samples the other num_samples - lr_grid trials",
    )
    models: list[dict[str, Any]] | None = Field(
        None,
        min_length=1,
        description="one model shape per budget (mappings of ModelConfig fields, e.g. d_model, n_layers), "
        "e.g. growing with C as compute-optimal models do; default: the base model at every budget",
    )
    scheduler: Literal["asha", "median", "none"] = Field("asha", description="pruning of clearly bad trials")
    grace_fraction: float = Field(0.3, gt=0, le=1, description="share of tokens before a trial may be pruned")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA reduction factor")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="TPE sampler seed")

    @model_validator(mode="after")
    def _check(self) -> SearchStudy:
        if self.lr is None and self.batch_size is None:
            raise ValueError("give lr and/or batch_size to search over")
        for i, c in enumerate(self.budgets):
            if not c > 0 or not math.isfinite(c):
                raise ValueError(f"budgets[{i}]: must be a positive number, got {c}")
        for i, b in enumerate(self.batch_size or []):
            if b < 1:
                raise ValueError(f"batch_size[{i}]: must be >= 1, got {b}")
        if self.lr_grid:
            if self.lr is None:
                raise ValueError("lr_grid: needs an lr range to lay the grid over")
            if self.lr_grid > self.num_samples:
                raise ValueError(f"lr_grid: {self.lr_grid} grid points > num_samples ({self.num_samples})")
        if self.models is not None and len(self.models) != len(self.budgets):
            raise ValueError(
                f"models: give one model per budget ({len(self.budgets)} budgets, {len(self.models)} models)"
            )
        return self

    def lr_grid_values(self) -> list[float]:
        """The ``lr_grid`` LRs: log-spaced from lr.low to lr.high, ends included (4 significant digits)."""
        if not self.lr_grid or self.lr is None:
            return []
        lo, hi, n = math.log(self.lr.low), math.log(self.lr.high), self.lr_grid
        if n == 1:
            return [float(f"{math.exp((lo + hi) / 2):.4g}")]
        return [float(f"{math.exp(lo + (hi - lo) * i / (n - 1)):.4g}") for i in range(n)]


class LadderRule(_Strict):
    """Width/depth rule: d_model spaced geometrically (a power law) from ``d_model_min`` to ``d_model_max``.

    n_heads = d_model / head_dim, n_layers = max(1, round(d_model / aspect_ratio)),
    d_ffn = ffn_mult * d_model (rounded to 8), MoE d_expert = 2 * d_model / granularity (G = 2 d/d_e).
    """

    n_sizes: int = Field(ge=1, le=1000)
    d_model_min: int = Field(ge=8, le=1_000_000)
    d_model_max: int = Field(ge=8, le=1_000_000)
    head_dim: int = Field(16, ge=2, le=100_000)
    aspect_ratio: float = Field(64.0, gt=0, description="d_model / n_layers")
    ffn_mult: float = Field(2.75, gt=0)
    kv_ratio: int = Field(1, ge=1, le=100_000, description="n_heads / n_kv_heads")
    granularity: float | None = Field(None, gt=0, description="MoE only: G = 2 d_model / d_expert")

    @model_validator(mode="after")
    def _check(self) -> LadderRule:
        if self.d_model_min > self.d_model_max:
            raise ValueError(f"d_model_min ({self.d_model_min}) must be <= d_model_max ({self.d_model_max})")
        if self.d_model_min < self.head_dim:
            raise ValueError(f"d_model_min ({self.d_model_min}) must be >= head_dim ({self.head_dim})")
        return self

    def shapes(self, moe: bool) -> list[dict[str, Any]]:
        """Model overrides (dotted ``model.*`` keys) for each size."""
        out = []
        n = self.n_sizes
        for i in range(n):
            frac = i / (n - 1) if n > 1 else 0.0
            d_raw = self.d_model_min * (self.d_model_max / self.d_model_min) ** frac
            n_heads = max(self.kv_ratio, round(d_raw / self.head_dim / self.kv_ratio) * self.kv_ratio)
            d_model = n_heads * self.head_dim
            shape: dict[str, Any] = {
                "model.d_model": d_model,
                "model.n_heads": n_heads,
                "model.n_kv_heads": n_heads // self.kv_ratio,
                "model.head_dim": self.head_dim,
                "model.n_layers": max(1, round(d_model / self.aspect_ratio)),
                "model.d_ffn": max(8, round(self.ffn_mult * d_model / 8) * 8),
            }
            if moe and self.granularity is not None:
                shape["model.moe.d_expert"] = max(4, round(2 * d_model / self.granularity))
            out.append(shape)
        return out


class LadderStudy(_Strict):
    """Budgets x model sizes. ``tokens: budget``: D = C/M (IsoFLOP); ``tokens: law``: D = D_opt(M)."""

    budgets: list[float] | None = Field(None, min_length=1, description="compute budgets C (FLOPs)")
    models: list[dict[str, Any]] | None = Field(
        None,
        min_length=1,
        description="model shapes: mappings of ModelConfig fields (e.g. d_model, n_layers)",
    )
    rule: LadderRule | None = None
    tokens: Literal["budget", "law"] = "budget"
    hparams: Literal["base", "law"] = Field(
        "base", description="law: lr and batch from lr_opt/batch_opt laws"
    )
    laws: str = Field("ling", description="law set for tokens/hparams 'law': 'ling' or a laws.json path")

    @model_validator(mode="after")
    def _check(self) -> LadderStudy:
        if (self.models is None) == (self.rule is None):
            raise ValueError("give exactly one of models or rule")
        if self.tokens == "budget" and not self.budgets:
            raise ValueError("budgets are required when tokens is 'budget'")
        for i, c in enumerate(self.budgets or []):
            if not c > 0 or not math.isfinite(c):
                raise ValueError(f"budgets[{i}]: must be a positive number, got {c}")
        return self


class Study(_Strict):
    """One study: ``overrides`` on ``base``, then one of grid / ladder / search (grid may join ladder)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted RunConfig field -> value")
    grid: dict[str, list[Any]] | None = Field(None, description="dotted RunConfig field -> list of values")
    ladder: LadderStudy | None = None
    search: SearchStudy | None = None
    seeds: list[int] | None = Field(None, min_length=1, description="defaults to the sweep's seeds")

    @model_validator(mode="after")
    def _check_seeds(self) -> Study:
        _check_seed_list(self.seeds or [])
        return self

    @model_validator(mode="after")
    def _check(self) -> Study:
        if self.grid is None and self.ladder is None and self.search is None:
            raise ValueError("give one of grid, ladder or search")
        if self.search is not None and (self.grid is not None or self.ladder is not None):
            raise ValueError("search cannot be combined with grid or ladder in one study")
        for key, values in (self.grid or {}).items():
            if len(values) == 0:
                raise ValueError(f"grid.{key}: empty list")
        if self.grid is not None and not self.grid:
            raise ValueError("grid: empty mapping")
        return self


class FitSpec(_Strict):
    """What to fit at the end of the sweep (``windtunnel.laws.fit_laws``)."""

    laws: list[str] | None = Field(None, description="law names; all that the runs support when unset")
    bootstrap: int = Field(50, ge=0, le=100_000)
    max_extrapolation_decades: float = Field(
        5.0,
        gt=0,
        description="the end-of-sweep recommendation at 6.4e24 FLOPs uses the sweep's laws only when its"
        " largest run is within this many decades of it (Ling: ~4); otherwise the published ling laws do",
    )


class SweepSpec(_Strict):
    """A sweep YAML."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, description="sweep = MLflow experiment name"
    )
    description: str = ""
    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLflow URI; relative sqlite paths = cwd")
    workdir: str = Field(
        "wt_runs",
        description="trial workdirs go to <workdir>/<sweep>/<trial key>; the driver locks <workdir>/<sweep>",
    )
    data: DataConfig | None = Field(None, description="replaces base.data for every trial")
    base: RunConfig = Field(default_factory=RunConfig, description="the RunConfig every trial starts from")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: Resources = Field(default_factory=Resources)
    concurrency: int = Field(2, ge=1, le=100_000, description="max trials at once")
    retries: int = Field(
        1, ge=0, le=100, description="re-runs of a crashing trial (diverged runs are not retried)"
    )
    min_runs_to_fit: int = Field(
        6, ge=1, le=10_000_000, description="finished runs needed before fitting laws"
    )
    fit: FitSpec = Field(default_factory=FitSpec)
    limits: Limits = Field(default_factory=Limits, description="what a sweep may cost before it is refused")
    studies: list[Study] = Field(min_length=1)
    target: TargetSpec | None = Field(None, description="a run beyond the ladder, predicted before training")
    adaptive: AdaptiveSpec | None = Field(
        None, description="rounds of proposed runs that narrow the interval at a target compute"
    )

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        names = [s.name for s in self.studies]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate study names: {sorted(dup)}")
        if self.adaptive is not None:
            taken = [n for n in names if n.startswith(ADAPTIVE_PREFIX)]
            if taken:
                raise ValueError(
                    f"studies: the name prefix {ADAPTIVE_PREFIX!r} is reserved for adaptive rounds"
                )
        _check_seed_list(self.seeds)
        return self

    def base_config(self) -> RunConfig:
        if self.data is None:
            return self.base
        return self.base.model_copy(update={"data": self.data})


def _check_seed_list(seeds: list[int]) -> None:
    for i, s in enumerate(seeds):
        if not 0 <= s <= MAX_SEED:
            raise ValueError(f"seeds[{i}]: must be in 0..{MAX_SEED}, got {s}")


def non_finite(data: Any, path: str = "") -> tuple[str, float] | None:
    """The first non-finite float in nested dicts/lists (``(path, value)``), or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return path or "<root>", data
    if isinstance(data, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in data.items())
    elif isinstance(data, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for sub, value in items:
        found = non_finite(value, sub)
        if found is not None:
            return found
    return None


def check_finite(data: Any, where: str = "") -> None:
    """``SpecError`` naming the first number that is inf or nan (YAML ``.inf``, ``.nan``, ``1.0e+400``)."""
    found = non_finite(data, where)
    if found is not None:
        raise SpecError(f"{found[0]}: must be a finite number, got {found[1]}")


def _loc(parts: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "<root>"


def friendly_message(msg: str) -> str:
    """Pydantic's wording in the user's terms ("unknown field" for an extra key)."""
    return msg.replace("Extra inputs are not permitted", "unknown field")


def format_spec_error(err: ValidationError) -> str:
    """``studies[0].ladder.budgets[1]: Input should be greater than 0; ...`` (one line)."""
    problems = []
    for e in err.errors():
        loc = list(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        # our validators name a sub-path first ("grid.optim.lr: empty list"): fold it into the location
        if (
            ": " in msg
            and msg.split(": ", 1)[0].replace(".", "").replace("[", "").replace("]", "").isidentifier()
        ):
            head, msg = msg.split(": ", 1)
            prefix = _loc(loc)
            problems.append(f"{prefix}.{head}: {msg}" if loc else f"{head}: {msg}")
            continue
        if e["type"] == "too_short" and e.get("input") in ([], {}):
            msg = "empty list"
        problems.append(f"{_loc(loc)}: {friendly_message(msg)}")
    return one_line("; ".join(problems))


# ---------------------------------------------------------------------------------------------------------
# loading


def parse_spec(data: Any, source: str = "<spec>") -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    check_finite(data)  # before pydantic: its messages for inf differ by field type
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_spec_error(err)) from None
    check_finite(spec.model_dump(mode="python"))  # numbers given as strings ("1e400") end up here
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML; raises ``SpecError`` (one line) on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        raise SpecError(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file") from None
    return load_spec_text(text, str(path))


def load_spec_text(text: str, source: str = "<spec>") -> SweepSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(one_line(f"{source}: not valid YAML{where}: {problem}")) from None
    return parse_spec(data, source)


def load_and_expand(path: str | Path) -> tuple[SweepSpec, Plan]:
    spec = load_spec(path)
    try:
        return spec, expand(spec)
    except SpecError:
        raise
    except (ValueError, TypeError, KeyError, ZeroDivisionError, OverflowError, ArithmeticError) as err:
        raise SpecError(one_line(f"{path}: {type(err).__name__}: {err}")) from None


def json_schema() -> dict[str, Any]:
    return SweepSpec.model_json_schema()


# the expansion lives in expand.py (imported last: it uses the models above)
from windtunnel.orchestrator.expand import Plan, SearchGroup, Trial, expand  # noqa: E402

__all__ = ["Plan", "SearchGroup", "SpecError", "SweepSpec", "Trial", "expand", "load_and_expand", "load_spec"]
