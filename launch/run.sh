#!/usr/bin/env bash
# One setting, experts -> distillation -> evaluation, into checkpoints/SETTING/:
#   bash launch/run.sh SETTING [flags...]
# SETTING names a config in configs/ (cifar10_ipc1, cifar10_ipc10, cifar10_ipc50,
# cifar100_ipc1, cifar100_ipc10, tiny_ipc1, cifar10_r1, ...), optionally with its variant
# (cifar10_r1:first_built); flags such as --config.distill.num_inner_steps=20 or
# --mode=evaluate go to the program. A rerun resumes the run.
set -euo pipefail
cd "$(dirname "$0")/.."
SETTING=${1:?usage: bash launch/run.sh SETTING [flags...]}
shift
NAME=${SETTING%%:*}
VARIANT=$([ "$NAME" = "$SETTING" ] || echo ":${SETTING#*:}")
if [ ! -f "configs/$NAME.py" ]; then
  echo "error: no config configs/$NAME.py; the settings are:" \
    $(cd configs && ls *.py | sed 's/\.py$//' | grep -v default) >&2
  exit 2
fi
exec .venv/bin/python -m datm_clr_jax --config="configs/$NAME.py$VARIANT" \
  --workdir="checkpoints/${SETTING/:/_}" "$@"
