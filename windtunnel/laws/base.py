"""Shared pieces of the law engine: the ``Law`` record (one laws.json entry), compute budgets, bootstrap
weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

EXTRA_KEYS = ("pi95", "selection")


class LawError(ValueError):
    """A law could not be fitted to the given runs; the message says why."""


@dataclass
class Law:
    """One laws.json entry (docs/DESIGN.md "Contracts").

    ``samples`` (bootstrap coefficient draws, used for prediction intervals) and ``notes`` (warnings,
    per-budget
    optima, excluded-run counts) are extra keys of the entry; readers that do not know them ignore them.
    """

    name: str
    form: str
    coefficients: dict[str, float]
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_runs: int = 0
    run_ids: list[str] = field(default_factory=list)
    backtest: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    # further top-level keys of a laws.json entry ("pi95", "selection"; docs/DESIGN.md), kept as is
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The laws.json entry; ci95 lists only finite intervals (none without a bootstrap); NaN -> null."""
        return {
            "form": self.form,
            "coefficients": {k: jsonable(float(v)) for k, v in self.coefficients.items()},
            "ci95": {
                k: [float(lo), float(hi)]
                for k, (lo, hi) in self.ci95.items()
                if np.isfinite(lo) and np.isfinite(hi)
            },
            "n_runs": int(self.n_runs),
            "run_ids": [str(r) for r in self.run_ids],
            "backtest": jsonable(self.backtest),
            "samples": {k: jsonable([float(x) for x in v]) for k, v in self.samples.items()},
            "notes": jsonable(self.notes),
            **{k: jsonable(v) for k, v in self.extra.items()},
        }

    @classmethod
    def from_dict(cls, name: str, entry: dict[str, Any]) -> Law:
        def num(v: Any) -> float:
            return float("nan") if v is None else float(v)

        return cls(
            name=name,
            form=str(entry.get("form", "")),
            coefficients={k: num(v) for k, v in entry["coefficients"].items()},
            ci95={k: (num(v[0]), num(v[1])) for k, v in entry.get("ci95", {}).items()},
            n_runs=int(entry.get("n_runs", 0)),
            run_ids=list(entry.get("run_ids", [])),
            backtest=dict(entry.get("backtest", {})),
            samples={k: [num(x) for x in v] for k, v in entry.get("samples", {}).items()},
            notes=dict(entry.get("notes", {})),
            extra={k: v for k, v in entry.items() if k in EXTRA_KEYS},
        )


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python numbers/lists and non-finite floats as None (JSON null)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


# columns that tell two architectures apart at the same (params, tokens): never merged by ``best_tuned``
ARCH_COLUMNS = ("family", "act_ratio", "granularity")
# the hyper-parameters a search varies at one (params, tokens) cell
HPARAM_COLUMNS = ("lr", "batch_tokens")


def _hparam_keys(runs: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, list[str], list[str]]:
    """``runs`` with cell and setting keys (log N, log D rounded to 0.1 %, log of each known hyper-parameter),
    the mask of runs whose ``HPARAM_COLUMNS``, N and D are all known, the cell key and the setting key."""
    arch = [c for c in ARCH_COLUMNS if c in runs.columns]
    hp = [c for c in HPARAM_COLUMNS if c in runs.columns]
    hp_known = np.ones(len(runs), bool) if hp else np.zeros(len(runs), bool)
    for c in [*hp, "params", "tokens"]:
        hp_known &= np.isfinite(pd.to_numeric(runs[c], errors="coerce").to_numpy(float))
    keyed = runs.assign(
        _row=np.arange(len(runs)),
        _n=np.round(np.log(runs["params"].to_numpy(float)), 3),
        _d=np.round(np.log(runs["tokens"].to_numpy(float)), 3),
        **{f"_h{i}": np.round(np.log(runs[c].to_numpy(float)), 6) for i, c in enumerate(hp)},
    )
    cell = ["_n", "_d", *arch]
    return keyed, hp_known, cell, cell + [f"_h{i}" for i in range(len(hp))]


def _drop_keys(out: pd.DataFrame) -> pd.DataFrame:
    out = out.sort_values("_row")
    return out.drop(columns=[c for c in out.columns if c.startswith("_")]).reset_index(drop=True)


def _seed_mean_keyed(
    keyed: pd.DataFrame, hp_known: np.ndarray, setting: list[str]
) -> tuple[pd.DataFrame, ...]:
    searched, kept = keyed[hp_known], keyed[~hp_known].assign(n_seeds=1)
    grouped = searched.groupby(setting, dropna=False, sort=False)["loss"]
    searched = searched.assign(loss=grouped.transform("mean"), n_seeds=grouped.transform("size"))
    return searched.drop_duplicates(setting), kept


def seed_mean(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per hyper-parameter setting of each (params, tokens) cell (and architecture,
    ``ARCH_COLUMNS``): runs that differ only in seed are averaged, ``loss`` the mean and ``n_seeds`` the
    runs averaged, the first run standing for them. A setting's expected loss, not its luckiest seed: the
    minimum of k seeds is biased low by about sigma·E[max of k normals] (0.56·sigma for k = 2), which a law
    fitted to minima (an IsoFLOP envelope, the frontier) would carry into its prediction of one run. Runs
    whose ``HPARAM_COLUMNS`` are not all known (a published table) are kept as they are; a table with one
    seed per setting, or one without N and D columns, comes back unchanged, in its row order (with ``n_seeds``
    = 1 when averaged)."""
    if runs.empty or not {"params", "tokens"} <= set(runs.columns):
        return runs
    keyed, hp_known, _, setting = _hparam_keys(runs)
    return _drop_keys(pd.concat(_seed_mean_keyed(keyed, hp_known, setting)))


def best_tuned(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (params, tokens) cell (and architecture, ``ARCH_COLUMNS``) of an LR/batch search: its
    best-tuned setting.

    L(N, D) is the loss of a model of N parameters trained on D tokens *with tuned hyper-parameters*
    (Hoffmann et al. 2022, arXiv 2203.15556, Sec. 3: each (N, D) trained at its tuned schedule; Ling,
    arXiv 2507.17702, Sec. 2: laws fitted on near-optimal hyper-parameters). An LR search trains each cell at
    several settings; the mistuned ones are not samples of L(N, D). Among the runs whose ``HPARAM_COLUMNS``
    are all known, those of one cell and one setting (they differ only in seed) are averaged first
    (``seed_mean``), then the setting with the lowest mean loss stands for the cell: its first run, with
    ``loss`` the setting's mean and ``n_seeds`` the runs averaged. Cells match to 0.1 % in N and D (a batch
    grid rounds D to whole batches). Runs without known hyper-parameters (a published table; rows at one
    (N, D) that differ in something the table does not name, such as unique data) are kept as they are. A
    table with one setting per cell and one seed comes back unchanged, in its row order."""
    if runs.empty:
        return runs
    keyed, hp_known, cell, setting = _hparam_keys(runs)
    first, kept = _seed_mean_keyed(keyed, hp_known, setting)
    best = first.sort_values("loss", kind="stable").drop_duplicates(cell)
    return _drop_keys(pd.concat([best, kept]))


def budget_labels(compute_N: np.ndarray, tol_dex: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Group runs into compute budgets: sorted log10 C values within ``tol_dex`` of a group's first
    value share it.

    Returns (label per run, geometric-mean compute per label). Sweeps launch runs at nominal budgets; the
    realised C = M·D differs by a few percent from run to run, hence the tolerance (default ±12 %).
    """
    logc = np.log10(compute_N)
    order = np.argsort(logc)
    labels = np.empty(len(logc), dtype=int)
    k, start = -1, -np.inf
    for i in order:
        if logc[i] - start > tol_dex:
            k += 1
            start = logc[i]
        labels[i] = k
    centers = np.array([10 ** logc[labels == j].mean() for j in range(k + 1)])
    return labels, centers


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Row 0: all ones (the full-data fit); rows 1..n_boot: multinomial counts of n runs drawn with
    replacement."""
    W = np.ones((n_boot + 1, n))
    if n_boot > 0:
        W[1:] = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    return W


# elements per bootstrap block (rows × runs): bounds a law's working memory on large run tables (~32 MB a
# float64 array), while tables up to 20,000 runs still take all 201 default rows in one block
BOOTSTRAP_BLOCK_ELEMENTS = 4_000_000


def bootstrap_weight_blocks(n: int, n_boot: int, rng: np.random.Generator, block_elements: int | None = None):
    """The rows of ``bootstrap_weights(n, n_boot, rng)`` (same draws, same order) in blocks of at most
    max(1, block_elements // n) rows (default ``BOOTSTRAP_BLOCK_ELEMENTS``), so a law's bootstrap never
    holds all (n_boot + 1) × n weights."""
    rows = max(1, (block_elements or BOOTSTRAP_BLOCK_ELEMENTS) // max(n, 1))
    done = -1  # row 0 (all ones) comes first
    while done < n_boot:
        k = min(rows, n_boot - done)
        W = np.empty((k, n))
        start = 0
        if done < 0:
            W[0] = 1.0
            start = 1
        if k > start:
            W[start:] = rng.multinomial(n, np.full(n, 1.0 / n), size=k - start)
        done += k
        yield W


def bootstrap_resample_blocks(
    n: int, n_boot: int, rng: np.random.Generator, block_elements: int | None = None
):
    """The resample rows of ``bootstrap_weight_blocks`` (rows 1..n_boot of ``bootstrap_weights``, same draws,
    same order; the all-ones row 0 is left out), in blocks of at most max(1, block_elements // n) rows: a
    bootstrap that works block by block holds O(block_elements) weights whatever n_boot and n."""
    first = True
    for W in bootstrap_weight_blocks(n, n_boot, rng, block_elements):
        W = W[1:] if first else W
        first = False
        if len(W):
            yield W


def percentile_ci(samples_R: np.ndarray) -> tuple[float, float]:
    """Central 95 % percentile interval of the finite bootstrap draws (NaN if none)."""
    s = samples_R[np.isfinite(samples_R)]
    if s.size < 2:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(s, [2.5, 97.5])
    return (float(lo), float(hi))


def relative_errors(pred: np.ndarray, obs: np.ndarray) -> dict[str, float]:
    """{"mean_rel_err", "max_rel_err", "n"} of |pred − obs| / |obs|."""
    rel = np.abs(np.asarray(pred) - np.asarray(obs)) / np.abs(np.asarray(obs))
    rel = rel[np.isfinite(rel)]
    if rel.size == 0:
        return {"mean_rel_err": float("nan"), "max_rel_err": float("nan"), "n": 0}
    return {"mean_rel_err": float(rel.mean()), "max_rel_err": float(rel.max()), "n": int(rel.size)}
