"""``python -m trainer``: dry-run, train, or merge checkpoints.

    python -m trainer --config CFG.yaml [--dry-run] [--json] [--workdir DIR] [--set k=v ...] [--no-resume]
                      [--threads N]
    python -m trainer merge --checkpoints DIR [--shape mean] [--window 8] --out merged.pt
    python -m trainer export --checkpoint CKPT.pt --config CFG.yaml --out DIR [--dtype bf16]

A config error prints one line ``error: field: problem`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import yaml

from trainer.config import ConfigError, RunConfig
from trainer.data import DataError

SUBCOMMANDS = """subcommands (each with its own --help):
  python -m trainer merge --checkpoints DIR --out merged.pt     WSM merge of checkpoints
  python -m trainer export --checkpoint CKPT --config CFG --out DIR
      a Hugging Face folder: config.json + model.safetensors"""


def _parse_sets(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "model.moe=null"]`` -> ``{"optim.lr": 0.001, "model.moe": None}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected key=value")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def _load_config(args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig.from_yaml(args.config)
    if args.set:
        cfg = cfg.with_overrides(_parse_sets(args.set))
    return cfg


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def _print_table(d: dict[str, Any], indent: str = "") -> None:
    width = max((len(k) for k in d), default=0)
    for k, v in d.items():
        if isinstance(v, dict):
            print(f"{indent}{k}:")
            _print_table(v, indent + "  ")
        else:
            print(f"{indent}{k:<{width}}  {_fmt(v)}")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _dry_run(cfg: RunConfig, as_json: bool) -> int:
    from trainer.dryrun import dry_run

    info = dry_run(cfg)
    if as_json:
        print(json.dumps(info, default=_json_default))
    else:
        print(f"dry run: {cfg.name} ({cfg.model.family})")
        _print_table(info)
    return 0


def _train(cfg: RunConfig, args: argparse.Namespace) -> int:
    from trainer.loop import train

    total = cfg.steps
    tty = sys.stderr.isatty()
    t0 = time.time()

    def report(step: int, metrics: dict[str, float]) -> None:
        parts = [f"step {step}/{total}"]
        for key in ("loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "max_violation"):
            if key in metrics:
                parts.append(f"{key} {metrics[key]:.4g}")
        parts.append(f"{time.time() - t0:.0f}s")
        print(("\r" if tty else "") + "  ".join(parts), end="" if tty else "\n", file=sys.stderr, flush=True)

    result = train(cfg, report=report, workdir=args.workdir, resume=not args.no_resume)
    if tty:
        print(file=sys.stderr)
    summary = result.summary()
    from trainer.distributed import is_main_process

    if is_main_process():  # under torchrun only rank 0 prints (every rank returns the same result)
        if args.json:
            print(json.dumps(summary, default=_json_default))
        else:
            _print_table(summary)
    return 0 if result.status == "finished" else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "merge":
        from trainer.merge import add_merge_arguments, merge_main

        mp = argparse.ArgumentParser(prog="python -m trainer merge", description="WSM checkpoint merge")
        add_merge_arguments(mp)
        return merge_main(mp.parse_args(argv[1:]))
    if argv and argv[0] == "export":
        from trainer.export import add_export_arguments, export_main

        ep = argparse.ArgumentParser(
            prog="python -m trainer export",
            description="write a checkpoint as a Hugging Face folder: config.json + model.safetensors",
        )
        add_export_arguments(ep)
        return export_main(ep.parse_args(argv[1:]))

    p = argparse.ArgumentParser(
        prog="python -m trainer",
        description=__doc__.splitlines()[0],
        epilog=SUBCOMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument(
        "--dry-run", action="store_true", help="build on the meta device, print params/FLOPs/memory"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--workdir", default=None, help="checkpoint folder (resumes from it)")
    p.add_argument("--set", action="append", default=[], metavar="K=V", help="override, e.g. optim.lr=1e-3")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --workdir")
    p.add_argument(
        "--threads", type=int, default=None, metavar="N", help="torch intra-op CPU threads (default: torch's)"
    )
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads: must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        cfg = _load_config(args)
        if args.dry_run:
            return _dry_run(cfg, args.json)
        return _train(cfg, args)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
