#!/usr/bin/env bash
# Paper Fig. 3a: Contrastive Fusion's weight alpha (alpha = 0: the same student and views, no
# contrastive term; plain DATM is --config.clr.views=extra --config.distill.student_momentum=0).
# Usage: bash launch/ablation_alpha.sh [SETTING] [overrides...]; experts from checkpoints/SETTING.
# Results: checkpoints/SETTING/ablation_alpha/alpha_<a>/results.json
set -euo pipefail
cd "$(dirname "$0")/.."
SETTING=${1:-cifar10_ipc1}; shift || true
for alpha in 0.0 0.01 0.05 0.1 0.2 0.5; do
  .venv/bin/python -m datm_clr_jax --config=configs/$SETTING.py \
    --workdir=checkpoints/$SETTING/ablation_alpha/alpha_$alpha \
    --config.experts.dir=checkpoints/$SETTING/experts --mode=all \
    --config.clr.strategy=fusion --config.clr.alpha=$alpha --config.eval.random_real=false "$@"
done
