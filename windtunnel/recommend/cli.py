"""``windtunnel recommend``: a compute-optimal run config from a law set, ready for ``python -m trainer``.

    windtunnel recommend --laws ling|laws.json (--compute C | --total-params P | --model M.yaml --tokens D)
        [constraint flags] [--out CFG.yaml] [--json] [--scale-down F]

Writes CFG.yaml (a RunConfig), the Hugging Face folder CFG.hf/ (config.json of a BailingMoeV2 model and
its config class) and CFG.megatron.args (one shell-quoted argument per line) beside it;
with --scale-down F also CFG.scaled.yaml, a CPU-sized copy keeping A, G, head and dense-layer ratios.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from windtunnel.errors import RecommendError, UserError
from windtunnel.recommend.export import write_exports
from windtunnel.recommend.laws_check import load_checked_laws
from windtunnel.recommend.policy import recommend_with_policy
from windtunnel.recommend.scale import scale_down
from windtunnel.recommend.summary import format_table, to_json
from windtunnel.recommend.targets import Constraints, Target, parse_count

# accepted ranges of the targets: the laws are fitted at 1e17-1e21 FLOPs and published up to ~1e25; beyond
# these limits no architecture in the search space exists (or the numbers overflow)
COMPUTE_RANGE = (1e15, 1e30)
PARAMS_RANGE = (1e6, 1e16)
TOKENS_RANGE = (1e6, 1e17)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(eval_fraction(x) for x in text.split(","))
    except (ValueError, ZeroDivisionError) as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}: {err}") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive finite numbers, got {text!r}")
    return values


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
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO:HI, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI (finite), got {text!r}")
    return lo, hi


def _count(lo: float, hi: float, unit: str) -> Callable[[str], float]:
    """A count with K/M/B/T/P suffixes, finite, positive and within [lo, hi]."""

    def parse(text: str) -> float:
        try:
            value = parse_count(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"{value:.3g} is outside the supported {lo:.0e}..{hi:.0e} {unit}"
            )
        return value

    return parse


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value

    return parse


def _float_in(lo: float, hi: float, lo_open: bool = True) -> Callable[[str], float]:
    """A finite float in (lo, hi] (or [lo, hi] when ``lo_open`` is False)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value > lo if lo_open else value >= lo
        if not (math.isfinite(value) and above and value <= hi):
            bracket = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(
                f"must be a finite number in {bracket}{lo:g}, {hi:g}], got {text}"
            )
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--laws", required=True, help="'ling' (published Ling coefficients) or a laws.json path"
    )
    tgt = parser.add_mutually_exclusive_group(required=True)
    tgt.add_argument(
        "--compute", type=_count(*COMPUTE_RANGE, "FLOPs"), help="compute budget C = M·D in FLOPs, e.g. 6.4e24"
    )
    tgt.add_argument(
        "--total-params", type=_count(*PARAMS_RANGE, "parameters"), help="total parameters, e.g. 1T, 200B"
    )
    tgt.add_argument("--model", type=Path, help="a fixed architecture: a RunConfig YAML (use with --tokens)")
    parser.add_argument(
        "--tokens", type=_count(*TOKENS_RANGE, "tokens"), help="training tokens D for --model, e.g. 20T"
    )
    a = parser.add_argument_group("architecture constraints (defaults: Ling 2.0)")
    a.add_argument(
        "--activation-ratio", type=_floats, help="A, or a comma list to choose from (9/257, 3.5%%)"
    )
    a.add_argument("--granularity", type=_floats, help="G = 2·d_model/d_expert, or a comma list (Ling: 8)")
    a.add_argument("--head-dim", type=_int_at_least(8), default=128, help="attention head dimension")
    a.add_argument(
        "--kv-heads", type=_int_at_least(1), help="GQA KV heads (free: max(min(4, heads), heads/8))"
    )
    a.add_argument("--experts", type=_int_at_least(1), help="routed expert count E (free: closest to 256)")
    a.add_argument("--max-experts", type=_int_at_least(1), default=512, help="most routed experts allowed")
    a.add_argument("--shared-experts", type=_ints, default=(1,), help="allowed shared-expert counts")
    a.add_argument(
        "--dense-layers", type=_int_at_least(0), help="first-k dense layers (free: max(1, layers // 20))"
    )
    a.add_argument("--aspect", type=_range, default=(64.0, 160.0), help="d_model/n_layers range LO:HI")
    a.add_argument("--vocab", type=_int_at_least(2), default=157184, help="vocabulary size")
    a.add_argument("--seq-len", type=_int_at_least(1), default=4096, help="training sequence length")
    a.add_argument("--mtp-layers", type=_int_at_least(0), default=1, help="multi-token-prediction layers")
    a.add_argument("--precision", choices=["fp8", "bf16", "fp32"], default="fp8", help="training precision")
    a.add_argument(
        "--m-tolerance", type=_float_in(0, 10), default=0.05, help="relative band around M_opt ranked by EL"
    )
    h = parser.add_argument_group("hardware and layout")
    h.add_argument("--gpus", type=_int_at_least(1), default=1024, help="GPUs of the target run")
    h.add_argument("--gpu-memory", type=_float_in(0, 1e5), default=80.0, help="GB per GPU")
    h.add_argument("--mfu", type=_float_in(0, 1), default=0.4, help="assumed model FLOPs utilisation")
    h.add_argument(
        "--peak-tflops", type=_float_in(0, 1e6), default=989.0, help="per GPU (H100: bf16 989, fp8 1979)"
    )
    h.add_argument("--tp", type=_int_at_least(1), help="tensor-parallel size (free: chosen)")
    h.add_argument("--pp", type=_int_at_least(1), help="pipeline stages (free: chosen; layers must divide)")
    h.add_argument(
        "--ep", type=_int_at_least(1), help="expert-parallel size (free: chosen; experts must divide)"
    )
    o = parser.add_argument_group("output")
    o.add_argument(
        "--out", type=Path, help="write CFG.yaml, the Hugging Face folder CFG.hf/ and CFG.megatron.args"
    )
    o.add_argument("--json", action="store_true", help="print the summary as JSON")
    o.add_argument(
        "--scale-down",
        type=_float_in(1, 1e12, lo_open=False),
        help="also write CFG.scaled.yaml shrunk by this factor",
    )
    o.add_argument(
        "--scale-steps", type=_int_at_least(1), default=4, help="optimizer steps of the scaled-down run"
    )


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
    try:
        target = Target(
            compute=args.compute, total_params=args.total_params, model_path=args.model, tokens=args.tokens
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    constraints = constraints_from_args(args)
    try:
        lawset = load_checked_laws(args.laws)
        result = recommend_with_policy(lawset, target, constraints)
    except RecommendError as err:
        raise UserError(str(err)) from None
    rec = result.recommendation
    summary = result.summary
    summary["laws"] = str(args.laws)
    if args.out is not None:
        if args.out.suffix not in (".yaml", ".yml"):  # --out r writes r.yaml, r.hf/, r.megatron.args
            args.out = args.out.with_name(args.out.name + ".yaml")
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
