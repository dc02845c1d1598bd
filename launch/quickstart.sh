#!/usr/bin/env bash
# Fresh machine -> distilled digits in checkpoints/quickstart/ (no download needed).
# Extra arguments go to the program, e.g. --config.distill.iterations=50.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec .venv/bin/python -m datm_clr_jax "$@"
