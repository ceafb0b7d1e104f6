"""Choose the parallel layout (tp, pp, ep, dp) and the global batch for a GPU count and memory.

world = tp·pp·dp (EP is carved out of the tp·dp ranks, as in ``trainer.flops.memory_per_gpu``); one
sequence per GPU per micro-step, so the global batch is rounded to a multiple of dp (the rest is gradient
accumulation). Memory comes from ``trainer.flops.memory_per_gpu``; a layout fits when its total is at most
0.9 × ``gpu_memory_gb`` (headroom for fragmentation and communication buffers). Among fitting layouts the
cheapest in communication wins: first one whose rounded batch is within 2 % of the law's, then smaller tp
(tensor parallel crosses every layer), smaller pp (pipeline bubbles), smaller ep (all-to-all fan-out).

A layout is offered only when Megatron-Core accepts it (``megatron_layout_errors``; the checks of
``TransformerConfig.__post_init__`` and ``parallel_state.initialize_model_parallel`` in megatron-core 0.16):
heads and KV heads (query groups: a multiple or a divisor of tp) by tp, the vocabulary by tp (so Megatron's
padding to a multiple of ``make-vocab-size-divisible-by``·tp adds no rows), the decoder layers by pp (the
``n_dense_layers`` dense layers are ordinary decoder layers of the first stage, ``--moe-layer-freq``; the MTP
layers sit after the last stage and are not counted), the experts by ep and tp·dp by ep (expert tp = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import ModelConfig, ParallelConfig, RunConfig
from trainer.flops import memory_per_gpu

TP_CHOICES = (1, 2, 4, 8)
PP_CHOICES = (1, 2, 4, 8, 16, 32)
EP_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    ep: int
    dp: int
    batch_sequences: int
    memory: dict

    headroom: float = 0.9

    @property
    def fits(self) -> bool:
        """Total ≤ ``headroom``·GPU memory (10 % kept for allocator fragmentation and NCCL buffers)."""
        return self.memory["total"] <= self.headroom * self.memory["gpu_memory_gb"]


def round_batch(sequences: float, dp: int) -> int:
    """Nearest positive multiple of dp (one sequence per data-parallel rank per micro-step)."""
    return max(dp, int(round(sequences / dp)) * dp)


def evaluate(run_cfg: RunConfig, tp: int, pp: int, ep: int, dp: int, sequences: float) -> Layout:
    batch = round_batch(sequences, dp)
    par = run_cfg.parallel.model_copy(update={"tp": tp, "pp": pp, "ep": ep, "dp": dp})
    optim = run_cfg.optim.model_copy(update={"batch_size": batch, "micro_batch_size": dp})
    cfg = run_cfg.model_copy(update={"parallel": par, "optim": optim})
    return Layout(tp, pp, ep, dp, batch, memory_per_gpu(cfg))


def megatron_layout_errors(model: ModelConfig, tp: int, pp: int, ep: int, dp: int) -> list[str]:
    """Every Megatron-Core divisibility rule that (tp, pp, ep, dp) breaks for ``model``; [] when it loads."""
    n_experts = model.moe.n_experts if model.moe is not None else 1
    rules = [
        (model.n_heads % tp == 0, f"tp ({tp}) must divide the heads ({model.n_heads})"),
        (
            model.n_kv_heads % tp == 0 or tp % model.n_kv_heads == 0,
            f"the KV heads ({model.n_kv_heads}) must be a multiple or divisor of tp ({tp})",
        ),
        (model.vocab_size % tp == 0, f"tp ({tp}) must divide the vocabulary ({model.vocab_size})"),
        (model.n_layers % pp == 0, f"pp ({pp}) must divide the decoder layers ({model.n_layers})"),
        (n_experts % ep == 0, f"ep ({ep}) must divide the experts ({n_experts})"),
        ((tp * dp) % ep == 0, f"ep ({ep}) must divide tp·dp ({tp * dp})"),
    ]
    return [why for ok, why in rules if not ok]


def vocab_divisor(vocab_size: int, tp: int) -> int:
    """``--make-vocab-size-divisible-by``: the largest power of two ≤ 128 with vocab % (it·tp) = 0.

    Megatron pads the vocabulary up to a multiple of this·tp; with it the padded size is the trainer's own.
    """
    d = 128
    while d > 1 and vocab_size % (d * tp):
        d //= 2
    return d


def layouts(model: ModelConfig, gpus: int, fixed: dict[str, int | None]) -> list[tuple[int, int, int, int]]:
    """All (tp, pp, ep, dp) with tp·pp·dp = gpus that Megatron accepts for the model matching ``fixed``."""
    out = []
    for tp in [fixed["tp"]] if fixed.get("tp") else TP_CHOICES:
        for pp in [fixed["pp"]] if fixed.get("pp") else PP_CHOICES:
            if gpus % (tp * pp):
                continue
            dp = gpus // (tp * pp)
            for ep in [fixed["ep"]] if fixed.get("ep") else EP_CHOICES:
                if not megatron_layout_errors(model, tp, pp, ep, dp):
                    out.append((tp, pp, ep, dp))
    return out


def choose_layout(
    run_cfg: RunConfig, gpus: int, gpu_memory_gb: float, sequences: float, fixed: dict[str, int | None]
) -> tuple[Layout | None, Layout | None]:
    """(best fitting layout or None, least-memory layout tried: the nearest alternative if none fits)."""
    run_cfg = run_cfg.model_copy(
        update={"parallel": run_cfg.parallel.model_copy(update={"gpu_memory_gb": gpu_memory_gb})}
    )
    best: tuple[tuple, Layout] | None = None
    least: Layout | None = None
    for tp, pp, ep, dp in layouts(run_cfg.model, gpus, fixed):
        lay = evaluate(run_cfg, tp, pp, ep, dp, sequences)
        if least is None or lay.memory["total"] < least.memory["total"]:
            least = lay
        if not lay.fits:
            continue
        err = abs(lay.batch_sequences / sequences - 1)
        key = (err > 0.02, tp, pp, ep)
        if best is None or key < best[0]:
            best = (key, lay)
    return (best[1] if best else None), least


def parallel_config(layout: Layout, gpu_memory_gb: float) -> ParallelConfig:
    return ParallelConfig(
        tp=layout.tp, pp=layout.pp, ep=layout.ep, dp=layout.dp, gpu_memory_gb=gpu_memory_gb, zero_stage=1
    )
