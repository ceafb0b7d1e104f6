"""``windtunnel recommend``: a compute-optimal run config from a law set, ready for ``python -m trainer``.

    windtunnel recommend --laws ling|laws.json (--compute C | --total-params P | --model M.yaml --tokens D)
        [constraint flags] [--out CFG.yaml] [--json] [--scale-down F]

Writes CFG.yaml (a RunConfig), CFG.hf_config.json (BailingMoeV2 field names) and CFG.megatron.args beside it;
with --scale-down F also CFG.scaled.yaml, a CPU-sized copy keeping A, G, head and dense-layer ratios.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from windtunnel.cli import UserError
from windtunnel.recommend.export import write_exports
from windtunnel.recommend.policy import recommend_with_policy
from windtunnel.recommend.recommend import RecommendError
from windtunnel.recommend.scale import scale_down
from windtunnel.recommend.summary import format_table, to_json
from windtunnel.recommend.targets import Constraints, Target, parse_count


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(eval_fraction(x) for x in text.split(","))
    except (ValueError, ZeroDivisionError) as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}: {err}") from None


def eval_fraction(text: str) -> float:
    """``0.035``, ``9/257`` or ``3.5%``."""
    t = text.strip()
    if t.endswith("%"):
        return float(t[:-1]) / 100
    if "/" in t:
        num, den = t.split("/", 1)
        return float(num) / float(den)
    return float(t)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO:HI, got {text!r}") from None
    return lo, hi


def _count(text: str) -> float:
    try:
        return parse_count(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--laws", required=True, help="'ling' (published Ling coefficients) or a laws.json path"
    )
    tgt = parser.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--compute", type=_count, help="compute budget C = M·D in FLOPs, e.g. 6.4e24")
    tgt.add_argument("--total-params", type=_count, help="total parameters, e.g. 1T, 200B, 1e12")
    tgt.add_argument("--model", type=Path, help="a fixed architecture: a RunConfig YAML (use with --tokens)")
    parser.add_argument("--tokens", type=_count, help="training tokens D for --model, e.g. 2e13 or 20T")
    a = parser.add_argument_group("architecture constraints (defaults: Ling 2.0)")
    a.add_argument(
        "--activation-ratio", type=_floats, help="A, or a comma list to choose from (9/257, 3.5%%)"
    )
    a.add_argument("--granularity", type=_floats, help="G = 2·d_model/d_expert, or a comma list (default 8)")
    a.add_argument("--head-dim", type=int, default=128)
    a.add_argument("--kv-heads", type=int, help="GQA kv heads (default max(min(4, heads), heads/8))")
    a.add_argument("--experts", type=int, help="routed expert count E (default: closest to 256 that gives A)")
    a.add_argument("--max-experts", type=int, default=512)
    a.add_argument("--shared-experts", type=_ints, default=(1,), help="allowed shared-expert counts")
    a.add_argument("--dense-layers", type=int, help="first-k dense layers (default max(1, layers // 20))")
    a.add_argument("--aspect", type=_range, default=(64.0, 160.0), help="d_model/n_layers range LO:HI")
    a.add_argument("--vocab", type=int, default=157184)
    a.add_argument("--seq-len", type=int, default=4096)
    a.add_argument("--mtp-layers", type=int, default=1)
    a.add_argument("--precision", choices=["fp8", "bf16", "fp32"], default="fp8")
    a.add_argument("--m-tolerance", type=float, default=0.05, help="relative M band ranked by EL")
    h = parser.add_argument_group("hardware and layout")
    h.add_argument("--gpus", type=int, default=1024)
    h.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU")
    h.add_argument("--mfu", type=float, default=0.4)
    h.add_argument("--peak-tflops", type=float, default=989.0, help="per GPU (H100: bf16 989, fp8 1979)")
    h.add_argument("--tp", type=int)
    h.add_argument("--pp", type=int, help="pipeline stages (layers must divide)")
    h.add_argument("--ep", type=int, help="expert-parallel size (experts must divide)")
    o = parser.add_argument_group("output")
    o.add_argument("--out", type=Path, help="write CFG.yaml, CFG.hf_config.json, CFG.megatron.args")
    o.add_argument("--json", action="store_true", help="print the summary as JSON")
    o.add_argument(
        "--scale-down", type=float, help="also write CFG.scaled.yaml shrunk by this factor (CPU run)"
    )
    o.add_argument("--scale-steps", type=int, default=4, help="optimizer steps of the scaled-down run")


def constraints_from_args(args: argparse.Namespace) -> Constraints:
    kw = {
        "head_dim": args.head_dim,
        "n_kv_heads": args.kv_heads,
        "n_experts": args.experts,
        "max_experts": args.max_experts,
        "n_shared_experts": args.shared_experts,
        "n_dense_layers": args.dense_layers,
        "aspect": args.aspect,
        "vocab_size": args.vocab,
        "seq_len": args.seq_len,
        "n_mtp_layers": args.mtp_layers,
        "precision": args.precision,
        "m_tolerance": args.m_tolerance,
        "tp": args.tp,
        "pp": args.pp,
        "ep": args.ep,
        "gpus": args.gpus,
        "gpu_memory_gb": args.gpu_memory,
        "mfu": args.mfu,
        "peak_tflops": args.peak_tflops,
    }
    if args.activation_ratio:
        kw["activation_ratio"] = args.activation_ratio
    if args.granularity:
        kw["granularity"] = args.granularity
    try:
        return Constraints(**kw)
    except ValueError as err:
        raise UserError(str(err)) from None


def main(args: argparse.Namespace) -> int:
    from windtunnel.laws import load_laws

    try:
        target = Target(
            compute=args.compute, total_params=args.total_params, model_path=args.model, tokens=args.tokens
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    constraints = constraints_from_args(args)
    try:
        lawset = load_laws(args.laws)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot load laws {args.laws!r}: {err}") from None
    try:
        result = recommend_with_policy(lawset, target, constraints)
    except RecommendError as err:
        raise UserError(str(err)) from None
    rec = result.recommendation
    summary = result.summary
    summary["laws"] = str(args.laws)
    if args.out is not None:
        paths = write_exports(rec.run_config, args.out)
        summary["files"] = {k: str(v) for k, v in paths.items()}
    if args.scale_down is not None:
        try:
            small = scale_down(rec.run_config, args.scale_down, steps=args.scale_steps)
        except ValueError as err:
            raise UserError(str(err)) from None
        from trainer.flops import count_params

        info = {
            "factor": args.scale_down,
            "name": small.name,
            "steps": small.steps,
            "total_params": count_params(small.model).total,
            "architecture": {
                k: getattr(small.model, k)
                for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "seq_len")
            },
        }
        if args.out is not None:
            scaled_path = args.out.with_suffix("").with_name(args.out.stem + ".scaled.yaml")
            small.to_yaml(scaled_path)
            info["config"] = str(scaled_path)
        summary["scaled_down"] = info
    if args.json:
        print(to_json(summary))
    else:
        print(format_table(summary))
        for kind, path in summary.get("files", {}).items():
            print(f"wrote {kind}: {path}")
        if "scaled_down" in summary:
            sd = summary["scaled_down"]
            arch = ", ".join(f"{k} {v}" for k, v in sd["architecture"].items())
            print(
                f"scaled down ×{sd['factor']:g}: {arch}, {sd['total_params']:,} params, {sd['steps']} steps"
            )
            if "config" in sd:
                print(f"wrote scaled-down config: {sd['config']}")
            else:
                print("(give --out to write the scaled-down config)")
    sys.stdout.flush()
    return 0
