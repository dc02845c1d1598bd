#!/usr/bin/env bash
# Paper Table 3: Contrastive Fusion vs Update, x "single" vs "multiple" contrastive views.
# Usage: bash launch/ablation_strategy.sh [SETTING] [overrides...]
#   SETTING: cifar10_ipc1 (default) | cifar10_ipc10 | cifar100_ipc1; experts come from
#   checkpoints/SETTING/experts (run launch/SETTING.sh --mode=experts first).
# Results: checkpoints/SETTING/ablation_strategy/<strategy>_<views>/results.json
# The paper's caption reads "Multiple" as several synthetic trajectories instead:
# SEGMENTS=k matches k trajectory segments per iteration (distill.num_segments) in every run,
# into <strategy>_<views>_<k>seg; the report labels those cells with the segment count.
set -euo pipefail
cd "$(dirname "$0")/.."
SETTING=${1:-cifar10_ipc1}; shift || true
SEGMENTS=${SEGMENTS:-1}
SUFFIX=$([ "$SEGMENTS" = 1 ] || echo "_${SEGMENTS}seg")
for strategy in fusion update; do
  for views in single multiple; do
    .venv/bin/python -m datm_clr_jax --config=configs/$SETTING.py \
      --workdir=checkpoints/$SETTING/ablation_strategy/${strategy}_$views$SUFFIX \
      --config.distill.num_segments="$SEGMENTS" \
      --config.experts.dir=checkpoints/$SETTING/experts --mode=all \
      --config.clr.strategy=$strategy --config.clr.view_mode=$views \
      --config.eval.random_real=false "$@"
  done
done
