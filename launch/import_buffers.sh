#!/usr/bin/env bash
# Reference (PyTorch) expert buffers -> our orbax experts, then distill from them.
# Usage: bash launch/import_buffers.sh SETTING BUFFER_DIR [overrides...]
#   BUFFER_DIR holds replay_buffer_<k>.pt from the reference's buffer.py (needs the torch extra).
set -euo pipefail
cd "$(dirname "$0")/.."
SETTING=$1; BUFFERS=$2; shift 2
.venv/bin/python -m datm_clr_jax --config=configs/$SETTING.py --workdir=checkpoints/$SETTING \
  --mode=experts --config.experts.import_dir="$BUFFERS" "$@"
