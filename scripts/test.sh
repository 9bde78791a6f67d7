#!/usr/bin/env bash
# Set up a virtual environment with the test dependencies (once), then run the whole test suite on CPU.
#   bash scripts/test.sh            # all tests
#   bash scripts/test.sh -k model   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CHINCHAX_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# The parity tests need a CPU build of PyTorch. On this project's machines torch 2.13.0 (CPU) lies on disk and
# pip takes it from there; elsewhere install a CPU wheel first (PyTorch's own CPU index) or any torch >= 2.5.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev,ray,eval,posttrain]"
export WANDB_MODE="${WANDB_MODE:-offline}"
# Many tests (and the subprocesses they start) compile the same tiny models: share compiled programs.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/.jax-cache}"
exec "$VENV/bin/python" -m pytest -q -n 2 "$@"
