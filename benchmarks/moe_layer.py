"""MoE layer forward+backward on the CPU: our dropless grouped-GEMM dispatch vs Hugging Face DeepSeek-V3 MoE.

Hugging Face ``transformers``' ``DeepseekV3MoE`` has the same router as ours (sigmoid scores, selection bias,
group-limited top-k with top-2 group scores, normalised gates x routed scale, one shared expert), so with
copied weights both compute the same function: the script checks that first (max |difference|), then times
forward+backward of each implementation, interleaved round-robin so that load from other processes on the
machine hits all of them alike. Ours: ``torch._grouped_mm`` path and the loop-over-experts fallback. HF:
``eager`` (its default loop with one-hot masks) and ``grouped_mm`` experts implementations (``batched_mm``
is left out: it gathers a weight matrix per token-slot, 1 GB and more at these shapes).

    python benchmarks/moe_layer.py [--threads 1] [--reps 15] [--out benchmarks/results/moe_layer.json]

Writes ``benchmarks/results/moe_layer.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainer.config import ModelConfig, MoEConfig
from trainer.model import moe as moe_mod
from trainer.model.moe import MoE

SHAPES = {
    # CPU-sweep size: what the wind tunnel trains on this machine
    "sweep d128 E16 k2 F128 T4096": dict(d=128, E=16, K=2, F=128, G=4, g=2, B=32, T=128),
    # a wider layer with Ling's routing shape (top-8 of 64, 8 groups, top-4 groups)
    "wide d512 E64 k8 F128 T2048": dict(d=512, E=64, K=8, F=128, G=8, g=4, B=8, T=256),
}


def _ours(s: dict) -> MoE:
    cfg = ModelConfig(
        vocab_size=64,
        d_model=s["d"],
        n_layers=1,
        n_heads=4,
        n_kv_heads=4,
        d_ffn=64,
        seq_len=s["T"],
        moe=MoEConfig(
            n_experts=s["E"],
            top_k=s["K"],
            n_shared_experts=1,
            d_expert=s["F"],
            n_dense_layers=0,
            n_groups=s["G"],
            topk_groups=s["g"],
        ),
    )
    layer = MoE(cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.05)
        layer.router.expert_bias_E.normal_(0, 0.01)
    return layer


def _hf(s: dict, ours: MoE, impl: str) -> torch.nn.Module:
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    cfg = DeepseekV3Config(
        hidden_size=s["d"],
        moe_intermediate_size=s["F"],
        n_routed_experts=s["E"],
        num_experts_per_tok=s["K"],
        n_shared_experts=1,
        n_group=s["G"],
        topk_group=s["g"],
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        hidden_act="silu",
    )
    cfg._experts_implementation = impl
    hf = DeepseekV3MoE(cfg)
    with torch.no_grad():
        hf.gate.weight.copy_(ours.router.weight_ED)
        hf.gate.e_score_correction_bias.copy_(ours.router.expert_bias_E)
        gate_EFD, up_EFD = ours.w_gate_EDF.transpose(1, 2), ours.w_up_EDF.transpose(1, 2)
        hf.experts.gate_up_proj.copy_(torch.cat([gate_EFD, up_EFD], dim=1))
        hf.experts.down_proj.copy_(ours.w_down_EFD.transpose(1, 2))
        hf.shared_experts.gate_proj.weight.copy_(ours.shared.w_gate.weight)
        hf.shared_experts.up_proj.weight.copy_(ours.shared.w_up.weight)
        hf.shared_experts.down_proj.weight.copy_(ours.shared.w_down.weight)
    return hf


def _step(fn: Callable[[torch.Tensor], torch.Tensor], x_BTD: torch.Tensor) -> float:
    x = x_BTD.detach().requires_grad_()
    t0 = time.perf_counter()
    y = fn(x)
    y.square().mean().backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "moe_layer.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for shape_name, s in SHAPES.items():
        ours = _ours(s)
        x_BTD = torch.randn(s["B"], s["T"], s["d"])
        fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        fns["ours grouped_mm"] = lambda x, m=ours: m(x)[0]

        def ours_loop(x: torch.Tensor, m: MoE = ours) -> torch.Tensor:
            key = (x.device.type, x.dtype)
            moe_mod._GROUPED_MM_OK[key] = False
            try:
                return m(x)[0]
            finally:
                moe_mod._GROUPED_MM_OK.pop(key, None)

        fns["ours loop"] = ours_loop
        diffs = {}
        with torch.no_grad():
            ref = ours(x_BTD)[0]
            diffs["ours loop"] = float((ours_loop(x_BTD) - ref).abs().max())
        for impl in ("eager", "grouped_mm"):
            hf = _hf(s, ours, impl)
            with torch.no_grad():
                diffs[f"hf {impl}"] = float((hf(x_BTD) - ref).abs().max())
            fns[f"hf {impl}"] = hf
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():  # warm-up
            _step(fn, x_BTD)
        for _ in range(args.reps):
            for name, fn in fns.items():
                times[name].append(_step(fn, x_BTD))
        tokens = s["B"] * s["T"]
        base = statistics.median(times["ours grouped_mm"])
        print(f"\n{shape_name}  ({tokens} tokens, fwd+bwd, {args.threads} thread(s), median of {args.reps})")
        print(f"{'implementation':18s} {'ms':>9s} {'tokens/s':>10s} {'time / ours':>12s} {'max|diff|':>10s}")
        for name, ts in times.items():
            med = statistics.median(ts)
            diff = diffs.get(name, 0.0)
            print(f"{name:18s} {med * 1e3:9.2f} {tokens / med:10.0f} {med / base:12.2f} {diff:10.2e}")
            results.append(
                dict(
                    shape=shape_name,
                    impl=name,
                    median_s=med,
                    tokens_per_s=tokens / med,
                    ratio_to_ours=med / base,
                    max_abs_diff_vs_ours=diff,
                    reps=args.reps,
                    threads=args.threads,
                )
            )
        print(flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(torch=torch.__version__, results=results)
    try:
        import transformers

        payload["transformers"] = transformers.__version__
    except ImportError:
        pass
    out.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {out}", flush=True)


if __name__ == "__main__":
    main()
