#!/usr/bin/env bash
# Create .venv and install windtunnel with everything it needs, from nothing.
# torch is pinned first: the CPU wheel lies on this machine's disk; an unpinned torch pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
echo "setup: $(python -c 'import torch, ray, mlflow, optuna, triton; print("torch", torch.__version__, "ray", ray.__version__, "mlflow", mlflow.__version__, "optuna", optuna.__version__, "triton", triton.__version__)')"
