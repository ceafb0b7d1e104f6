"""Enumerate Ling-2.0-style architectures that satisfy the constraints and land near a size target.

The family (Ling 2.0 report, arXiv 2510.22115, Sec. 2; docs/DESIGN.md "Ling 2.0 architecture"):
n_heads = d_model / head_dim; GQA with n_kv = the divisor of n_heads nearest max(min(4, n_heads),
n_heads // 8) among those that are a multiple or divisor of 8, the largest tp (4, 4, 8 for Ling
mini/flash/1T; Megatron-Core needs n_kv and tp to divide one another); routed experts E, top-k E_a and
shared experts E_s chosen so that the activation ratio
A = (E_a + E_s)/(E + E_s) matches the requested one; d_expert = 2·d_model / G (G = granularity); the first
max(1, n_layers // 20) layers dense with d_ffn = 2.25·d_model; group-limited sigmoid routing with 8 groups,
top-4 groups, top-k weights ×2.5; one MTP layer. A = 1 gives a dense model.

The size of a candidate is measured by a metric (``M`` = ``trainer.flops.flops_per_token``, non-embedding
active parameters, or total parameters), each monotone in n_layers at fixed width, so for every width and
expert shape the best depth is found by bisection over the depths the constraints allow
(d_model/n_layers inside ``aspect``, n_layers divisible by pp).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from trainer.config import ModelConfig, MoEConfig
from trainer.flops import ParamCounts, activation_ratio, count_params, flops_per_token, granularity
from windtunnel.recommend.layout import TP_CHOICES
from windtunnel.recommend.targets import Constraints

TP_MAX = max(TP_CHOICES)

LING_EXPERTS = 256
LING_ROUTE_SCALE = 2.5


@dataclass(frozen=True)
class ExpertShape:
    """Routed experts E, top-k E_a, shared E_s and the realised A = (E_a + E_s)/(E + E_s)."""

    n_experts: int
    top_k: int
    n_shared: int
    activation_ratio: float


@dataclass(frozen=True)
class Candidate:
    """One architecture with its measured size: M (FLOPs/token), parameter counts, A and G."""

    model: ModelConfig
    flops_per_token: float
    counts: ParamCounts
    activation_ratio: float
    granularity: float

    @property
    def aspect(self) -> float:
        return self.model.d_model / self.model.n_layers


Metric = Callable[[ModelConfig, ParamCounts], float]

METRICS: dict[str, Metric] = {
    "m": lambda cfg, counts: flops_per_token(cfg),
    "params": lambda cfg, counts: float(counts.active_nonembed),
    "total": lambda cfg, counts: float(counts.total),
}


def expert_count_grid(c: Constraints) -> list[int]:
    """Routed-expert counts tried: powers of two and 3·2^i up to ``max_experts``, divisible by ep."""
    if c.n_experts is not None:
        grid = [c.n_experts]
    else:
        grid = sorted({2**i for i in range(2, 13)} | {3 * 2**i for i in range(1, 12)})
        grid = [e for e in grid if e <= c.max_experts]
    if c.ep is not None:
        grid = [e for e in grid if e % c.ep == 0]
    return grid


def expert_shape(a_target: float, c: Constraints) -> ExpertShape | None:
    """The (E, E_a, E_s) whose A is closest to ``a_target`` (relative error ≤ ``a_tolerance``).

    E_a = floor or ceil of A·(E + E_s) − E_s, from A = (E_a + E_s)/(E + E_s). Errors in the same 1 % bin
    prefer E close to Ling's 256.
    """
    best: tuple[tuple[float, float], ExpertShape] | None = None
    for n_experts in expert_count_grid(c):
        for n_shared in c.n_shared_experts:
            exact = a_target * (n_experts + n_shared) - n_shared
            for top_k in {math.floor(exact), math.ceil(exact)}:
                if not 1 <= top_k <= n_experts:
                    continue
                a_real = (top_k + n_shared) / (n_experts + n_shared)
                err = abs(a_real / a_target - 1)
                if err > c.a_tolerance:
                    continue
                key = (round(err / 0.01), abs(math.log2(n_experts / LING_EXPERTS)))
                if best is None or key < best[0]:
                    best = (key, ExpertShape(n_experts, top_k, n_shared, a_real))
    return best[1] if best else None


def width_grid(c: Constraints) -> list[int]:
    """d_model tried: multiples of head_dim up to 16·head_dim, then of 512 to 8192, of 1024 to 32768."""
    hd = c.head_dim
    widths = {hd * k for k in range(1, 17)}
    widths |= {w for w in range(512, 8193, 512) if w % hd == 0}
    widths |= {w for w in range(1024, 32769, 1024) if w % hd == 0}
    return sorted(widths)


def _round_to(x: float, q: int) -> int:
    return max(q, int(round(x / q)) * q)


def kv_heads(n_heads: int, c: Constraints) -> int | None:
    if c.n_kv_heads is not None:
        return c.n_kv_heads if n_heads % c.n_kv_heads == 0 else None
    want = max(min(4, n_heads), n_heads // 8)
    divisors = [k for k in range(1, n_heads + 1) if n_heads % k == 0]
    # Megatron needs n_kv to be a multiple or a divisor of tp: prefer counts every tp up to 8 accepts
    tp_friendly = [k for k in divisors if k % TP_MAX == 0 or TP_MAX % k == 0]
    return min(tp_friendly or divisors, key=lambda k: (abs(math.log(k / want)), -k))


def dense_layers(n_layers: int, c: Constraints, moe: bool) -> int:
    if not moe:
        return 0
    if c.n_dense_layers is not None:
        return c.n_dense_layers
    return max(1, n_layers // 20) if n_layers >= 2 else 0


def build_model(
    d_model: int, n_layers: int, shape: ExpertShape | None, g_target: float | None, c: Constraints
) -> ModelConfig | None:
    """The Ling-2.0-style ModelConfig for a width, depth and expert shape (None if it breaks a rule)."""
    if d_model % c.head_dim:
        return None
    n_heads = d_model // c.head_dim
    n_kv = kv_heads(n_heads, c)
    if n_kv is None or (c.tp is not None and n_heads % c.tp):
        return None
    if c.pp is not None and n_layers % c.pp:
        return None
    d_ffn = _round_to(c.dense_ffn_ratio * d_model, 128 if d_model >= 1024 else 8)
    moe = None
    if shape is not None:
        assert g_target is not None
        raw = 2 * d_model / g_target
        d_expert = _round_to(raw, 64 if raw >= 512 else (8 if raw >= 32 else 1))
        n_dense = dense_layers(n_layers, c, moe=True)
        if n_dense >= n_layers:
            return None
        n_groups = 8 if shape.n_experts % 8 == 0 and shape.n_experts >= 64 else 1
        topk_groups = 4 if n_groups == 8 else 1
        if n_groups > 1 and topk_groups * (shape.n_experts // n_groups) < shape.top_k:
            n_groups, topk_groups = 1, 1
        moe = MoEConfig(
            n_experts=shape.n_experts,
            top_k=shape.top_k,
            n_shared_experts=shape.n_shared,
            d_expert=d_expert,
            n_dense_layers=n_dense,
            score_func="sigmoid",
            n_groups=n_groups,
            topk_groups=topk_groups,
            route_scale=LING_ROUTE_SCALE,
        )
    try:
        return ModelConfig(
            vocab_size=c.vocab_size,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=c.head_dim,
            d_ffn=d_ffn,
            seq_len=c.seq_len,
            moe=moe,
            n_mtp_layers=c.n_mtp_layers,
        )
    except ValueError:
        return None


def make_candidate(cfg: ModelConfig) -> Candidate:
    return Candidate(
        model=cfg,
        flops_per_token=flops_per_token(cfg),
        counts=count_params(cfg),
        activation_ratio=activation_ratio(cfg),
        granularity=granularity(cfg),
    )


def family_shapes(c: Constraints) -> list[tuple[ExpertShape | None, float | None]]:
    """(expert shape, G) pairs for every requested A × G (A = 1 → one dense entry)."""
    out: list[tuple[ExpertShape | None, float | None]] = []
    for a in c.activation_ratio:
        if a >= 1.0:
            if (None, None) not in out:
                out.append((None, None))
            continue
        shape = expert_shape(a, c)
        if shape is None:
            continue
        for g in c.granularity:
            out.append((shape, g))
    return out


def enumerate_candidates(metric: str, target: float, c: Constraints, band: float = 0.0) -> list[Candidate]:
    """For each width × (expert shape, G), the depths whose ``metric`` brackets ``target``.

    Per width and shape: the two depths just below and just above the target (found by bisection over the
    allowed depths), widened on both sides to every depth whose metric is within a relative ``band`` of the
    target; an empty list means the constraints admit no architecture.
    """
    measure = METRICS[metric]
    out: list[Candidate] = []
    step = c.pp or 1
    for shape, g in family_shapes(c):
        for d_model in width_grid(c):
            lo = max(1, math.ceil(d_model / c.aspect[1]))
            hi = math.floor(d_model / c.aspect[0])
            depths = [n for n in range(lo, hi + 1) if n % step == 0]
            if not depths:
                continue
            cache: dict[int, Candidate | None] = {}

            def at(i: int, d_model: int = d_model, shape=shape, g=g, depths=depths, cache=cache):
                if i not in cache:
                    cfg = build_model(d_model, depths[i], shape, g, c)
                    cache[i] = make_candidate(cfg) if cfg is not None else None
                return cache[i]

            def value(i: int) -> float:
                cand = at(i)
                return measure(cand.model, cand.counts) if cand is not None else math.nan

            # bisection for the first depth whose metric >= target (invalid depths are skipped around)
            left, right = 0, len(depths) - 1
            if not math.isnan(value(right)) and value(right) < target:
                picks = [right]
            elif not math.isnan(value(left)) and value(left) >= target:
                picks = [left]
            else:
                while right - left > 1:
                    mid = (left + right) // 2
                    v = value(mid)
                    if math.isnan(v):
                        v = value(mid + 1) if mid + 1 <= right else math.nan
                    if math.isnan(v) or v >= target:
                        right = mid
                    else:
                        left = mid
                picks = [left, right]
            within = math.log1p(band)
            lo_i, hi_i = min(picks), max(picks)
            while lo_i > 0 and abs(math.log(max(value(lo_i - 1), 1e-300) / target)) <= within:
                lo_i -= 1
            while hi_i < len(depths) - 1 and abs(math.log(max(value(hi_i + 1), 1e-300) / target)) <= within:
                hi_i += 1
            picks = sorted(set(picks) | set(range(lo_i, hi_i + 1)))
            for i in picks:
                cand = at(i)
                if cand is not None:
                    out.append(cand)
    return out
