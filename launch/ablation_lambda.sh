#!/usr/bin/env bash
# Paper Fig. 3b: Contrastive Update's weight lambda on the student step.
# Usage: bash launch/ablation_lambda.sh [SETTING] [overrides...]; experts from checkpoints/SETTING.
# Results: checkpoints/SETTING/ablation_lambda/lambda_<l>/results.json
set -euo pipefail
cd "$(dirname "$0")/.."
SETTING=${1:-cifar10_ipc1}; shift || true
for lam in 0.01 0.1 0.5 1.0; do
  .venv/bin/python -m datm_clr_jax --config=configs/$SETTING.py \
    --workdir=checkpoints/$SETTING/ablation_lambda/lambda_$lam \
    --config.experts.dir=checkpoints/$SETTING/experts --mode=all \
    --config.clr.strategy=update --config.clr.lam=$lam --config.eval.random_real=false "$@"
done
