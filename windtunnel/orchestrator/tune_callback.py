"""Ray Tune ``Callback`` feeding ``SweepProgress`` (kept in its own module: it imports Ray at import time)."""

from __future__ import annotations

import warnings
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler

from windtunnel.orchestrator.progress import LIVE_DISPLAYS, SweepProgress


class ProgressCallback(Callback):
    """Trial states from Tune events; a trial that ends before ``progress == 1`` was pruned."""

    def __init__(
        self,
        progress: SweepProgress,
        live_key: int | None = None,
        scheduler: Any | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        self.progress = progress
        self.live_key = live_key
        self.scheduler = scheduler
        self.tracking_uri = tracking_uri

    def _refresh(self) -> None:
        live = LIVE_DISPLAYS.get(self.live_key) if self.live_key is not None else None
        if live is not None:
            live.update(self.progress.table())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.progress.set_state(trial.trial_id, "running")
        self._refresh()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "progress" in result:
            self.progress.set_fraction(trial.trial_id, result["progress"])
        self._refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        pruned = self.scheduler is not None and trial.trial_id in getattr(self.scheduler, "pruned", set())
        if pruned and last.get("mlflow_run_id") and self.tracking_uri:
            from mlflow import MlflowClient

            from windtunnel.orchestrator.tracking import with_retry

            client = MlflowClient(self.tracking_uri)
            with_retry(client.set_tag, last["mlflow_run_id"], "pruned", "1")
            why = (
                f"pruned by {type(self.scheduler).__name__} at {last.get('tokens_seen', 0):.0f} tokens "
                f"(val_loss {last.get('val_loss', float('nan')):.4g})"
            )
            with_retry(client.set_tag, last["mlflow_run_id"], "pruned_reason", why)
            # the stopped trial's thread is not resumed (reuse_actors), so the driver ends its MLflow run
            with_retry(client.set_terminated, last["mlflow_run_id"], "KILLED")
        if last.get("diverged"):
            state = "diverged"
        elif pruned:
            state = "pruned"
        elif last.get("progress", 0.0) < 1.0:
            state = "failed"
        else:
            state = "finished"
        self.progress.set_state(trial.trial_id, state)
        self._refresh()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.progress.set_state(trial.trial_id, "failed")
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        if run_id and self.tracking_uri:  # no retry left: a run its dead worker/node left open is closed
            from windtunnel.orchestrator.trial import close_lost_run

            try:
                close_lost_run(self.tracking_uri, run_id, getattr(trial, "max_failures", None))
            except Exception as err:  # noqa: BLE001 - the store being down must not end the sweep
                warnings.warn(f"could not close the lost run {run_id}: {err}", stacklevel=1)
        self._refresh()


class _RecordPrunes:
    """Mixin: remember the trials this scheduler stopped (so their runs are tagged ``pruned``)."""

    pruned: set[str]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]
        if action == TrialScheduler.STOP and result.get("progress", 0.0) < 1.0:
            self.pruned.add(trial.trial_id)
        return action


class PruningASHA(_RecordPrunes, ASHAScheduler):
    """ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning") that records prunes."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.pruned = set()


class PruningMedian(_RecordPrunes, MedianStoppingRule):
    """Median stopping rule (Golovin et al. 2017, Google Vizier) that records prunes."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.pruned = set()
