"""Sweep progress: trials by state (pending/running/finished/diverged/pruned/failed) and an ETA.

``SweepProgress`` is fed by a Ray Tune ``Callback`` during ``windtunnel run`` and rebuilt from the tracking
store by ``windtunnel status``. ETA = remaining work / observed rate, where work is measured in trial
fractions (tokens seen / tokens planned): eta_rate = (n_todo - done_work) * elapsed / done_work. With the
planner's estimate of the whole sweep (``planned_s``, ``windtunnel plan``) the ETA starts from the plan and
moves to the observed rate as work gets done: eta_plan = planned_s * (n_todo - done_work) / total,
w = done_work / n_todo, eta = (1 - w) * eta_plan + w * eta_rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

STATES = ("pending", "running", "finished", "diverged", "pruned", "failed")


@dataclass
class SweepProgress:
    sweep: str
    total: int
    already_done: dict[str, int] = field(default_factory=dict)  # state -> count, done before this run
    started_at: float = field(default_factory=time.monotonic)
    states: dict[str, str] = field(default_factory=dict)  # trial key -> state (this run)
    fractions: dict[str, float] = field(default_factory=dict)  # trial key -> share of its tokens done
    planned_s: float | None = None  # the planner's wall-time estimate of the whole sweep

    def set_state(self, key: str, state: str) -> None:
        self.states[key] = state
        if state in ("finished", "diverged", "pruned", "failed"):
            self.fractions[key] = 1.0

    def set_fraction(self, key: str, fraction: float) -> None:
        self.fractions[key] = max(0.0, min(1.0, float(fraction)))

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for state, n in self.already_done.items():
            out[state] = out.get(state, 0) + n
        for state in self.states.values():
            out[state] = out.get(state, 0) + 1
        seen = sum(v for k, v in out.items() if k != "pending")
        out["pending"] = max(0, self.total - seen)
        return out

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left (module docstring): the plan blended with the work rate so far; None before any
        progress when there is no plan."""
        now = time.monotonic() if now is None else now
        todo = self.total - sum(self.already_done.values())
        done = sum(self.fractions.values())
        elapsed = now - self.started_at
        planned = self.planned_s is not None and self.planned_s == self.planned_s and self.total > 0
        eta_plan = self.planned_s * max(0.0, todo - done) / self.total if planned else None  # type: ignore[operator]
        if done <= 0 or elapsed <= 0:
            return None if eta_plan is None else max(0.0, eta_plan - elapsed)
        eta_rate = max(0.0, (todo - done) * elapsed / done)
        if eta_plan is None:
            return eta_rate
        w = min(1.0, done / todo) if todo > 0 else 1.0
        return max(0.0, (1 - w) * eta_plan + w * eta_rate)

    def line(self) -> str:
        c = self.counts()
        parts = [f"{k} {c[k]}" for k in STATES if c[k] or k in ("pending", "running", "finished")]
        eta = self.eta_s()
        eta_txt = "ETA --" if eta is None else f"ETA {format_seconds(eta)}"
        return f"{self.sweep}: {self.total} trials | " + " | ".join(parts) + f" | {eta_txt}"

    def table(self) -> Any:
        from rich.table import Table

        c = self.counts()
        t = Table(title=f"sweep {self.sweep} ({self.total} trials)")
        for s in STATES:
            t.add_column(s, justify="right")
        t.add_column("ETA", justify="right")
        eta = self.eta_s()
        t.add_row(*[str(c[s]) for s in STATES], "--" if eta is None else format_seconds(eta))
        return t


def format_seconds(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


LIVE_DISPLAYS: dict[
    int, Any
] = {}  # rich Live displays by id: kept out of the callback (Tune pickles callbacks)


def make_callback(
    progress: SweepProgress,
    live: Any | None = None,
    scheduler: Any | None = None,
    tracking_uri: str | None = None,
) -> Any:
    """A Ray Tune Callback that updates ``progress`` (and refreshes a rich ``Live`` if given)."""
    from windtunnel.orchestrator.tune_callback import ProgressCallback

    key = id(live) if live is not None else None
    if live is not None:
        LIVE_DISPLAYS[key] = live
    return ProgressCallback(progress, key, scheduler, tracking_uri)
