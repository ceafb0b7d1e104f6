"""``windtunnel predict``: the final validation loss a law set predicts for a run, before it is trained.

    windtunnel predict --laws laws.json (--model M.yaml --tokens D | --compute C) [--law parametric|frontier]
        [--out P.json] [--json] [--record-to URI --experiment NAME --key KEY]

Prints the predicted loss, its 95 % interval and the law it came from (and what the set's other loss law
would say); ``--out`` writes the prediction JSON; ``--record-to`` records it in an MLflow store
before the run starts, where it can never be overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from windtunnel.errors import UserError, one_line


def _count(text: str) -> float:
    from windtunnel.recommend.targets import parse_count

    try:
        return parse_count(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--laws", required=True, help="a laws.json path, or 'ling' for the built-in set")
    tgt = parser.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--model", type=Path, help="a RunConfig YAML (its model block is used; with --tokens)")
    tgt.add_argument("--compute", type=_count, help="budget C = M·D in FLOPs: the compute-optimal run's loss")
    parser.add_argument("--tokens", type=_count, help="training tokens D for --model, e.g. 1.1e7 or 11M")
    parser.add_argument(
        "--law",
        default="auto",
        help="parametric | frontier | auto (the smaller backtest error at the top budget's best run)",
    )
    parser.add_argument("--out", type=Path, help="write the prediction as JSON here")
    parser.add_argument("--json", action="store_true", help="print the prediction as JSON")
    parser.add_argument("--record-to", help="MLflow tracking URI to record the prediction in")
    parser.add_argument("--experiment", default="predictions", help="MLflow experiment for --record-to")
    parser.add_argument("--key", help="the prediction's key in the store (default: the laws hash + point)")


def main(args: argparse.Namespace) -> int:
    from trainer.config import RunConfig
    from windtunnel.errors import RecommendError
    from windtunnel.predict import (
        PredictionError,
        format_prediction,
        laws_sha256,
        point_from_compute,
        point_from_model,
        predict_loss,
        record_prediction,
    )
    from windtunnel.recommend.laws_check import load_checked_laws

    if args.model is not None and args.tokens is None:
        raise UserError("--tokens: required with --model (training tokens D)")
    if args.compute is not None and args.tokens is not None:
        raise UserError("--tokens: give it with --model only (--compute takes D from the allocation law)")
    try:
        lawset = load_checked_laws(args.laws)  # the check `recommend` runs: every coefficient present, finite
    except RecommendError as err:
        raise UserError(f"--laws: {one_line(err)}") from None
    try:
        if args.model is not None:
            try:
                cfg = RunConfig.from_yaml(args.model)
            except (OSError, ValueError) as err:
                raise UserError(f"--model {args.model}: {one_line(err)}") from None
            point, notes = point_from_model(cfg.model, args.tokens), []
        else:
            point, notes = point_from_compute(lawset, args.compute)
        sha = laws_sha256(args.laws, lawset)
        pred = predict_loss(lawset, point, law=args.law, sha=sha, notes=notes)
        if args.record_to:
            key = args.key or f"{sha[:12]}-C{point['compute']:.4g}-N{point['params']:.4g}"
            run_id, pred = record_prediction(args.record_to, args.experiment, key, pred)
            pred.notes.append(f"recorded in {args.record_to} (experiment {args.experiment}, run {run_id})")
    except PredictionError as err:
        raise UserError(str(err)) from None
    text = json.dumps(pred.to_dict(), indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text if args.json else format_prediction(pred))
    if args.out is not None and not args.json:
        print(f"wrote {args.out}")
    sys.stdout.flush()
    return 0
