"""Figures of fitted laws (matplotlib, Agg backend; each figure as PNG and SVG).

IsoFLOP profiles with their Akima curves and per-budget optima (95 % bootstrap interval); the optimum laws,
the loss frontier and L(N, D), each with its 95 % prediction interval and extrapolation; the rollout errors of
the candidate loss-law forms; lr and batch laws over all runs with the near-optimal band highlighted; EL
against A and G; and backtest errors.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from windtunnel.laws.base import budget_labels  # noqa: E402
from windtunnel.laws.hparam import band_mask  # noqa: E402
from windtunnel.laws.isoflop import lower_envelope  # noqa: E402
from windtunnel.laws.lawset import LAW_COLUMNS, LawSet  # noqa: E402
from windtunnel.laws.leverage import leverage_value  # noqa: E402
from windtunnel.laws.profile import profile_curves  # noqa: E402
from windtunnel.runtable import usable_runs, validate_run_table  # noqa: E402


def _save(fig, outdir: Path, stem: str) -> list[Path]:
    paths = [outdir / f"{stem}.png", outdir / f"{stem}.svg"]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _subset(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    cols, subset = LAW_COLUMNS[name]
    fam = runs["family"].str.lower()
    if {"dense", "moe"} <= set(fam):
        runs = runs[fam == ("dense" if subset == "dense" else "moe")] if subset != "all" else runs
    return usable_runs(runs.reset_index(drop=True), cols).runs


def _draw_profiles(ax, env: pd.DataFrame, column: str, optima: list[dict]) -> None:
    """IsoFLOP points per budget, the Akima interpolant each optimum is taken from
    (``profile.profile_curves``), and each budget's optimum with its 95 % bootstrap interval (red: an edge
    optimum, left out of the exponent fit)."""
    labels, centers = budget_labels(env["compute"].to_numpy(float))
    curves = profile_curves(env, column)
    cmap = plt.get_cmap("viridis")
    x_N, L_N = env[column].to_numpy(float), env["loss"].to_numpy(float)
    for k, C in enumerate(centers):
        col = cmap(k / max(len(centers) - 1, 1))
        ax.scatter(x_N[labels == k], L_N[labels == k], color=col, s=14, label=f"C={C:.2g}")
        X_G, L_G = curves[k]
        if X_G.size:
            ax.plot(X_G, L_G, color=col, lw=1)
        o = next((o for o in optima if np.isclose(np.log(o["compute"]), np.log(C), atol=0.12)), None)
        if o is None or o["opt"] is None or not np.isfinite(o["opt"]) or not X_G.size:
            continue
        L_opt = float(np.interp(np.log(o["opt"]), np.log(X_G), L_G))
        lo, hi = (v if v is not None and np.isfinite(v) else o["opt"] for v in o["ci95"])
        ax.errorbar(
            o["opt"],
            L_opt,
            xerr=[[max(o["opt"] - lo, 0.0)], [max(hi - o["opt"], 0.0)]],
            fmt="D",
            ms=5,
            color="red" if o["edge"] else "k",
            capsize=2,
            zorder=4,
        )


def plot_isoflop(runs: pd.DataFrame, lawset: LawSet, name: str, outdir: Path) -> list[Path]:
    """Left: IsoFLOP profiles with their Akima curves and per-budget optima (95 % bootstrap interval).
    Right: the optima against C with the fitted law and its 95 % prediction interval, extrapolated."""
    law = lawset.laws[name]
    column = law.notes.get("size_column", "params")
    env = lower_envelope(_subset(runs, name), column)
    optima = law.notes.get("optima", [])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    _draw_profiles(ax, env, column, optima)
    ax.set(xscale="log", xlabel=column, ylabel="loss", title=f"IsoFLOP profiles, Akima optima ({name})")
    ax.legend(fontsize=6)
    opts = [o for o in optima if o["opt"] is not None and np.isfinite(o["opt"])]
    Cs = np.array([o["compute"] for o in opts])
    ys = np.array([o["opt"] for o in opts])
    err = np.array(
        [[o["opt"] - (o["ci95"][0] or o["opt"]), (o["ci95"][1] or o["opt"]) - o["opt"]] for o in opts]
    ).T
    fit_K = np.array([bool(o["in_fit"]) for o in opts])
    for mask, label, colour in ((fit_K, "optimum in fit (95%)", "C0"), (~fit_K, "left out (edge)", "red")):
        if mask.any():
            e = np.nan_to_num(np.abs(err[:, mask]))
            ax2.errorbar(Cs[mask], ys[mask], yerr=e, fmt="o", ms=4, color=colour, label=label)
    grid = np.logspace(np.log10(Cs.min()), np.log10(Cs.max()) + 2, 80)
    v, lo, hi = lawset.predict(name, grid)
    a, b = law.coefficients["a"], law.coefficients["b"]
    ax2.plot(grid, v, color="C1", label=f"{a:.3g}·C^{b:.3f}")
    ax2.fill_between(grid, lo, hi, color="C1", alpha=0.25, label="95 % prediction interval")
    ax2.set(xscale="log", yscale="log", xlabel="compute C", ylabel=f"optimal {column}", title=name)
    ax2.legend(fontsize=7)
    return _save(fig, outdir, f"isoflop_{name}")


def plot_frontier(runs: pd.DataFrame, lawset: LawSet, outdir: Path) -> list[Path]:
    law = lawset.laws["frontier"]
    sub = _subset(runs, "frontier")
    pts = np.array(law.notes.get("points", []))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(sub["compute"], sub["loss"], s=6, color="lightgrey", label="runs")
    if pts.size:
        ax.scatter(pts[:, 0], pts[:, 1], s=18, color="C0", label="frontier points")
    cmin, cmax = sub["compute"].min(), sub["compute"].max()
    grid = np.logspace(np.log10(cmin), np.log10(cmax) + 2, 100)
    v, lo, hi = lawset.predict("frontier", grid)
    c = law.coefficients
    ax.plot(grid, v, color="C1", label=f"E={c['E']:.3g} + {c['A']:.3g}·C^-{c['alpha']:.3f}")
    ax.fill_between(grid, lo, hi, color="C1", alpha=0.25, label="95 % prediction interval")
    ax.axvline(cmax, color="k", lw=0.5, ls="--")
    ax.set(xscale="log", xlabel="compute C", ylabel="loss", title="loss frontier (extrapolated 2 decades)")
    ax.legend(fontsize=7)
    return _save(fig, outdir, "frontier")


def plot_hparam(runs: pd.DataFrame, lawset: LawSet, name: str, outdir: Path) -> list[Path]:
    law = lawset.laws[name]
    column = "lr" if name == "lr_opt" else "batch_tokens"
    sub = _subset(runs, name)
    labels, _ = budget_labels(sub["compute"].to_numpy(float))
    mask = band_mask(
        sub["loss"].to_numpy(float), labels, np.ones((1, len(sub))), law.notes.get("band", 0.0025)
    )[0]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(sub["compute"][~mask], sub[column][~mask], s=6, color="lightgrey", label="runs")
    ax.scatter(sub["compute"][mask], sub[column][mask], s=16, color="C0", label="near-optimal band")
    grid = np.logspace(np.log10(sub["compute"].min()), np.log10(sub["compute"].max()) + 2, 80)
    v, lo, hi = lawset.predict(name, grid)
    ax.plot(grid, v, color="C1", label=f"{law.coefficients['a']:.3g}·C^{law.coefficients['b']:.4f}")
    ax.fill_between(grid, lo, hi, color="C1", alpha=0.25, label="95 % prediction interval")
    ax.set(xscale="log", yscale="log", xlabel="compute C", ylabel=column, title=name)
    ax.legend(fontsize=7)
    return _save(fig, outdir, name)


def plot_leverage(lawset: LawSet, outdir: Path, C: float | None = None) -> list[Path]:
    """EL vs A and EL vs G from the fitted law. A law fitted to runs is drawn at its largest observed
    budget, over the A and G it saw, with the observed EL of that budget as points (colour = G, resp. A); a
    law without observations (e.g. the published one) at C = 1e22 over Ling's ranges. A law the fit flagged
    as not identified says so in the title."""
    law = lawset.laws["leverage"]
    coef = law.coefficients
    obs = pd.DataFrame(law.notes.get("observations", []))
    if C is None:
        C = float(obs["compute"].max()) if len(obs) else 1e22
    near = obs[np.abs(np.log10(obs["compute"] / C)) < 0.2] if len(obs) else obs
    Gs = sorted(obs["granularity"].unique()) if len(obs) else [2, 4, 8, 12, 16, 32]
    As = sorted(obs["act_ratio"].unique()) if len(obs) else [0.01, 0.031, 0.1, 0.3]
    cmap = plt.get_cmap("viridis")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    A = np.logspace(np.log10(min(As)) - 0.3, 0, 80) if len(obs) else np.logspace(-2.5, 0, 80)
    for i, G in enumerate(Gs):
        col = cmap(i / max(len(Gs) - 1, 1))
        ax.plot(A, leverage_value(coef, A, G, C), color=col, label=f"G={G:g}")
        pts = near[near["granularity"] == G] if len(near) else near
        if len(pts):
            ax.scatter(pts["act_ratio"], pts["EL"], color=col, s=18, zorder=3)
    note = " — not identified" if law.notes.get("degenerate") else ""
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="activation ratio A",
        ylabel="EL",
        title=f"EL vs A (C={C:.2g}){note}",
    )
    ax.legend(fontsize=7)
    G = np.logspace(0, np.log2(max(Gs)) + 1, 80, base=2)
    for i, a in enumerate(As):
        col = cmap(i / max(len(As) - 1, 1))
        ax2.plot(G, leverage_value(coef, a, G, C), color=col, label=f"A={a:.3g}")
        pts = near[np.isclose(near["act_ratio"], a)] if len(near) else near
        if len(pts):
            ax2.scatter(pts["granularity"], pts["EL"], color=col, s=18, zorder=3)
    ax2.set(xscale="log", xlabel="granularity G", ylabel="EL", title="EL vs G (points: observed)")
    ax2.legend(fontsize=7)
    return _save(fig, outdir, "leverage")


def plot_parametric(runs: pd.DataFrame, lawset: LawSet, outdir: Path) -> list[Path]:
    """Loss against tokens per model size with the fitted L(N, D) and its 95 % prediction interval
    (extrapolated one decade in D beyond the runs), and every candidate form's rollout error."""
    law = lawset.laws["parametric"]
    sub = _subset(runs, "parametric")
    sizes = np.unique(sub["params"].to_numpy(float))
    pick = sizes[np.unique(np.linspace(0, sizes.size - 1, min(6, sizes.size)).round().astype(int))]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    D_grid = np.logspace(np.log10(sub["tokens"].min()), np.log10(sub["tokens"].max()) + 1, 80)
    for i, N in enumerate(pick):
        col = cmap(i / max(len(pick) - 1, 1))
        pts = sub[np.isclose(sub["params"], N)]
        ax.scatter(pts["tokens"], pts["loss"], color=col, s=12, label=f"N={N:.3g}")
        v, lo, hi = lawset.predict("parametric", (np.full_like(D_grid, N), D_grid))
        ax.plot(D_grid, v, color=col, lw=1)
        ax.fill_between(D_grid, lo, hi, color=col, alpha=0.15)
    ax.axvline(sub["tokens"].max(), color="k", lw=0.5, ls="--")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="tokens D",
        ylabel="loss",
        title="L(N, D) with 95 % prediction interval",
    )
    ax.legend(fontsize=6)
    sel = law.extra.get("selection", {})
    cands = {k: v for k, v in sel.get("candidates", {}).items() if v is not None and np.isfinite(v)}
    names = list(cands)
    colours = ["C3" if n == sel.get("chosen") else "C0" for n in names]
    ax2.bar(np.arange(len(names)), [100 * cands[n] for n in names], color=colours)
    ax2.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax2.set(ylabel="rollout error (%)", title=f"form chosen by rollout backtest: {sel.get('chosen', '?')}")
    return _save(fig, outdir, "parametric")


def plot_backtest(lawset: LawSet, outdir: Path) -> list[Path]:
    names = [n for n, law in lawset.laws.items() if "mean_rel_err" in law.backtest]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names) + 2), 3.6))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [lawset.laws[n].backtest["mean_rel_err"] for n in names], 0.4, label="mean")
    ax.bar(x + 0.2, [lawset.laws[n].backtest["max_rel_err"] for n in names], 0.4, label="max")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="relative error above the cut", title="backtest: fit below the top budget, predict it")
    ax.legend(fontsize=7)
    return _save(fig, outdir, "backtest")


def plot_laws(runs_df: pd.DataFrame, lawset: LawSet, outdir: str | Path) -> list[Path]:
    """Write every figure the law set supports to ``outdir``; returns the PNG and SVG paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    runs = validate_run_table(runs_df)
    paths: list[Path] = []
    for name, law in lawset.laws.items():
        if "optima" in law.notes:
            paths += plot_isoflop(runs, lawset, name, outdir)
        elif name in ("lr_opt", "batch_opt") and law.notes.get("band") is not None:
            paths += plot_hparam(runs, lawset, name, outdir)
    if "frontier" in lawset.laws and lawset.laws["frontier"].notes.get("points"):
        paths += plot_frontier(runs, lawset, outdir)
    if "parametric" in lawset.laws:
        paths += plot_parametric(runs, lawset, outdir)
    if "leverage" in lawset.laws:
        paths += plot_leverage(lawset, outdir)
    if any("mean_rel_err" in law.backtest for law in lawset.laws.values()):
        paths += plot_backtest(lawset, outdir)
    return paths
