"""The law engine: Ling-style scaling laws with bootstrap uncertainty and backtests (see
docs/CONTRACTS.md)."""

from windtunnel.laws.base import Law, LawError
from windtunnel.laws.lawset import DEFAULT_LAWS, LawSet, fit_laws, load_laws

__all__ = ["DEFAULT_LAWS", "Law", "LawError", "LawSet", "fit_laws", "load_laws"]
