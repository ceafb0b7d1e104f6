"""Human-readable summary table and JSON of a Recommendation."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from trainer.config import ModelConfig

if TYPE_CHECKING:
    from windtunnel.recommend.recommend import Recommendation

GPU_HOURS_BASIS = "C = M·D: non-embedding training FLOPs (embeddings, output head and MTP excluded)"


def _si(x: float | None, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale * 0.9995:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def _interval(v: float | None, lo: float | None, hi: float | None, fmt: str = "{:.3g}") -> str:
    if v is None:
        return "n/a"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi:
        return fmt.format(v)
    return f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def architecture_line(arch: dict[str, Any]) -> str:
    base = (
        f"{arch['n_layers']} layers, d_model {arch['d_model']}, {arch['n_heads']} heads × {arch['head_dim']} "
        f"({arch['n_kv_heads']} kv), dense FFN {arch['d_ffn']}"
    )
    if "n_experts" not in arch:
        return base
    return (
        f"{base}; {arch['n_experts']} experts top-{arch['top_k']} + {arch['n_shared_experts']} shared, "
        f"d_expert {arch['d_expert']}, first {arch['n_dense_layers']} dense, "
        f"groups {arch['n_groups']}/top-{arch['topk_groups']}"
    )


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(quantity, value) rows of the summary table."""
    par = s["parallel"]
    loss = _interval(s["predicted_loss"], s["predicted_loss_lo"], s["predicted_loss_hi"], "{:.4f}")
    rows = [
        ("architecture", architecture_line(s["architecture"])),
        ("A / G", f"{s['activation_ratio']:.4f} / {s['granularity']:.3g}"),
        ("total params", _si(s["total_params"])),
        ("active params", f"{_si(s['active_params'])} ({_si(s['active_params_nonembed'])} non-embedding)"),
        ("M (FLOPs/token)", _si(s["flops_per_token"])),
    ]
    if s.get("m_opt") is not None:
        err = s.get("m_rel_error")
        rows.append(
            (
                "M_opt(C)",
                f"{_interval(s['m_opt'], s.get('m_opt_lo'), s.get('m_opt_hi'))}"
                + (f" (M is {err:+.1%})" if err is not None else ""),
            )
        )
    rows += [
        ("tokens D", f"{_si(s['tokens'])} ({s['tokens_per_param']:.1f} per active non-embedding param)"),
        ("compute C = M·D", f"{s['compute']:.3g} FLOPs"),
        ("peak LR", _interval(s["peak_lr"], s["peak_lr_lo"], s["peak_lr_hi"])),
        ("batch", f"{s['batch_sequences']:,} sequences × {s['seq_len']:,} = {_si(s['batch_tokens'])} tokens"),
        (
            "schedule (WSM)",
            f"{s['steps']:,} steps, warmup {s['warmup_steps']:,}, "
            f"checkpoint every {s['checkpoint_interval']:,}, "
            f"merge last {s['merge_window']}",
        ),
        ("predicted loss", f"{loss} ({s['loss_law']})" if s["loss_law"] != "n/a" else "n/a (no loss law)"),
        (
            "EL vs dense",
            _interval(s["efficiency_leverage"], s["efficiency_leverage_lo"], s["efficiency_leverage_hi"]),
        ),
        (
            "GPU-hours",
            f"{_si(s['gpu_hours'])} at MFU {s['mfu']:.0%} of {s['peak_tflops']:g} TFLOP/s "
            f"({s['days']:.1f} days on {s['gpus']:,} GPUs)",
        ),
        ("layout", f"tp {par['tp']} × pp {par['pp']} × dp {par['dp']}, ep {par['ep']}, {s['precision']}"),
        (
            "memory per GPU",
            f"{s['memory_per_gpu_gb']:.1f} GB of {s['gpu_memory_gb']:g} GB "
            + "("
            + ", ".join(f"{k} {v:.1f}" for k, v in s["memory_breakdown_gb"].items())
            + ")",
        ),
    ]
    return rows


def format_table(s: dict[str, Any]) -> str:
    rows = summary_rows(s)
    width = max(len(k) for k, _ in rows)
    lines = [f"recommendation {s['name']} (target: {s['target']})", ""]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    for note in s.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def to_json(s: dict[str, Any]) -> str:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(s), indent=2)


def _arch(m: ModelConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "n_heads": m.n_heads,
        "n_kv_heads": m.n_kv_heads,
        "head_dim": m.head_dim_,
        "d_ffn": m.d_ffn,
        "vocab_size": m.vocab_size,
        "seq_len": m.seq_len,
        "n_mtp_layers": m.n_mtp_layers,
    }
    if m.moe is not None:
        out.update(
            n_experts=m.moe.n_experts,
            top_k=m.moe.top_k,
            n_shared_experts=m.moe.n_shared_experts,
            d_expert=m.moe.d_expert,
            n_dense_layers=m.moe.n_dense_layers,
            n_groups=m.moe.n_groups,
            topk_groups=m.moe.topk_groups,
        )
    return out


def summary_dict(rec: Recommendation) -> dict[str, Any]:
    """The flat, JSON-ready summary of a Recommendation (the keys the CLI table and --json print)."""
    cand, lay, c, model = rec.candidate, rec.layout, rec.constraints, rec.run_config.model
    m_opt = rec.allocation.get("m_opt")
    el = rec.leverage
    return {
        "name": rec.run_config.name,
        "target": rec.target_kind,
        "family": model.family,
        "architecture": _arch(model),
        "activation_ratio": cand.activation_ratio,
        "granularity": cand.granularity,
        "total_params": cand.counts.total,
        "active_params": cand.counts.active,
        "total_params_nonembed": cand.counts.total_nonembed,
        "active_params_nonembed": cand.counts.active_nonembed,
        "flops_per_token": cand.flops_per_token,
        **rec.allocation,
        "m_rel_error": (cand.flops_per_token / m_opt - 1) if m_opt else None,
        "tokens": rec.tokens,
        "tokens_per_param": rec.tokens / cand.counts.active_nonembed,
        "compute": rec.compute,
        "peak_lr": rec.lr.value,
        "peak_lr_lo": rec.lr.lo,
        "peak_lr_hi": rec.lr.hi,
        "batch_tokens": lay.batch_sequences * model.seq_len,
        "batch_sequences": lay.batch_sequences,
        "batch_tokens_law": rec.batch_law.value,
        "batch_tokens_law_lo": rec.batch_law.lo,
        "batch_tokens_law_hi": rec.batch_law.hi,
        "seq_len": model.seq_len,
        **rec.schedule,
        **rec.loss,
        "efficiency_leverage": el.value if el else None,
        "efficiency_leverage_lo": el.lo if el else None,
        "efficiency_leverage_hi": el.hi if el else None,
        "gpus": c.gpus,
        "mfu": c.mfu,
        "peak_tflops": c.peak_tflops,
        "gpu_hours": rec.gpu_hours,
        "gpu_hours_basis": GPU_HOURS_BASIS,
        "days": rec.gpu_hours / c.gpus / 24.0,
        "parallel": {"tp": lay.tp, "pp": lay.pp, "ep": lay.ep, "dp": lay.dp},
        "memory_per_gpu_gb": lay.memory["total"],
        "memory_breakdown_gb": {k: lay.memory[k] for k in ("params", "grads", "optimizer", "activations")},
        "gpu_memory_gb": c.gpu_memory_gb,
        "precision": rec.run_config.precision.dtype,
        "notes": rec.notes,
    }
