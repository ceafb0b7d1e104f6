#!/usr/bin/env bash
# Create .venv and install windtunnel with everything it needs, from nothing.
# torch is pinned first: the CPU wheel lies on this machine's disk; an unpinned torch pulls a CUDA build.
# With --test, also the dev extra (pytest, triton for the kernel tests, megatron-core and transformers that load
# the exports, psycopg2) and the Debian packages the tests drive (chromium + chromedriver, PostgreSQL).
# Without it: the CPU install (no triton); add the `gpu` extra on a GPU machine, `server` for PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
if [ "${1:-}" = "--test" ]; then extras="[dev]"; fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".${extras}" "torch==2.13.0"
# transformers >= 5 pulls the Hub's `kernels` package, whose top-level name shadows this repository's
# kernels/ package in site-packages; transformers needs it only to fetch Hub kernels, which we never do
if python -m pip show -q kernels >/dev/null 2>&1; then python -m pip uninstall -q -y kernels; fi
# checked from outside the repository, where the working directory does not shadow site-packages
repo=$(pwd)
(cd / && python -c "import kernels, pathlib, sys; sys.exit(pathlib.Path(kernels.__file__).resolve().parent != pathlib.Path('$repo', 'kernels').resolve())") \
  || { echo "setup: 'import kernels' outside the repository does not find its kernels/ package" >&2; exit 1; }
# Debian packages the tests drive for real: chromium (dashboard browser tests), PostgreSQL (tracking server tests)
if [ -n "$extras" ]; then
  pkgs=""
  command -v chromium >/dev/null 2>&1 || pkgs="$pkgs chromium chromium-driver"
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs="$pkgs postgresql"
  if [ -n "$pkgs" ]; then
    if [ "$(id -u)" = "0" ]; then
      echo "setup: installing Debian packages for the tests:$pkgs"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
    else
      echo "setup: missing$pkgs and not root: the tests that need them will skip"
    fi
  fi
fi
echo "setup: $(python -c 'import torch, ray, mlflow, optuna; print("torch", torch.__version__, "ray", ray.__version__, "mlflow", mlflow.__version__, "optuna", optuna.__version__)')"
