"""plot_laws writes PNG and SVG files for every supported figure."""

from __future__ import annotations

from windtunnel.laws import fit_laws, load_laws
from windtunnel.laws.figures import plot_laws
from windtunnel.laws.synthetic import synthetic_runs


def test_plot_laws_writes_png_and_svg(tmp_path) -> None:
    runs = synthetic_runs(100, budgets=(1e17, 4e17, 1.6e18, 6.4e18), seed=2)
    ls = fit_laws(runs, laws=["lr_opt", "params_opt", "frontier"], bootstrap=20)
    ls.laws["leverage"] = load_laws("ling").laws["leverage"]
    paths = plot_laws(runs, ls, tmp_path)
    stems = {p.stem for p in paths}
    assert stems == {"lr_opt", "isoflop_params_opt", "frontier", "leverage", "backtest"}
    assert {p.suffix for p in paths} == {".png", ".svg"}
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
