#!/usr/bin/env bash
# Full-scale tiny_ipc1 (needs a GPU and tiny-imagenet-200/): experts, distillation, evaluation.
# Extra arguments are config overrides, e.g. --config.data.source=tiny_imagenet:/data/tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m datm_clr_jax --config=configs/tiny_ipc1.py --workdir=checkpoints/tiny_ipc1 "$@"
