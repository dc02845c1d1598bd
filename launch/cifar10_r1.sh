#!/usr/bin/env bash
# Protocol R1 (SPEC §10) on the CPU: shared experts, then random real + DATM + DATM-CLR for
# distillation seeds 0..2, 5 evaluation seeds each. Results: checkpoints/cifar10_r1/*/results.json
# Resumable: after a kill, run it again (experts, distillation and finished evaluations resume).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# The reading the committed R1 results ran with (before configs/default.py took the paper's
# shared views and student momentum 0.5 from the contrastive study): DATM-CLR as first built.
READING=(--config.clr.views=extra --config.distill.student_momentum=0.0)
ROOT=checkpoints/cifar10_r1
$PY -m datm_clr_jax --config=configs/cifar10_r1.py --workdir=$ROOT/experts_run "${READING[@]}" --mode=experts
for seed in 0 1 2; do
  for method in datm datm_clr; do
    alpha=0.1; [ "$method" = datm ] && alpha=0.0
    $PY -m datm_clr_jax --config=configs/cifar10_r1.py --workdir=$ROOT/${method}_seed$seed \
      --config.experts.dir=$ROOT/experts_run/experts --config.data.cache_dir=$ROOT/cache \
      --config.seed=$seed --config.clr.alpha=$alpha "${READING[@]}" --mode=distill
    # Re-running this script resumes: what results.json holds is kept (eval.resume).
    $PY -m datm_clr_jax --config=configs/cifar10_r1.py --workdir=$ROOT/${method}_seed$seed \
      --config.experts.dir=$ROOT/experts_run/experts --config.data.cache_dir=$ROOT/cache \
      --config.seed=$seed --config.clr.alpha=$alpha "${READING[@]}" --mode=evaluate
  done
done
