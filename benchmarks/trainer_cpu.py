"""CPU training throughput: our MoE trainer step vs Hugging Face transformers' GLM-4.5 MoE at the same shape.

Both models: 8 layers, d_model 256, 4 heads (2 KV heads, head dim 64), QK-Norm, partial RoPE (half of each
head), all layers MoE with 32 routed experts (top-4, sigmoid router, normalised top-k gates ×2.5) + 1 shared
expert of width d_expert, untied embeddings, vocab 4096, seq 256, fp32. ``Glm4MoeForCausalLM`` is the
transformers class closest to Ling 2.0 / DeepSeek-V3 MoE with ordinary GQA attention (DeepseekV3 uses MLA);
its config is built in code, weights random, nothing downloaded.

One timed step = zero_grad, forward with loss, backward, global-norm clip 1.0, AdamW step (and, for ours,
the aux-loss-free expert-bias update the trainer does after each step). Steps of the two models alternate
(ours, HF, ours, HF, ...) so that load from other processes hits both alike; we report the median of the
timed steps after warm-up, at 1 and 2 threads. tokens/s = batch·seq / median step time.

    python benchmarks/trainer_cpu.py [--batch 4] [--steps 7] [--warmup 2] [--threads 1,2] [--hf-experts all]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from trainer.config import ModelConfig, MoEConfig, RunConfig
from trainer.flops import count_params
from trainer.loop import build_optimizer
from trainer.model import build_model

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = dict(
    n_layers=8, d_model=256, n_heads=4, n_kv_heads=2, head_dim=64, n_experts=32, top_k=4, n_shared=1,
    d_expert=128, vocab=4096, seq=256,
)  # fmt: skip


def ours_config(seq: int) -> RunConfig:
    s = SHAPE
    cfg = ModelConfig(
        vocab_size=s["vocab"], d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"],
        n_kv_heads=s["n_kv_heads"], head_dim=s["head_dim"], d_ffn=4 * s["d_model"], seq_len=seq,
        rope_fraction=0.5, qk_norm=True, init_std=0.02,
        moe=MoEConfig(
            n_experts=s["n_experts"], top_k=s["top_k"], n_shared_experts=s["n_shared"],
            d_expert=s["d_expert"], n_dense_layers=0, score_func="sigmoid", route_scale=2.5, norm_topk=True,
        ),
    )  # fmt: skip
    return RunConfig(model=cfg, optim={"lr": 1e-4, "weight_decay": 0.1, "grad_clip": 1.0})


def hf_model(seq: int, experts_impl: str | None) -> torch.nn.Module:
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    s = SHAPE
    kwargs: dict[str, Any] = {}
    if experts_impl is not None:
        kwargs["experts_implementation"] = experts_impl
    cfg = Glm4MoeConfig(
        vocab_size=s["vocab"], hidden_size=s["d_model"], intermediate_size=4 * s["d_model"],
        num_hidden_layers=s["n_layers"], num_attention_heads=s["n_heads"],
        num_key_value_heads=s["n_kv_heads"],
        head_dim=s["head_dim"], max_position_embeddings=seq, moe_intermediate_size=s["d_expert"],
        num_experts_per_tok=s["top_k"], n_shared_experts=s["n_shared"], n_routed_experts=s["n_experts"],
        routed_scaling_factor=2.5, n_group=1, topk_group=1, first_k_dense_replace=0, norm_topk_prob=True,
        use_qk_norm=True, partial_rotary_factor=0.5, tie_word_embeddings=False, num_mtp_layers=0,
        use_cache=False, attn_implementation="sdpa", **kwargs,
    )  # fmt: skip
    model = Glm4MoeForCausalLM(cfg)
    return model


def make_step(
    model: torch.nn.Module,
    kind: str,
    x_BT: torch.Tensor,
    y_BT: torch.Tensor,
    run_cfg: RunConfig | None = None,
) -> Any:
    """One training step. Ours: the trainer's own optimizer (``trainer.loop.build_optimizer``: fused AdamW,
    no decay on norms/embeddings). HF: ``torch.optim.AdamW(fused=True)``, the HF Trainer default
    (``adamw_torch_fused`` for torch>=2.8).
    """
    if kind == "ours":
        assert run_cfg is not None
        opt = build_optimizer(model, run_cfg)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    model.train()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        if kind == "ours":
            loss = model(x_BT, y_BT).loss
        else:
            loss = model(input_ids=x_BT, labels=x_BT).loss  # HF shifts labels inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if kind == "ours":
            model.update_expert_bias()
        return float(loss.detach())

    return step


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(
    batch: int, steps: int, warmup: int, threads: list[int], hf_impls: list[str | None]
) -> dict[str, Any]:
    seq = SHAPE["seq"]
    g = torch.Generator().manual_seed(0)
    x_BT = torch.randint(0, SHAPE["vocab"], (batch, seq), generator=g)
    y_BT = torch.roll(x_BT, -1, dims=1)
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        torch.manual_seed(0)
        run_cfg = ours_config(seq)
        models: dict[str, torch.nn.Module] = {"ours": build_model(run_cfg.model)}
        assert n_params(models["ours"]) == count_params(run_cfg.model).total
        for impl in hf_impls:
            models[f"hf[{impl or 'default'}]"] = hf_model(seq, impl)
        fns = {
            name: make_step(m, "ours" if name == "ours" else "hf", x_BT, y_BT, run_cfg)
            for name, m in models.items()
        }
        wall: dict[str, list[float]] = {name: [] for name in fns}
        cpu: dict[str, list[float]] = {name: [] for name in fns}
        for i in range(warmup + steps):
            for name, fn in fns.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if i >= warmup:
                    wall[name].append(dt)
                    cpu[name].append(dc)
        med = {name: statistics.median(ts) for name, ts in wall.items()}
        med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
        for name, m in models.items():
            impl = getattr(m.config, "_experts_implementation_internal", None) if name != "ours" else None
            rows.append(
                {
                    "threads": n_threads,
                    "model": name,
                    "experts_impl": impl or ("grouped_mm" if name == "ours" else None),
                    "params": n_params(m),
                    "median_step_s": med[name],
                    "median_cpu_s": med_cpu[name],
                    "tokens_per_s": batch * seq / med[name],
                    "speedup_ours_vs_this": med[name] / med["ours"],
                    "cpu_ratio_this_over_ours": med_cpu[name] / med_cpu["ours"],
                    "step_times_s": wall[name],
                    "step_cpu_s": cpu[name],
                }
            )
            print(
                f"# {n_threads} threads {name}: median {med[name]:.3f} s/step, cpu {med_cpu[name]:.3f} s",
                flush=True,
            )
        del models, fns
    return {
        "benchmark": "trainer_cpu",
        "shape": SHAPE,
        "batch": batch,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "load_avg_at_end": list(__import__("os").getloadavg()),
        "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", default="1,2")
    p.add_argument(
        "--hf-experts",
        default="default",
        help="comma list of HF experts_implementation; 'all' = default,eager",
    )
    p.add_argument("--out", default=str(RESULTS / "trainer_cpu.json"))
    args = p.parse_args()
    impls_raw = "default,eager" if args.hf_experts == "all" else args.hf_experts
    impls: list[str | None] = [None if s == "default" else s for s in impls_raw.split(",")]
    res = run(args.batch, args.steps, args.warmup, [int(t) for t in args.threads.split(",")], impls)
    head = [
        "threads",
        "model",
        "experts",
        "params",
        "step s",
        "cpu s",
        "tok/s",
        "ours x (wall)",
        "ours x (cpu)",
    ]
    print(" | ".join(head))
    for r in res["rows"]:
        print(
            f"{r['threads']:>7} | {r['model']:<12} | {str(r['experts_impl']):<10} | {r['params']:,} | "
            f"{r['median_step_s']:.3f} | {r['median_cpu_s']:.3f} | {r['tokens_per_s']:.0f} | "
            f"{r['speedup_ours_vs_this']:.2f} | {r['cpu_ratio_this_over_ours']:.2f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
