"""Check a laws.json before the recommender uses it: every coefficient a law needs, present and finite.

A hand-edited file is the usual source of a bad law set; the error names the law and the key
(``law 'lr_opt': coefficient 'b' is missing``) so one line says what to fix. Only the laws the recommender
reads are checked (docs/DESIGN.md "Contracts", law file names and coefficient keys); other laws pass through
untouched.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from windtunnel.errors import RecommendError
from windtunnel.laws import load_laws
from windtunnel.laws.lawset import LawSet

_POWER = ("a", "b")
REQUIRED_COEFFICIENTS: dict[str, tuple[str, ...]] = {
    **{
        name: _POWER
        for base in ("lr_opt", "batch_opt", "m_opt", "d_opt", "params_opt")
        for name in (base, f"{base}_dense")
    },
    "parametric": ("E", "A", "B", "alpha", "beta"),
    "frontier": ("E", "A", "alpha"),
    "leverage": ("a", "d", "gamma", "beta", "A_start", "A_max"),
}


def law_problem(name: str, entry: Any) -> str | None:
    """Why the laws.json entry of law ``name`` cannot be used, or None when it can."""
    if not isinstance(entry, dict):
        return f"law {name!r}: expected an object, got {type(entry).__name__}"
    coefficients = entry.get("coefficients")
    if not isinstance(coefficients, dict):
        return f"law {name!r}: 'coefficients' must be an object of numbers"
    for key in REQUIRED_COEFFICIENTS.get(name, ()):
        if key not in coefficients:
            return f"law {name!r}: coefficient {key!r} is missing"
    for key, value in coefficients.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"law {name!r}: coefficient {key!r} must be a number, got {json.dumps(value)[:40]}"
        if not math.isfinite(value):
            return f"law {name!r}: coefficient {key!r} must be finite, got {value}"
    if name in REQUIRED_COEFFICIENTS and REQUIRED_COEFFICIENTS[name] == _POWER and coefficients["a"] <= 0:
        return f"law {name!r}: coefficient 'a' must be positive (a·C^b is positive), got {coefficients['a']}"
    return None


def check_laws_dict(data: Any) -> None:
    """Raise RecommendError naming the first law and key that is unusable."""
    if not isinstance(data, dict) or not isinstance(data.get("laws"), dict):
        raise RecommendError('a laws file must be a JSON object with a "laws" mapping')
    for name, entry in data["laws"].items():
        problem = law_problem(name, entry)
        if problem is not None:
            raise RecommendError(problem)


def load_checked_laws(source: str | Path) -> LawSet:
    """``ling`` or a laws.json path, checked; every failure is a RecommendError with a one-line message."""
    if str(source) != "ling":
        path = Path(source)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            hint = " (use 'ling' for the built-in set)" if isinstance(err, FileNotFoundError) else ""
            raise RecommendError(f"cannot read laws {str(source)!r}: {err.strerror or err}{hint}") from None
        try:
            data = json.loads(text, parse_constant=lambda c: float(c))
        except ValueError as err:
            raise RecommendError(f"laws {str(source)!r} is not valid JSON: {err}") from None
        check_laws_dict(data)
    try:
        return load_laws(source)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RecommendError(f"cannot load laws {str(source)!r}: {err}") from None
