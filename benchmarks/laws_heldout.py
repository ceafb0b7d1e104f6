"""Held-out benchmark of the law engine on the published anchor data sets (../shared/anchors).

For every data set with a natural hold-out, fit on the small runs and predict the held-out largest ones.
Per held-out point: the project's relative error (``fit_laws`` + ``LawSet.predict``: the backtest-selected
loss law, the IsoFLOP allocation law, StepFun's Step Law), a plain baseline's relative error on the same split
(the five-coefficient Huber fit of Epoch AI, ``parametric.fit_parametric``, for losses and optima; the plain
power law a·C^b for lr and batch), and whether the project's 95 % prediction interval covers the truth.

    python benchmarks/laws_heldout.py [--bootstrap 200]

Writes benchmarks/results/laws_heldout.json ({"rows": [{dataset, point, ours_rel_err, plain_rel_err,
pi95_covers, ...}], "summary": {...}}) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from windtunnel.laws import fit_laws
from windtunnel.laws.anchors import (
    anchors_dir,
    load_datablations,
    load_epoch_chinchilla,
    load_gadre,
    load_olmo_ladder,
    load_porian,
    load_steplaw,
)
from windtunnel.laws.base import budget_labels
from windtunnel.laws.forms import CANDIDATES, predict_x
from windtunnel.laws.hparam import NEAR_OPTIMAL_BAND
from windtunnel.laws.parametric import fit_parametric, predict_parametric
from windtunnel.laws.selection import fit_form

RESULTS = Path(__file__).resolve().parent / "results"


def loss_splits(root: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """(fit runs, held-out runs) per loss data set."""
    gadre = load_gadre("rpj", root=root)  # Gadre et al.'s RedPajama runs, C4 eval loss (the paper's default)
    olmo = load_olmo_ladder(root=root)
    olmo_fit = olmo["run_id"].str.match(r"^(190M|370M|760M|1B)-(1|2|5|10)xC$")
    olmo_out = olmo["run_id"].str.match(r"^3B-") | olmo["run_id"].str.startswith("peteish")
    epoch = load_epoch_chinchilla(root=root)
    cut = np.sort(epoch["compute"].unique())[-1] / 30  # the largest 1.5 decades of compute
    # data-constrained runs of Muennighoff et al.: L(N, D) has no term for repetition, so runs of at most 4
    # epochs (where repeated data is worth nearly as much as fresh data: Muennighoff et al. 2023, Fig. 3)
    dc = load_datablations(root=root)
    raw = pd.read_csv(root / "hitchhiker_colpret" / "DERIVED_datablations_contour_parsed.csv")
    dc = dc[dc["run_id"].isin(raw.loc[raw["epochs_from_name"] <= 4, "name"])]
    return {
        "gadre_rpj": (gadre[gadre["params"] < 4.2e8], gadre[gadre["params"] > 4.2e8]),
        "olmo_ladder": (olmo[olmo_fit], olmo[olmo_out]),
        "epoch_chinchilla": (epoch[epoch["compute"] < cut], epoch[epoch["compute"] >= cut]),
        "datablations_le4ep": (dc[dc["params"] < 4e9], dc[dc["params"] > 4e9]),
    }


def loss_rows(name: str, fit: pd.DataFrame, out: pd.DataFrame, n_boot: int) -> tuple[list[dict], dict]:
    ls = fit_laws(fit, laws=["parametric"], bootstrap=n_boot)
    law = ls.laws["parametric"]
    N, D, L = (out[c].to_numpy(float) for c in ("params", "tokens", "loss"))
    v, lo, hi = (np.atleast_1d(a) for a in ls.predict("parametric", (N, D)))
    _, _, x_plain = fit_parametric(*(fit[c].to_numpy(float) for c in ("params", "tokens", "loss")))
    plain = predict_parametric(x_plain, N, D)
    rows = [
        {
            "dataset": name,
            "point": str(rid),
            "truth": float(L[i]),
            "ours": float(v[i]),
            "pi95": [float(lo[i]), float(hi[i])],
            "plain": float(plain[i]),
            "ours_rel_err": float(abs(v[i] / L[i] - 1)),
            "plain_rel_err": float(abs(plain[i] / L[i] - 1)),
            "pi95_covers": bool(lo[i] <= L[i] <= hi[i]),
        }
        for i, rid in enumerate(out["run_id"])
    ]
    sel = law.extra["selection"]
    info = {"n_fit": len(fit), "chosen": sel["chosen"], "rollout_errors": sel["candidates"]}
    return rows, {**info, "heldout_error_by_form": heldout_by_form(fit, out)}


def heldout_by_form(fit: pd.DataFrame, out: pd.DataFrame) -> dict[str, float]:
    """Diagnostic, never used in the choice: each candidate form fitted on the fit set, its mean relative
    error on the held-out runs (how good the rollout's choice was)."""
    N, D, L, C = (fit[c].to_numpy(float) for c in ("params", "tokens", "loss", "compute"))
    Nt, Dt, Lt = (out[c].to_numpy(float) for c in ("params", "tokens", "loss"))
    errs = {}
    for cand in CANDIDATES:
        x, _ = fit_form(cand, N, D, L, C)
        errs[cand.name] = float(np.mean(np.abs(predict_x(x, Nt, Dt) / Lt - 1)))
    return errs


def porian_rows(root: Path, n_boot: int, n_out: int = 2) -> tuple[list[dict], dict]:
    """Per-budget optima n* of the default configuration at its ``n_out`` largest budgets vs optimal_pairs."""
    runs = load_porian(root=root)
    labels, centers = budget_labels(runs["compute"].to_numpy(float))
    fit = runs[labels < len(centers) - n_out]
    pairs = pd.read_csv(root / "porian2024" / "optimal_pairs.csv")
    cfg = {
        "dataset": "rw",
        "hparams": "tuned",
        "warmup": "short",
        "decay": "const",
        "param_count": "standard",
    }
    for k, val in cfg.items():
        pairs = pairs[pairs[k] == val]
    ls = fit_laws(fit, laws=["params_opt"], bootstrap=n_boot)
    _, _, x_plain = fit_parametric(*(fit[c].to_numpy(float) for c in ("params", "tokens", "loss")))
    rows = []
    for C in centers[len(centers) - n_out :]:
        match = pairs[np.isclose(np.log10(pairs["flops"]), np.log10(C), atol=0.05)]
        if match.empty:
            continue
        truth = float(match["n_star"].iloc[0])
        v, lo, hi = ls.predict("params_opt", float(C))
        plain = chinchilla_n_opt(x_plain, C)
        rows.append(
            {
                "dataset": "porian_rw_tuned",
                "point": f"n* at C={C:.3g}",
                "truth": truth,
                "ours": v,
                "pi95": [lo, hi],
                "plain": plain,
                "ours_rel_err": abs(v / truth - 1),
                "plain_rel_err": abs(plain / truth - 1),
                "pi95_covers": bool(lo <= truth <= hi),
            }
        )
    return rows, {"n_fit": len(fit), "law": ls.laws["params_opt"].form}


def chinchilla_n_opt(x_P: np.ndarray, C: float) -> float:
    """argmin_N of E + A/N^alpha + B/D^beta on C = 6·N·D: N* = G·(C/6)^(beta/(alpha+beta)),
    G = (alpha·A / (beta·B))^(1/(alpha+beta)) (Hoffmann et al. 2022, Eq. 4)."""
    a, b, _, alpha, beta = x_P
    G = np.exp((np.log(alpha) + a - np.log(beta) - b) / (alpha + beta))
    return float(G * (C / 6.0) ** (beta / (alpha + beta)))


def steplaw_rows(root: Path, n_boot: int, n_out: int = 3) -> tuple[list[dict], dict]:
    """StepFun dense: the ``n_out`` largest-compute (N, D) cells held out. Truth = the cell's optimum as
    StepFun define it (``code/fit_tool.py``: the runs within 0.25 % of the cell's best smoothed loss),
    i.e. the geometric mean of lr (batch) over that band, the quantity the law is fitted to. The
    lowest-loss run's lr (batch) is recorded beside it (``truth_argmin``, ``*_rel_err_argmin``,
    ``pi95_covers_argmin``)."""
    runs = load_steplaw("dense", root=root)
    cells = runs.groupby(["params", "tokens"])["compute"].first().sort_values()
    held = set(cells.index[-n_out:])
    key = list(zip(runs["params"], runs["tokens"], strict=True))
    out_mask = np.array([k in held for k in key])
    laws = ["steplaw_lr", "steplaw_batch", "lr_opt", "batch_opt"]
    ls = fit_laws(runs[~out_mask], laws=laws, bootstrap=n_boot)
    rows = []
    for (N, D), cell in runs[out_mask].groupby(["params", "tokens"]):
        best = cell.loc[cell["loss"].idxmin()]
        in_band = cell["loss"] <= (1.0 + NEAR_OPTIMAL_BAND) * cell["loss"].min()
        for ours_name, plain_name, col in (
            ("steplaw_lr", "lr_opt", "lr"),
            ("steplaw_batch", "batch_opt", "batch_tokens"),
        ):
            v, lo, hi = ls.predict(ours_name, (N, D))
            plain, _, _ = ls.predict(plain_name, float(np.exp(np.log(cell["compute"]).mean())))
            truth = float(np.exp(np.log(cell.loc[in_band, col]).mean()))
            argmin = float(best[col])
            rows.append(
                {
                    "dataset": f"steplaw_dense_{col}",
                    "point": f"N={N:.3g} D={D:.3g}",
                    "truth": truth,
                    "ours": v,
                    "pi95": [lo, hi],
                    "plain": plain,
                    "ours_rel_err": abs(v / truth - 1),
                    "plain_rel_err": abs(plain / truth - 1),
                    "pi95_covers": bool(lo <= truth <= hi),
                    "truth_argmin": argmin,
                    "ours_rel_err_argmin": abs(v / argmin - 1),
                    "plain_rel_err_argmin": abs(plain / argmin - 1),
                    "pi95_covers_argmin": bool(lo <= argmin <= hi),
                }
            )
    return rows, {"n_fit": int((~out_mask).sum()), "errors": ls.errors}


def summarise(rows: list[dict]) -> dict:
    df = pd.DataFrame(rows)
    per = {
        name: {
            "n": len(g),
            "ours_mean_rel_err": float(g["ours_rel_err"].mean()),
            "plain_mean_rel_err": float(g["plain_rel_err"].mean()),
            "pi95_coverage": float(g["pi95_covers"].mean()),
        }
        for name, g in df.groupby("dataset", sort=False)
    }
    loss = df[~df["dataset"].str.startswith(("steplaw", "porian"))]
    return {
        "per_dataset": per,
        "all": {
            "ours_mean_rel_err": float(df["ours_rel_err"].mean()),
            "plain_mean_rel_err": float(df["plain_rel_err"].mean()),
            "pi95_coverage": float(df["pi95_covers"].mean()),
            "n": len(df),
        },
        "all_steplaw_truth_argmin": _argmin_summary(df),
        "loss_datasets": {
            "ours_mean_rel_err": float(loss["ours_rel_err"].mean()),
            "plain_mean_rel_err": float(loss["plain_rel_err"].mean()),
            "pi95_coverage": float(loss["pi95_covers"].mean()),
            "n": len(loss),
        },
    }


def _argmin_summary(df: pd.DataFrame) -> dict:
    """The overall numbers with StepFun's truth taken as the lowest-loss run of each held-out cell."""
    alt = df.copy()
    has = alt["dataset"].str.startswith("steplaw")
    for col in ("ours_rel_err", "plain_rel_err", "pi95_covers"):
        alt.loc[has, col] = alt.loc[has, f"{col}_argmin"]
    return {
        "ours_mean_rel_err": float(alt["ours_rel_err"].mean()),
        "plain_mean_rel_err": float(alt["plain_rel_err"].mean()),
        "pi95_coverage": float(alt["pi95_covers"].astype(float).mean()),
        "n": len(alt),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()
    root = anchors_dir()
    t0 = time.perf_counter()
    rows, info = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (fit, out) in loss_splits(root).items():
            r, info[name] = loss_rows(name, fit, out, args.bootstrap)
            rows += r
        r, info["porian_rw_tuned"] = porian_rows(root, args.bootstrap)
        rows += r
        r, info["steplaw_dense"] = steplaw_rows(root, args.bootstrap)
        rows += r
    wall = time.perf_counter() - t0
    result = {
        "rows": rows,
        "summary": summarise(rows),
        "fits": info,
        "wall_s": wall,
        "bootstrap": args.bootstrap,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "laws_heldout.json").write_text(json.dumps(result, indent=1, default=float))
    print_table(result)


def print_table(result: dict) -> None:
    head = f"{'dataset':22s} {'point':28s} {'truth':>10s} {'ours':>10s} {'plain':>10s}"
    print(f"{head} {'ours%':>7s} {'plain%':>7s} pi95")
    for r in result["rows"]:
        point = re.sub(r"\s+", " ", r["point"])[:28]
        print(
            f"{r['dataset']:22s} {point:28s} {r['truth']:10.4g} {r['ours']:10.4g}"
            f" {r['plain']:10.4g} {100 * r['ours_rel_err']:7.2f} {100 * r['plain_rel_err']:7.2f}"
            f" {'yes' if r['pi95_covers'] else 'NO'}"
        )
    print()
    for name, s in {
        **result["summary"]["per_dataset"],
        "ALL": result["summary"]["all"],
        "LOSS DATA SETS": result["summary"]["loss_datasets"],
    }.items():
        print(
            f"{name:22s} n={s['n']:3d}  ours {100 * s['ours_mean_rel_err']:6.2f} %  plain"
            f" {100 * s['plain_mean_rel_err']:6.2f} %  pi95 coverage {100 * s['pi95_coverage']:5.1f} %"
        )
    s = result["summary"]["all_steplaw_truth_argmin"]
    print(
        f"{'ALL, StepFun truth = lowest-loss run':38s} ours {100 * s['ours_mean_rel_err']:6.2f} %  plain"
        f" {100 * s['plain_mean_rel_err']:6.2f} %  pi95 coverage {100 * s['pi95_coverage']:5.1f} %"
    )
    for name, info in result["fits"].items():
        if "heldout_error_by_form" in info:
            errs = ", ".join(f"{k} {100 * v:.2f}" for k, v in info["heldout_error_by_form"].items())
            print(f"{name}: chosen {info['chosen']}; held-out error by form (diagnostic, %): {errs}")
    print(f"wall {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
