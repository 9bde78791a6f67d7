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
# ...every one of them: the tiny models compile in well under JAX's default 1 s threshold for caching, and the
# tests' subprocesses and sweep workers compile the same ones again (a subprocess-heavy test: 57 -> 46 CPU s).
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
exec "$VENV/bin/python" -m pytest -q -n 2 "$@"
