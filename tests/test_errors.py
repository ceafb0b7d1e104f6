"""The error types live in ``windtunnel.errors`` and keep their public import paths."""

from __future__ import annotations

import windtunnel.cli
import windtunnel.predict
import windtunnel.recommend
from windtunnel import errors
from windtunnel.orchestrator import spec, sweeplock, tracking


def test_public_import_paths_name_the_same_classes() -> None:
    assert windtunnel.cli.UserError is errors.UserError
    assert spec.SpecError is errors.SpecError
    assert windtunnel.recommend.RecommendError is errors.RecommendError
    assert windtunnel.predict.PredictionError is errors.PredictionError
    assert windtunnel.predict.PredictionLocked is errors.PredictionLocked
    assert tracking.TrackingUnavailable is errors.TrackingUnavailable
    assert tracking.ArtifactStoreError is errors.ArtifactStoreError
    assert sweeplock.SweepBusy is errors.SweepBusy


def test_cli_prints_a_library_user_error_as_one_line(monkeypatch, capsys) -> None:
    """An ``ArtifactStoreError`` from library code is a ``UserError``: the CLI prints one line, exit 2."""
    from windtunnel import cli_predict

    def fail(args):  # noqa: ANN001, ANN202 - stands in for the subcommand's main
        raise errors.ArtifactStoreError("cannot store laws.json in s3://bucket: access denied")

    monkeypatch.setattr(cli_predict, "main", fail)
    assert windtunnel.cli.main(["predict", "--laws", "ling", "--compute", "1e20"]) == 2
    err = capsys.readouterr().err
    assert err == "windtunnel predict: error: cannot store laws.json in s3://bucket: access denied\n"
