#!/usr/bin/env bash
# Full-scale cifar10_ipc10 (needs a GPU and the tfds dataset): experts, distillation, evaluation.
# Extra arguments are config overrides, e.g. --config.distill.num_inner_steps=20.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m datm_clr_jax --config=configs/cifar10_ipc10.py --workdir=checkpoints/cifar10_ipc10 "$@"
