def test_non_finite_values_round_trip_as_null(tmp_path):
    """A failed bootstrap draw (NaN) must not make laws.json unwritable: it is stored as null."""
    import json as _json
    import math as _math

    from windtunnel.laws.base import Law
    from windtunnel.laws.lawset import LawSet

    law = Law(
        name="frontier",
        form="L = E + A*C^-alpha",
        coefficients={"E": float("nan"), "A": 2.0, "alpha": 0.1},
        ci95={},
        n_runs=3,
        run_ids=["a", "b", "c"],
        backtest={"mean_rel_err": float("inf")},
        samples={"A": [2.0, float("nan")]},
    )
    path = LawSet(laws={"frontier": law}).to_json(tmp_path / "laws.json")
    data = _json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert data["laws"]["frontier"]["coefficients"]["E"] is None
    assert data["laws"]["frontier"]["samples"]["A"] == [2.0, None]
    back = LawSet.from_json(path).laws["frontier"]
    assert _math.isnan(back.coefficients["E"]) and back.coefficients["A"] == 2.0
