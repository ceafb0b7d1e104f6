"""CPU training throughput: our MoE trainer step vs Hugging Face transformers' GLM-4.5 MoE at the same shape.

Both models: 8 layers, d_model 256, 4 heads (2 KV heads, head dim 64), QK-Norm, partial RoPE (half of each
head), all layers MoE with 32 routed experts (top-4, sigmoid router, normalised top-k gates ×2.5) + 1 shared
expert of width d_expert, untied embeddings, vocab 4096, seq 256, fp32. ``Glm4MoeForCausalLM`` is the
transformers class closest to Ling 2.0 / DeepSeek-V3 MoE with ordinary GQA attention (DeepseekV3 uses MLA);
its config is built in code, weights random, nothing downloaded. HF runs as it ships (no compile).

One timed step = zero_grad, forward with loss, backward, global-norm clip 1.0, AdamW step (and, for ours,
the aux-loss-free expert-bias update the trainer does after each step). Steps of the models alternate
(ours, HF, ours, HF, ...: one round = one step of each) so that load from other processes hits both alike.
Reported per model: median step wall and process-CPU time over the timed rounds with their 25-75 % range,
and the ratio HF ÷ ours as the median of the per-round ratios (paired, so slow phases of a shared machine
cancel). tokens/s = batch·seq / median step time.

    python benchmarks/trainer_cpu.py [--batch 4] [--steps 15] [--warmup 2] [--threads 1] [--hf-experts all]
        [--baseline GIT_REF]
"""

from __future__ import annotations

import argparse
import json
import os
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


def _quartiles(xs: list[float]) -> list[float]:
    """[25th, 75th] percentile (inclusive method; the values themselves for fewer than 2)."""
    if len(xs) < 2:
        return [xs[0], xs[0]] if xs else [float("nan")] * 2
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return [q[0], q[2]]


def _paired_ratio(this: list[float], ours: list[float]) -> float:
    """Median over rounds of this_i / ours_i (the two steps of round i ran back to back)."""
    return statistics.median(a / b for a, b in zip(this, ours, strict=True))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def baseline_builder(ref: str) -> Any:
    """``build_model`` of ``trainer/model`` as it was at git commit ``ref`` (read with ``git show``, imported
    from a temporary package), to time the current model against an earlier version in the same run."""
    import importlib
    import shutil
    import subprocess
    import sys
    import tempfile

    root = Path(__file__).resolve().parents[1]
    pkg = "_trainer_model_" + "".join(c if c.isalnum() else "_" for c in ref)
    tmp = Path(tempfile.mkdtemp(prefix="trainer_cpu_baseline_"))
    (tmp / pkg).mkdir()
    for name in ("__init__", "layers", "moe", "transformer"):
        src = subprocess.run(
            ["git", "show", f"{ref}:trainer/model/{name}.py"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (tmp / pkg / f"{name}.py").write_text(src.replace("trainer.model", pkg))
    sys.path.insert(0, str(tmp))
    try:
        return importlib.import_module(pkg).build_model
    finally:  # the modules are loaded: the copied sources are no longer needed
        sys.path.remove(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


def run(
    batch: int,
    steps: int,
    warmup: int,
    threads: list[int],
    hf_impls: list[str | None],
    baseline: str | None = None,
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
        if baseline is not None:  # same initial weights as ours
            models[f"ours@{baseline}"] = baseline_builder(baseline)(run_cfg.model)
            models[f"ours@{baseline}"].load_state_dict(models["ours"].state_dict())
        assert n_params(models["ours"]) == count_params(run_cfg.model).total
        for impl in hf_impls:
            models[f"hf[{impl or 'default'}]"] = hf_model(seq, impl)
        fns = {
            name: make_step(m, "hf" if name.startswith("hf") else "ours", x_BT, y_BT, run_cfg)
            for name, m in models.items()
        }
        wall: dict[str, list[float]] = {name: [] for name in fns}
        cpu: dict[str, list[float]] = {name: [] for name in fns}
        losses: dict[str, list[float]] = {name: [] for name in fns}
        for i in range(warmup + steps):
            for name, fn in fns.items():
                c0, t0 = time.process_time(), time.perf_counter()
                losses[name].append(fn())
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if i >= warmup:
                    wall[name].append(dt)
                    cpu[name].append(dc)
        med = {name: statistics.median(ts) for name, ts in wall.items()}
        med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
        load_avg = list(os.getloadavg())
        for name, m in models.items():
            is_hf = name.startswith("hf")
            impl = getattr(m.config, "_experts_implementation_internal", None) if is_hf else None
            rows.append(
                {
                    "threads": n_threads,
                    "model": name,
                    "experts_impl": impl or (None if is_hf else "grouped_mm"),
                    "params": n_params(m),
                    "median_step_s": med[name],
                    "median_cpu_s": med_cpu[name],
                    "tokens_per_s": batch * seq / med[name],
                    "step_s_iqr": _quartiles(wall[name]),
                    "cpu_s_iqr": _quartiles(cpu[name]),
                    "speedup_ours_vs_this": _paired_ratio(wall[name], wall["ours"]),
                    "cpu_ratio_this_over_ours": _paired_ratio(cpu[name], cpu["ours"]),
                    "cpu_ratio_iqr": _quartiles([a / b for a, b in zip(cpu[name], cpu["ours"], strict=True)]),
                    "step_times_s": wall[name],
                    "step_cpu_s": cpu[name],
                    "load_avg_1_5_15": load_avg,
                    "losses": losses[name],
                    # same init and data as ours (baseline rows): equal losses up to fp32 rounding
                    "max_abs_loss_diff_vs_ours": (
                        None
                        if is_hf
                        else max(abs(a - b) for a, b in zip(losses[name], losses["ours"], strict=True))
                    ),
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
        "load_avg_at_end": list(os.getloadavg()),
        "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=15, help="timed rounds (one step of each model per round)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", default="1", help="comma list, e.g. 1,2")
    p.add_argument(
        "--hf-experts",
        default="default",
        help="comma list of HF experts_implementation; 'all' = default,eager",
    )
    p.add_argument(
        "--baseline", default=None, metavar="GIT_REF", help="also time trainer/model as of this commit"
    )
    p.add_argument("--out", default=str(RESULTS / "trainer_cpu.json"))
    args = p.parse_args()
    impls_raw = "default,eager" if args.hf_experts == "all" else args.hf_experts
    impls: list[str | None] = [None if s == "default" else s for s in impls_raw.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    res = run(args.batch, args.steps, args.warmup, threads, impls, args.baseline)
    head = ["threads", "model", "experts", "params", "step s (IQR)", "cpu s (IQR)", "tok/s", "HF÷ours wall"]
    print(" | ".join([*head, "HF÷ours cpu (IQR)"]))
    for r in res["rows"]:
        sq, cq, rq = r["step_s_iqr"], r["cpu_s_iqr"], r["cpu_ratio_iqr"]
        print(
            f"{r['threads']:>7} | {r['model']:<12} | {str(r['experts_impl']):<10} | {r['params']:,} | "
            f"{r['median_step_s']:.3f} ({sq[0]:.3f}-{sq[1]:.3f}) | {r['median_cpu_s']:.3f} "
            f"({cq[0]:.3f}-{cq[1]:.3f}) | {r['tokens_per_s']:.0f} | {r['speedup_ours_vs_this']:.2f} | "
            f"{r['cpu_ratio_this_over_ours']:.2f} ({rq[0]:.2f}-{rq[1]:.2f})"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
