#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
. .venv/bin/activate
export RAY_AUTH_MODE=disabled TRITON_INTERPRET=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
ruff check .
python -m pytest -q -p no:cacheprovider --timeout=900 --durations=25 "$@"
