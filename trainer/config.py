"""Typed run configuration: model + data + optimisation + schedule + precision + parallel layout.

One ``RunConfig`` is the contract between the recommender (which writes it), the orchestrator (which
varies its fields in sweeps) and the trainer (which loads it). YAML in, YAML out; validation errors
name the field (``model.n_heads: ...``) so a researcher can fix the file without reading a traceback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MoEConfig(_Strict):
    """Mixture-of-experts FFN (Ling 2.0 / DeepSeek-V3 style)."""

    n_experts: int = Field(256, ge=1, description="routed experts E")
    top_k: int = Field(8, ge=1, description="routed experts active per token E_a")
    n_shared_experts: int = Field(1, ge=0, description="always-on shared experts E_s")
    d_expert: int = Field(512, ge=1, description="hidden width of one expert's SwiGLU")
    n_dense_layers: int = Field(1, ge=0, description="first k layers use a dense FFN")
    score_func: Literal["sigmoid", "softmax"] = "sigmoid"
    n_groups: int = Field(1, ge=1, description="expert groups for group-limited routing")
    topk_groups: int = Field(1, ge=1, description="groups a token may route into")
    route_scale: float = Field(2.5, gt=0, description="normalised top-k gates are multiplied by this")
    norm_topk: bool = True
    balance: Literal["bias", "none"] = Field("bias", description="aux-loss-free expert-bias balancing")
    bias_update_rate: float = Field(1e-3, ge=0, description="u in b_i += u*(sign(e_i) - mean(sign(e)))")
    seq_aux_loss_coef: float = Field(0.0, ge=0, description="sequence-wise balance loss weight")
    z_loss_coef: float = Field(0.0, ge=0, description="router z-loss weight")

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= n_experts ({self.n_experts})")
        if self.n_experts % self.n_groups:
            raise ValueError(f"n_groups ({self.n_groups}) must divide n_experts ({self.n_experts})")
        if self.topk_groups > self.n_groups:
            raise ValueError(f"topk_groups ({self.topk_groups}) must be <= n_groups ({self.n_groups})")
        per_group = self.n_experts // self.n_groups
        if self.n_groups > 1 and self.topk_groups * per_group < self.top_k:
            raise ValueError(
                f"topk_groups*experts_per_group ({self.topk_groups}*{per_group}) "
                f"must be >= top_k ({self.top_k})"
            )
        return self


class ModelConfig(_Strict):
    """Decoder-only transformer: GQA + QK-Norm + partial RoPE, SwiGLU, pre-norm RMSNorm, untied embeddings."""

    vocab_size: int = Field(157184, ge=2)
    d_model: int = Field(2048, ge=1)
    n_layers: int = Field(20, ge=1)
    n_heads: int = Field(16, ge=1)
    n_kv_heads: int = Field(4, ge=1)
    head_dim: int | None = Field(None, ge=1, description="defaults to d_model // n_heads")
    d_ffn: int = Field(5120, ge=1, description="dense SwiGLU hidden width")
    seq_len: int = Field(4096, ge=1, description="training sequence length s (also used by FLOP accounting)")
    rope_fraction: float = Field(0.5, ge=0, le=1, description="share of each head's dims that get RoPE")
    rope_theta: float = Field(10000.0, gt=0)
    qk_norm: bool = True
    norm_eps: float = Field(1e-6, gt=0)
    init_std: float = Field(0.006, gt=0)
    tie_embeddings: bool = False
    moe: MoEConfig | None = None
    n_mtp_layers: int = Field(0, ge=0, description="multi-token-prediction modules (DeepSeek-V3 style)")
    mtp_loss_weight: float = Field(0.1, ge=0)

    @property
    def head_dim_(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def family(self) -> str:
        return "moe" if self.moe is not None else "dense"

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must divide d_model ({self.d_model}) unless head_dim is set"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        rope_dims = int(self.head_dim_ * self.rope_fraction)
        if rope_dims % 2:
            raise ValueError(f"rope_fraction*head_dim ({rope_dims}) must be even")
        if self.moe is not None and self.moe.n_dense_layers > self.n_layers:
            raise ValueError(
                f"moe.n_dense_layers ({self.moe.n_dense_layers}) must be <= n_layers ({self.n_layers})"
            )
        return self


class DataConfig(_Strict):
    """Where tokens come from. ``source: default`` builds the offline corpus from files on this machine."""

    source: Literal["default", "files", "tokens"] = "default"
    paths: list[str] = Field(
        default_factory=list, description="txt/jsonl/parquet files, or .bin token shards"
    )
    text_field: str = "text"
    max_corpus_bytes: int = Field(32_000_000, ge=10_000, description="cap on the default corpus size")
    val_fraction: float = Field(0.02, gt=0, lt=0.5)
    cache_dir: str = Field("~/.cache/windtunnel", description="tokenizer and shard cache")
    tokenizer: str | None = Field(None, description="path to a tokenizer.json; trained locally when unset")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source != "default" and not self.paths:
            raise ValueError(f"paths must be given when source is '{self.source}'")
        return self


class OptimConfig(_Strict):
    """AdamW with global-norm clipping; batch and token budget in tokens-derived units."""

    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final LR / peak for decaying schedules")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    batch_size: int = Field(32, ge=1, description="sequences per optimizer step")
    micro_batch_size: int | None = Field(
        None, ge=1, description="sequences per forward; defaults to batch_size"
    )
    tokens: int = Field(1_000_000, ge=1, description="training tokens D")

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must divide batch_size ({self.batch_size})"
            )
        return self


class ScheduleConfig(_Strict):
    """LR schedule. WSM: warmup, constant LR, checkpoints every interval, final model = weighted merge."""

    kind: Literal["wsm", "wsd", "cosine", "constant"] = "wsm"
    warmup_fraction: float = Field(0.02, ge=0, lt=1, description="share of steps in linear warmup")
    warmup_steps: int | None = Field(
        None,
        ge=0,
        exclude_if=lambda v: v is None,  # unset: absent from dumps, hashes and trial keys
        description="linear warmup in updates; replaces warmup_fraction when set (runs of different lengths "
        "share it; a run must have more updates than this)",
    )
    decay_fraction: float = Field(0.2, ge=0, le=1, description="WSD: share of steps in the decay")
    decay_shape: Literal["linear", "1-sqrt"] = Field("linear", description="WSD: decay curve f(x)")
    checkpoint_interval: int = Field(0, ge=0, description="WSM: steps between merge checkpoints (0: auto)")
    merge_window: int = Field(8, ge=1, description="WSM: number of checkpoints merged")
    merge_shape: Literal["mean", "1-sqrt", "ema", "linear"] = "mean"
    ema_decay: float = Field(0.9, gt=0, lt=1)

    def warmup_updates(self, total_steps: int) -> int:
        """W, the warmup in updates of a run of ``total_steps`` updates: ``warmup_steps`` when set (the run's
        config refuses W >= T, see ``RunConfig``), else round(warmup_fraction·T) clamped to T − 1."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(int(round(self.warmup_fraction * total_steps)), max(total_steps - 1, 0))


class PointsConfig(_Strict):
    """Many (N, D, loss) points from one run (``trainer.points``): at each token fraction f_k of the run the
    WSM merge of the constant-LR checkpoints up to D_k = f_k·D (``mode: wsm``) or a cooldown branch of
    ``branch_fraction``·D_k tokens from D_k (``mode: wsd``) is evaluated on the validation batches."""

    at_fractions: list[float] = Field(min_length=1, description="token fractions f_k in (0, 1], ascending")
    mode: Literal["wsm", "wsd"] = Field("wsm", description="wsm: merged checkpoints; wsd: cooldown branch")
    branch_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="wsd: branch tokens / D_k; unset: d/(1-d) with d = schedule.decay_fraction, so every "
        "branch decays over the same share of its tokens as the run's own final decay",
    )

    @field_validator("at_fractions")
    @classmethod
    def _fractions(cls, f: list[float]) -> list[float]:
        bad = [x for x in f if not 0 < x <= 1]
        if bad:
            raise ValueError(f"{bad[0]} is outside (0, 1]")
        if len(set(f)) != len(f):
            raise ValueError(f"{sorted({x for x in f if f.count(x) > 1})[0]} is repeated")
        if f != sorted(f):
            raise ValueError(f"must be ascending, got {f}")
        return f

    @field_validator("branch_fraction")
    @classmethod
    def _branch(cls, r: float | None, info: ValidationInfo) -> float | None:
        if r is not None and info.data.get("mode") == "wsm":
            raise ValueError("only used by mode wsd")
        return r


class PrecisionConfig(_Strict):
    """Numerics. ``fp8``: E4M3, 1x128 activation tiles, 128x128 weight blocks (Ling 2.0 sec. 5.1)."""

    dtype: Literal["fp32", "bf16", "fp8"] = "fp32"
    fp8_block: int = Field(128, ge=1)
    monitor_interval: int = Field(0, ge=0, description="FP8 safeguard sampling period in steps (0: off)")
    underflow_alert: float = Field(0.01, ge=0, le=1)
    cosine_alert: float = Field(0.99, ge=0, le=1)


class ParallelConfig(_Strict):
    """Parallel layout used by the memory estimate and by multi-process training."""

    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    ep: int = Field(1, ge=1)
    dp: int = Field(1, ge=1)
    gpu_memory_gb: float = Field(80.0, gt=0)
    zero_stage: int = Field(1, ge=0, le=3, description="optimizer/grad/param sharding over dp")
    activation_checkpointing: bool = True
    peak_tflops: float | None = Field(
        None,
        gt=0,
        description="dense peak TFLOP/s per GPU for the reported MFU; None: env WT_PEAK_TFLOPS, else the "
        "device table (trainer.hardware). A label: not part of config_hash",
    )


class RunConfig(_Strict):
    """Everything one training run needs."""

    name: str = "run"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = Field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    points: PointsConfig | None = Field(
        None,
        exclude_if=lambda v: v is None,  # unset: absent from dumps, hashes and trial keys
        description="evaluate several (N, D, loss) points from this one run (trainer.points)",
    )
    eval_interval: int = Field(50, ge=1, description="steps between validation-loss evaluations")
    eval_batches: int = Field(4, ge=1)
    log_interval: int = Field(10, ge=1)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    diverge_factor: float = Field(
        3.0,
        gt=1,
        description="smoothed (EMA) training loss > factor * its best so far, or NaN, marks divergence",
    )

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        moe = self.model.moe
        if moe is not None and moe.n_experts % self.parallel.ep:
            raise ValueError(f"parallel.ep ({self.parallel.ep}) must divide moe.n_experts ({moe.n_experts})")
        if self.model.n_layers % self.parallel.pp:
            raise ValueError(
                f"parallel.pp ({self.parallel.pp}) must divide model.n_layers ({self.model.n_layers})"
            )
        if self.model.n_heads % self.parallel.tp:
            raise ValueError(
                f"parallel.tp ({self.parallel.tp}) must divide model.n_heads ({self.model.n_heads})"
            )
        w = self.schedule.warmup_steps
        if w is not None and w > 0 and w >= self.steps:
            raise ValueError(
                f"schedule.warmup_steps: {w} is not below this run's {self.steps} updates "
                "(optim.tokens / (batch_size * seq_len)); lower it or train more tokens"
            )
        if self.points is not None:
            from trainer.points import check_points

            check_points(self)
        return self

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def batch_tokens(self) -> int:
        return self.optim.batch_size * self.model.seq_len

    @property
    def steps(self) -> int:
        return max(1, self.optim.tokens // self.batch_tokens)

    def config_hash(self) -> str:
        """Stable hash of the run's content (the ``name`` is excluded: it is a label, not content)."""
        # name and parallel.peak_tflops are labels (the run's name; the GPU peak MFU is reported against)
        payload = self.model_dump(mode="json", exclude={"name": True, "parallel": {"peak_tflops"}})
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ---- YAML ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """Return a copy with dotted-path overrides applied, e.g. ``{"optim.lr": 1e-3}``."""
        data = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            set_dotted(data, dotted, value)
        return RunConfig.from_dict(data)


class ConfigError(ValueError):
    """A config that failed validation; the message names the field and the problem."""


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: ``model.n_heads: n_heads (12) must divide d_model (512)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"]`` from ``"a.b"``, creating intermediate mappings (e.g. ``model.moe``)."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
