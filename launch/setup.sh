#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the package with its test extra. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# EXTRAS (default "test") names the optional extras; the test script adds data (tfds
# preparation), tensorboard and wandb, so CI tests them.
.venv/bin/python -m pip install -q -e ".[${EXTRAS:-test}]"
# WITH_TORCH=1 (the test script sets it) adds the optional torch extra, pinned to the CPU build
# on disk here (a plain `torch` would pull a multi-GB CUDA build). Without torch the PyTorch
# interop tests skip and say why; the quickstart does not need it.
if [ "${WITH_TORCH:-0}" = 1 ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q torch==2.13.0 \
    || echo "setup: torch not installed; PyTorch interop is unavailable, its tests will skip"
fi
