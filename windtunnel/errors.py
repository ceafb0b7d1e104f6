"""The error types of the windtunnel package, in one place.

``UserError`` is an error of the user's input: the CLI prints it as one line (``windtunnel CMD: error: ...``),
no traceback, exit code 2. The others are raised by library code and caught at the edge (the CLI turns them
into one line). They keep their import paths in the modules that raise them (``windtunnel.orchestrator.spec.
SpecError``, ``windtunnel.recommend.RecommendError``, ...); the law engine's ``LawError`` stays with the law
engine (``windtunnel.laws``), and the trainer's errors with the trainer (it knows nothing of this package).
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input: printed as one line, no traceback, exit code 2."""


class SpecError(ValueError):
    """A sweep spec that failed validation; the message is one line: ``field.path: problem``."""


class RecommendError(ValueError):
    """The laws or constraints do not allow a recommendation; the message names why and what would."""


class PredictionError(ValueError):
    """The law set cannot give this prediction (a law is missing, or the input is outside its domain)."""


class PredictionLocked(PredictionError):
    """A different prediction is already recorded under this key: predictions are never overwritten."""


class TrackingUnavailable(RuntimeError):
    """The tracking store stayed unreachable (or locked) past the deadline, or the metric buffer filled up."""


class ArtifactStoreError(UserError):
    """An artifact could not be stored; the message is one line naming the file, the destination and why.

    A ``UserError``: the CLI prints it as one line (exit 2) instead of a traceback.
    """


class SweepBusy(Exception):
    """Another driver holds the sweep's lock; the message is one line for the user."""


def one_line(text: object) -> str:
    """``text`` (an exception or a message) on one line: each run of whitespace becomes one space."""
    return " ".join(str(text).split())
