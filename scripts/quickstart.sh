#!/usr/bin/env bash
# Set up (idempotent) and run the main job: the quickstart sweep on the embedded default —
# local Ray, a local MLflow SQLite store (./mlflow.db), the CPU, the offline default corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export RAY_AUTH_MODE=disabled
windtunnel run experiments/quickstart.yaml "$@"
