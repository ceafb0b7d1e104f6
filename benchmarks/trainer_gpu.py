"""GPU training benchmark: tokens/s, MFU and peak memory of the real trainer, BF16 vs FP8 (issues #2, #6).

Each run goes through ``trainer.loop.train`` as a sweep trial would (same model, AdamW, autocast, clipping,
expert-bias update, the loop's own per-step timer that synchronises the GPU at the end of every step) and
reads the loop's ``report`` metrics: ``step_time_s`` and ``mfu`` (``trainer.hardware``: MFU = tokens/s x F /
peak, F = M + 6 d V, against the device's dense BF16 peak for bf16 *and* fp8 runs, Ling 2.0's convention;
the fp8 rows also give MFU against the FP8 peak). The first ``--warmup`` steps (allocation, Triton autotuning)
are dropped; tokens/s = batch tokens / median step time over the rest; p25-p75 of the step time is shown.
Peak memory = ``torch.cuda.max_memory_allocated`` over the whole run (model, AdamW, activations, final eval).

Tokens are synthetic (uniform random ids written as a ``data.source: tokens`` shard): throughput does not
depend on the text, and the GPU machine has no corpus. So losses stay near ln V; this measures speed only.

Models (Ling-style, docs/DESIGN.md "Ling 2.0 architecture": GQA with head dim 128, QK-Norm, partial RoPE,
SwiGLU, untied embeddings, vocab 32768, seq 2048, no MTP):
- ``dense-100M``: 12 layers, d_model 768, 6 heads (2 KV), d_ffn 1920: 122M total (72M non-embedding).
- ``moe-1B``: 18 layers (first dense, d_ffn 2560), d_model 1024, 8 heads (2 KV), 64 routed experts of width
  256 (top-4, 8 groups, top-4 groups, sigmoid, x2.5) + 1 shared: 0.99B total, 0.18B active (A = 7.7%, G = 8).

Also measured in the same run, as ceilings for reading the MFU: an 8192^3 BF16 ``torch.matmul`` and an
8192^3 per-tensor-scaled FP8 ``torch._scaled_mm`` (CUDA events, warm-up, median of 20).

    python benchmarks/trainer_gpu.py     # on a CUDA GPU: writes benchmarks/results/trainer_gpu.{json,md}
    python benchmarks/trainer_gpu.py --smoke --out /tmp/t.json --peak-tflops 1   # CPU code-path check

Without a GPU (and without --smoke) it exits with status 2 and a message; it never invents numbers.
The lent GPU machines' python3 has torch, triton, numpy, pyyaml and tokenizers but not pydantic: carry the
wheels of pydantic, pydantic-core, annotated-types and typing-inspection (/work/.library/device/README.md)
and run with ``PYTHONPATH=.:/tmp/site``. ``--models``, ``--precisions``, ``--batch``, ``--micro`` narrow or
resize a run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import RunConfig
from trainer.flops import count_params
from trainer.hardware import device_name_of, match_device, mfu_flops_per_token, resolve_peak_tflops
from trainer.loop import train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (the tests import this file too)
from timing import cpu_median_s, cuda_median_s  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VOCAB = 32768
COMMON = dict(vocab_size=VOCAB, head_dim=128, rope_fraction=0.5, qk_norm=True, init_std=0.006)
MODELS: dict[str, dict[str, Any]] = {
    "dense-100M": dict(COMMON, d_model=768, n_layers=12, n_heads=6, n_kv_heads=2, d_ffn=1920),
    "moe-1B": dict(
        COMMON, d_model=1024, n_layers=18, n_heads=8, n_kv_heads=2, d_ffn=2560,
        moe=dict(n_experts=64, top_k=4, n_shared_experts=1, d_expert=256, n_dense_layers=1, n_groups=8,
                 topk_groups=4, score_func="sigmoid", route_scale=2.5),
    ),
}  # fmt: skip
SMOKE_MODELS: dict[str, dict[str, Any]] = {
    "dense-tiny": dict(vocab_size=512, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, d_ffn=128),
    "moe-tiny": dict(
        vocab_size=512, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, d_ffn=128,
        moe=dict(n_experts=8, top_k=2, n_shared_experts=1, d_expert=32, n_dense_layers=1, n_groups=2,
                 topk_groups=1),
    ),
}  # fmt: skip
# sequences per optimizer step and per forward on one GPU (seq 2048: 32k and 64k tokens per step)
BATCH = {"dense-100M": (32, 16), "moe-1B": (16, 8), "dense-tiny": (4, 2), "moe-tiny": (4, 2)}


def write_synthetic_tokens(folder: Path, vocab: int, n_train: int, n_val: int, seed: int = 0) -> list[str]:
    """Uniform random token ids as ``data.source: tokens`` shards (uint16, sidecars with the split)."""
    rng = np.random.default_rng(seed)
    paths = []
    for split, n in (("train", n_train), ("val", n_val)):
        path = folder / f"{split}.bin"
        rng.integers(0, vocab, size=n, dtype=np.uint16).tofile(path)
        sidecar = {"dtype": "uint16", "vocab_size": vocab, "split": split}
        path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
        paths.append(str(path))
    return paths


def make_config(
    name: str, model: dict[str, Any], precision: str, args: argparse.Namespace, data_paths: list[str],
    cache_dir: str, device: str,
) -> RunConfig:  # fmt: skip
    batch, micro = BATCH[name]
    batch, micro = args.batch or batch, args.micro or micro
    steps = args.steps
    block = 128 if not args.smoke else 32
    return RunConfig.from_dict(
        {
            "name": f"bench-{name}-{precision}",
            "model": {**model, "seq_len": args.seq},
            "data": {"source": "tokens", "paths": data_paths, "cache_dir": cache_dir},
            "optim": {"lr": 3e-4, "batch_size": batch, "micro_batch_size": micro,
                      "tokens": steps * batch * args.seq},
            "schedule": {"kind": "constant", "warmup_fraction": 0.0},
            "precision": {"dtype": precision, "fp8_block": block},
            "parallel": {"peak_tflops": args.peak_tflops},
            "eval_interval": steps + 1,  # one evaluation, after the last step
            "eval_batches": 1,
            "log_interval": 1,
            "device": device,
        }
    )  # fmt: skip


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    q = np.quantile(np.asarray(values), [0.25, 0.5, 0.75])
    return float(q[0]), float(q[1]), float(q[2])


def run_one(cfg: RunConfig, model_name: str, warmup: int, device: str) -> dict[str, Any]:
    """Train ``cfg`` through ``trainer.loop.train``; summarise its reported per-step metrics."""
    counts = count_params(cfg.model)
    F = mfu_flops_per_token(cfg.model)
    row: dict[str, Any] = {
        "model": model_name,
        "precision": cfg.precision.dtype,
        "n_total": counts.total,
        "n_active": counts.active,
        "mfu_flops_per_token": F,
        "batch_tokens": cfg.batch_tokens,
        "micro_batch_size": cfg.optim.micro_batch_size,
        "seq_len": cfg.model.seq_len,
    }
    if device == "cuda":
        gc.collect()  # the previous run's model and optimizer
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seen: list[tuple[int, dict[str, float]]] = []
    t0 = time.perf_counter()
    try:
        res = train(cfg, report=lambda s, m: seen.append((s, dict(m))))
    except Exception as err:  # e.g. out of memory while building: recorded, the other runs go on
        row.update(status="failed", error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        return row
    row["wall_s"] = time.perf_counter() - t0
    row["status"], row["error"] = res.status, res.error
    if device == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        row["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
    timed = [m for s, m in seen if "step_time_s" in m and s > warmup]
    if res.status != "finished" or not timed:
        row.setdefault("error", "no timed steps")
        return row
    p25, med, p75 = _quantiles([m["step_time_s"] for m in timed])
    row.update(
        steps_timed=len(timed),
        step_time_s=med,
        step_time_p25_s=p25,
        step_time_p75_s=p75,
        tokens_per_s=cfg.batch_tokens / med,
        first_loss=seen[0][1].get("loss"),
        last_loss=timed[-1].get("loss"),
    )
    if all("mfu" in m for m in timed):
        row["mfu"] = statistics.median(m["mfu"] for m in timed)  # the loop's own metric
        row["peak_tflops"] = resolve_peak_tflops(cfg, device)
        row["achieved_tflops"] = row["tokens_per_s"] * F / 1e12
    return row


def _cuda_median_s(fn: Any, warmup: int = 5, reps: int = 20) -> float:
    return cuda_median_s(fn, warmup=warmup, reps=reps)


def _cpu_median_s(fn: Any, warmup: int = 1, reps: int = 3) -> float:
    return cpu_median_s(fn, warmup=warmup, reps=reps)


def measure_ceilings(n: int, device: str) -> dict[str, Any]:
    """TFLOP/s of an n^3 BF16 matmul and an n^3 per-tensor-scaled FP8 ``torch._scaled_mm`` (random data)."""
    timer = _cuda_median_s if device == "cuda" else _cpu_median_s
    gen = torch.Generator().manual_seed(0)
    a_MK = torch.randn(n, n, generator=gen).to(device, torch.bfloat16)
    b_NK = torch.randn(n, n, generator=gen).to(device, torch.bfloat16)
    flops = 2.0 * n**3
    out: dict[str, Any] = {"n": n, "errors": {}}
    try:
        out["bf16_matmul_tflops"] = flops / timer(lambda: a_MK @ b_NK.t()) / 1e12
    except Exception as err:
        out["errors"]["bf16_matmul"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    try:
        qa, qb = a_MK.to(torch.float8_e4m3fn), b_NK.to(torch.float8_e4m3fn)
        one = torch.ones((), device=device, dtype=torch.float32)
        out["fp8_scaled_mm_tflops"] = (
            flops
            / timer(lambda: torch._scaled_mm(qa, qb.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
            / 1e12
        )
    except Exception as err:
        out["errors"]["fp8_scaled_mm"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return out


def fp8_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: FP8 / BF16 tokens/s and peak memory (both finished, same model and batch)."""
    out = []
    by = {(r["model"], r["precision"]): r for r in rows if r.get("tokens_per_s")}
    for model in dict.fromkeys(r["model"] for r in rows):
        bf, f8 = by.get((model, "bf16")), by.get((model, "fp8"))
        if not (bf and f8):
            continue
        ratio = {"model": model, "tokens_per_s_fp8_over_bf16": f8["tokens_per_s"] / bf["tokens_per_s"]}
        if bf.get("peak_mem_gb") and f8.get("peak_mem_gb"):
            ratio["peak_mem_fp8_over_bf16"] = f8["peak_mem_gb"] / bf["peak_mem_gb"]
        out.append(ratio)
    return out


def _f(v: Any, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def table(rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    head = "| model | precision | params total / active | tokens/step | tokens/s (p25-p75 step s) | MFU vs BF16 peak | MFU vs FP8 peak | peak mem GB | status |"  # noqa: E501
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        spread = (
            f" ({_f(r.get('step_time_p25_s'), '.3f')}-{_f(r.get('step_time_p75_s'), '.3f')})"
            if r.get("tokens_per_s")
            else ""
        )
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['n_total'] / 1e6:.4g}M / {r['n_active'] / 1e6:.4g}M | "
            f"{r['batch_tokens']} | {_f(r.get('tokens_per_s'), ',.0f')}{spread} | "
            f"{_f(r.get('mfu'), '.1%')} | {_f(r.get('mfu_vs_fp8_peak'), '.1%')} | "
            f"{_f(r.get('peak_mem_gb'), '.2f')} | "
            f"{r['status']}{': ' + r['error'] if r.get('error') else ''} |"
        )
    lines += [""] if ratios else []
    for q in ratios:
        lines.append(
            f"- {q['model']}: FP8/BF16 tokens/s = {q['tokens_per_s_fp8_over_bf16']:.2f}x"
            + (f", peak memory = {q['peak_mem_fp8_over_bf16']:.2f}x" if "peak_mem_fp8_over_bf16" in q else "")
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (code-path check only)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    p.add_argument("--models", default=None, help="comma list (default: all of the mode's models)")
    p.add_argument("--precisions", default="bf16,fp8")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (30; smoke 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first steps (10; smoke 1)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (2048; smoke 32)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default per model)")
    p.add_argument("--micro", type=int, default=None, help="sequences per forward (default per model)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's BF16 peak")
    p.add_argument("--ceiling-n", type=int, default=None, help="matmul size of the ceilings (0: skip)")
    args = p.parse_args(argv)
    defaults = {"steps": 4, "warmup": 1, "seq": 32, "ceiling_n": 64} if args.smoke else {
        "steps": 30, "warmup": 10, "seq": 2048, "ceiling_n": 8192}  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup >= args.steps:
        p.error("--warmup must be smaller than --steps")
    models = SMOKE_MODELS if args.smoke else MODELS
    args.model_names = args.models.split(",") if args.models else list(models)
    unknown = [n for n in args.model_names if n not in models]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {list(models)}")
    return args


def run_all(args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    """Every (model, precision) run on one synthetic token shard; one row each."""
    models = SMOKE_MODELS if args.smoke else MODELS
    rows = []
    with tempfile.TemporaryDirectory(prefix="wt-bench-") as tmp:
        (vocab,) = {models[n]["vocab_size"] for n in args.model_names}  # one shard serves every model
        n_train = 64 * args.seq if args.smoke else 1 << 20  # windows are drawn at random: any size > seq
        paths = write_synthetic_tokens(Path(tmp), vocab, n_train, n_val=64 * args.seq)
        cache = str(Path(tmp) / "cache")
        for name in args.model_names:
            for precision in args.precisions.split(","):
                cfg = make_config(name, models[name], precision, args, paths, cache, device)
                row = run_one(cfg, name, args.warmup, device)
                rows.append(row)
                tps, mfu_, mem = row.get("tokens_per_s"), row.get("mfu"), row.get("peak_mem_gb")
                print(f"{name} {precision}: {row.get('status')} tokens/s={_f(tps, ',.0f')} "
                      f"mfu={_f(mfu_, '.3f')} mem={_f(mem, '.2f')} GB", flush=True)  # fmt: skip
    return rows


def write_results(out: Path, payload: dict[str, Any], text: str) -> Path:
    """``out`` (JSON) and a markdown section beside it (``.md``) for RESULTS.md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    c = payload["ceilings"]
    ceil = (
        f"Ceilings ({c['n']}^3, same run): BF16 matmul {_f(c.get('bf16_matmul_tflops'), '.4g')} TFLOP/s, "
        f"FP8 _scaled_mm {_f(c.get('fp8_scaled_mm_tflops'), '.4g')} TFLOP/s.\n\n"
        if c
        else ""
    )
    md = out.with_suffix(".md")
    md.write_text(
        "## GPU training throughput, MFU and memory: BF16 vs FP8 (`benchmarks/trainer_gpu.py`)\n\n"
        f"Device: {payload['device']}; torch {payload['torch']}; {payload['date']}. Synthetic tokens; "
        f"{payload['steps']} steps per run through trainer.loop.train, first {payload['warmup']} dropped, "
        "medians. MFU = tokens/s x (M + 6dV) / BF16 peak (trainer/hardware.py).\n\n"
        f"{text}\n\n{ceil}Command: `{payload['command']}`\n"
    )
    return md


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        if args.out is None:
            print("trainer_gpu --smoke needs --out: smoke timings are not results", file=sys.stderr)
            return 2
        torch.set_num_threads(1)
        device, device_desc = "cpu", "cpu smoke (tiny shapes; timings meaningless)"
    else:
        if not torch.cuda.is_available():
            print(
                "trainer_gpu: no CUDA GPU present - this benchmark measures GPU training, only on a GPU. "
                "Nothing was measured or written. (Use --smoke --out PATH to check code paths on the CPU.)",
                file=sys.stderr,
            )
            return 2
        device, device_desc = "cuda", device_name_of("cuda") or "cuda"
    entry = match_device(device_desc) if device == "cuda" else None

    ceilings = measure_ceilings(args.ceiling_n, device) if args.ceiling_n else None
    rows = run_all(args, device)
    ratios = fp8_ratios(rows)
    for r in rows:
        if r["precision"] == "fp8" and r.get("achieved_tflops") and entry is not None and entry.fp8:
            r["mfu_vs_fp8_peak"] = r["achieved_tflops"] / entry.fp8
    text = table(rows, ratios)
    print(f"device: {device_desc}")
    if ceilings:
        bf, f8 = ceilings.get("bf16_matmul_tflops"), ceilings.get("fp8_scaled_mm_tflops")
        print(f"ceilings ({ceilings['n']}^3): bf16 matmul {_f(bf, '.4g')} TFLOP/s, "
              f"fp8 _scaled_mm {_f(f8, '.4g')} TFLOP/s")  # fmt: skip
    print(text)
    payload = {
        "device": device_desc,
        "device_peak_entry": None
        if entry is None
        else {"name": entry.name, "bf16": entry.bf16, "fp8": entry.fp8},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "command": " ".join(["python benchmarks/trainer_gpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "synthetic_tokens": True,
        "steps": args.steps,
        "warmup": args.warmup,
        "ceilings": ceilings,
        "rows": rows,
        "fp8_over_bf16": ratios,
    }
    out = args.out or RESULTS / "trainer_gpu.json"
    md = write_results(out, payload, text)
    print(f"wrote {out} and {md}")
    return 0 if all(r.get("status") == "finished" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
