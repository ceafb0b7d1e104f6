"""Orchestrator overhead: N real training trials (~T s each) through Ray Tune + MLflow on this machine.

Measures, in one run:
- sweep wall time vs the ideal = sum of the trials' own training wall times / parallel slots (what a perfect
  scheduler with zero start-up, hand-off and logging cost would take); overhead = wall / ideal - 1;
- MLflow logging cost inside the trials: time in MLflow calls / training wall time (buffered ``log_batch``);
- the alternative a researcher would write, one ``MlflowClient.log_metric`` call per value, replaying one
  trial's metric stream into the same store: its time vs our batched time for the same values.

    python benchmarks/orchestrator.py [--trials 64] [--trial-seconds 20] [--concurrency 2]

With ``--groups G``: search groups run concurrently in one Tuner (this driver) against one Tuner per group,
one group after another (a sequential driver, reproduced by running each group as its own sweep in the same
Ray session). G budgets x ``--samples`` LR grid points each (a fixed grid, so both modes run the same trials;
budgets spaced x``--budget-ratio`` so the groups' trials differ in length as in a real sweep), both modes in
one run; writes ``results/orchestrator_groups.json``:

    python benchmarks/orchestrator.py --groups 4 --samples 3 --trial-seconds 6
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from trainer.config import RunConfig
from trainer.data import prepare_data
from trainer.loop import train
from windtunnel.orchestrator.driver import run_sweep
from windtunnel.orchestrator.spec import expand, parse_spec

RESULTS = Path(__file__).resolve().parent / "results"
BASE = {
    "device": "cpu",
    "eval_interval": 50,
    "eval_batches": 2,
    "log_interval": 5,
    "model": {
        "vocab_size": 1024,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 4,
        "head_dim": 16,
        "d_ffn": 176,
        "seq_len": 128,
    },
    "data": {"max_corpus_bytes": 4_000_000},
    "optim": {"lr": 3e-3, "batch_size": 8, "tokens": 30_000},
    "schedule": {"kind": "wsd"},
}


def calibrate(trial_seconds: float) -> tuple[int, float]:
    """Tokens for a ~trial_seconds run of BASE on 1 thread (measured tokens/s of a short run)."""
    torch.set_num_threads(1)
    cfg = RunConfig.from_dict(BASE)
    prepare_data(cfg)
    res = train(cfg)
    # steady-state speed: median of the trainer's per-step tokens/s (wall_s also holds set-up and evals)
    speeds = sorted(m["tokens_per_s"] for _, m in res.history if "tokens_per_s" in m)
    tps = speeds[len(speeds) // 2] if speeds else res.tokens / res.wall_s
    batch_tokens = cfg.batch_tokens
    return max(batch_tokens, int(trial_seconds * tps) // batch_tokens * batch_tokens), tps


def per_value_logging(uri: str, exp_id: str, source_run_id: str) -> tuple[float, int]:
    """Replay one trial's metrics with one log_metric call per value (the naive alternative)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    src = client.get_run(source_run_id)
    history = []
    for key in src.data.metrics:
        if key.startswith(("rt.", "wt.")):
            continue
        history.extend((key, m) for m in client.get_metric_history(source_run_id, key))
    run = client.create_run(exp_id, tags={"benchmark": "per-value"})
    t0 = time.perf_counter()
    for key, m in history:
        client.log_metric(run.info.run_id, key, m.value, m.timestamp, m.step)
    return time.perf_counter() - t0, len(history)


def _group_spec(name: str, work: Path, tokens: int, budgets: list[float], samples: int, conc: int) -> dict:
    from trainer.flops import flops_per_token

    m = flops_per_token(RunConfig.from_dict(BASE).model)
    return {
        "name": name,
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "workdir": str(work / "runs"),
        "base": BASE,
        "concurrency": conc,
        "retries": 0,
        "min_runs_to_fit": 10_000,
        "studies": [
            {
                "name": "lr",
                "search": {
                    "budgets": [b * m * tokens for b in budgets],
                    "lr": {"low": 1e-3, "high": 1e-2},
                    "lr_grid": samples,
                    "num_samples": samples,
                    "scheduler": "none",
                },
            }
        ],
    }


def _train_seconds(uri: str, sweeps: list[str]) -> float:
    from mlflow import MlflowClient

    from windtunnel.orchestrator.tracking import trial_runs

    client = MlflowClient(uri)
    total = 0.0
    for name in sweeps:
        exp_id = client.get_experiment_by_name(name).experiment_id
        total += sum(r.data.metrics.get("wt.train_wall_s", 0.0) for r in trial_runs(client, exp_id).values())
    return total


def groups_benchmark(args: argparse.Namespace) -> None:
    """Concurrent search groups (one Tuner) vs one Tuner per group in sequence; see the module docstring."""
    import ray

    tokens, tps = calibrate(args.trial_seconds)
    work = Path(tempfile.mkdtemp(prefix="wt_bench_groups_"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    budgets = [args.budget_ratio**i for i in range(args.groups)]  # x tokens of the calibrated trial
    result: dict = {"groups": args.groups, "samples": args.samples, "concurrency": args.concurrency}
    result["tokens_per_unit_trial"] = tokens
    result["calibrated_tokens_per_s"] = tps
    order = ["sequential", "concurrent"] if args.first == "sequential" else ["concurrent", "sequential"]
    for mode in order:
        t0 = time.perf_counter()
        if mode == "concurrent":
            spec = parse_spec(_group_spec("g_all", work, tokens, budgets, args.samples, args.concurrency))
            run_sweep(spec, expand(spec), show_progress=False)
            names = ["g_all"]
        else:
            names = []
            for i, b in enumerate(budgets):  # sequential driver: one Tuner per group, in sequence
                spec = parse_spec(_group_spec(f"g_seq{i}", work, tokens, [b], args.samples, args.concurrency))
                run_sweep(spec, expand(spec), show_progress=False)
                names.append(f"g_seq{i}")
        wall = time.perf_counter() - t0
        train_s = _train_seconds(uri, names)
        result[mode] = {
            "wall_s": wall,
            "sum_trial_train_s": train_s,
            "ideal_s": train_s / args.concurrency,
            "slot_utilisation_pct": 100 * train_s / (args.concurrency * wall),
            "load_avg_1m_at_end": os.getloadavg()[0],
        }
    ray.shutdown()
    result["sequential_over_concurrent_wall"] = (
        result["sequential"]["wall_s"] / result["concurrent"]["wall_s"]
    )
    print(f"{'mode':<12} {'wall s':>8} {'sum trial s':>12} {'ideal s':>8} {'slot use %':>10} {'load':>5}")
    for mode in ("sequential", "concurrent"):
        r = result[mode]
        print(
            f"{mode:<12} {r['wall_s']:>8.1f} {r['sum_trial_train_s']:>12.1f} {r['ideal_s']:>8.1f} "
            f"{r['slot_utilisation_pct']:>10.1f} {r['load_avg_1m_at_end']:>5.1f}"
        )
    print(f"sequential / concurrent wall time: {result['sequential_over_concurrent_wall']:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "orchestrator_groups.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS / 'orchestrator_groups.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--trial-seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--groups", type=int, default=0, help="compare concurrent vs sequential search groups")
    ap.add_argument("--samples", type=int, default=3, help="--groups: trials per group (LR grid points)")
    ap.add_argument("--budget-ratio", type=float, default=1.5, help="--groups: budget ratio between groups")
    ap.add_argument("--first", choices=["sequential", "concurrent"], default="sequential")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.groups:
        groups_benchmark(args)
        return
    tokens, tps = calibrate(args.trial_seconds)
    work = Path(tempfile.mkdtemp(prefix="wt_bench_orch_"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    spec = parse_spec(
        {
            "name": "bench_orch",
            "tracking_uri": uri,
            "workdir": str(work / "runs"),
            "base": {**BASE, "optim": {**BASE["optim"], "tokens": tokens}},
            "concurrency": args.concurrency,
            "retries": 0,
            "min_runs_to_fit": 10_000,  # no fitting: this measures orchestration only
            "studies": [{"name": "seeds", "grid": {"seed": list(range(args.trials))}}],
        }
    )
    plan = expand(spec)
    t0 = time.perf_counter()
    out = run_sweep(spec, plan, show_progress=False)
    wall = time.perf_counter() - t0

    from mlflow import MlflowClient

    from windtunnel.orchestrator.tracking import trial_runs

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("bench_orch").experiment_id
    runs = list(trial_runs(client, exp_id).values())
    finished = [r for r in runs if r.data.tags.get("status") == "finished"]
    train_s = [r.data.metrics["wt.train_wall_s"] for r in finished]
    log_s = [r.data.metrics["wt.log_seconds"] for r in finished]
    setup_s = [r.data.metrics["wt.setup_seconds"] for r in finished]
    calls = [r.data.metrics["wt.log_calls"] for r in finished]
    ideal = sum(train_s) / args.concurrency
    naive_s, n_values = per_value_logging(uri, exp_id, finished[0].info.run_id)
    ours_s = log_s[0]
    result = {
        "trials": args.trials,
        "finished": len(finished),
        "concurrency": args.concurrency,
        "tokens_per_trial": tokens,
        "calibrated_tokens_per_s": tps,
        "mean_trial_s": sum(train_s) / len(train_s),
        "sweep_wall_s": wall,
        "ideal_s": ideal,
        "overhead_pct": 100 * (wall / ideal - 1),
        "logging_pct_of_step_time": 100 * sum(log_s) / sum(train_s),
        "mlflow_calls_per_trial": sum(calls) / len(calls),
        "run_setup_s_per_trial": sum(setup_s) / len(setup_s),
        "per_value_logging_s": naive_s,
        "batched_logging_s": ours_s,
        "per_value_values": n_values,
        "per_value_vs_batched": naive_s / ours_s if ours_s > 0 else float("nan"),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "sweep_counts": out.counts,
    }
    rows = [
        ("trials finished / planned", f"{len(finished)} / {args.trials}"),
        ("mean trial training time", f"{result['mean_trial_s']:.1f} s"),
        ("sweep wall time", f"{wall:.0f} s"),
        (f"ideal (sum of trial times / {args.concurrency})", f"{ideal:.0f} s"),
        ("orchestration overhead", f"{result['overhead_pct']:.1f} %"),
        ("MLflow logging, % of training time", f"{result['logging_pct_of_step_time']:.2f} %"),
        ("log_batch calls per trial", f"{result['mlflow_calls_per_trial']:.1f}"),
        ("child-run setup per trial (search, create, params)", f"{result['run_setup_s_per_trial']:.2f} s"),
        (f"one trial's {n_values} values: per-value log_metric", f"{naive_s:.2f} s"),
        ("same values, our buffered log_batch", f"{ours_s:.2f} s"),
        ("per-value / batched", f"{result['per_value_vs_batched']:.1f}x"),
        ("1-min load average at the end", f"{result['load_avg_1m_at_end']:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "orchestrator.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS / 'orchestrator.json'}")


if __name__ == "__main__":
    main()
