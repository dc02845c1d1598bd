#!/usr/bin/env bash
# Protocol R1's Table 2 on the CPU: the DATM and DATM-CLR sets of one distillation seed (default
# 0), and random real, evaluated on ResNet18, VGG11 and AlexNet (5 evaluation seeds each).
# Needs launch/cifar10_r1.sh to have distilled that seed. Random real is evaluated once, in the
# DATM workdir (the report reads it from there). Each network and set takes 22-71 minutes on a
# 2-core CPU; a rerun keeps every number results.json already holds (eval.resume), so a kill
# loses one network's evaluation at most. Usage: bash launch/cifar10_r1_cross_arch.sh [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# The reading the committed R1 results ran with (before configs/default.py took the paper's
# shared views and student momentum 0.5 from the contrastive study): DATM-CLR as first built.
READING=(--config.clr.views=extra --config.distill.student_momentum=0.0)
ROOT=checkpoints/cifar10_r1
seed=${1:-0}
for arch in vgg11 alexnet resnet18; do
  for method in datm datm_clr; do
    alpha=0.1; random_real=False
    [ "$method" = datm ] && alpha=0.0 && random_real=True
    $PY -m datm_clr_jax --config=configs/cifar10_r1.py --workdir=$ROOT/${method}_seed$seed \
      --config.experts.dir=$ROOT/experts_run/experts --config.data.cache_dir=$ROOT/cache \
      --config.seed=$seed --config.clr.alpha=$alpha "${READING[@]}" --mode=evaluate \
      "--config.eval.archs=('$arch',)" --config.eval.random_real=$random_real
  done
done
