#!/usr/bin/env bash
# Protocol R1's Table 2 on the CPU: the DATM and DATM-CLR sets of one distillation seed
# (default 0) and random real, evaluated on ResNet18, VGG11 and AlexNet (5 seeds each).
# Needs launch/cifar10_r1.sh to have distilled that seed. Random real is evaluated once, in
# the DATM workdir. Each network and set takes tens of minutes on a 2-core CPU; a rerun keeps
# every number results.json already holds (eval.resume).
#   bash launch/cifar10_r1_cross_arch.sh [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=checkpoints/cifar10_r1
R1=(-m datm_clr_jax --config=configs/cifar10_r1.py:first_built
    --config.experts.dir=$ROOT/experts_run/experts --config.data.cache_dir=$ROOT/cache)
seed=${1:-0}
for arch in vgg11 alexnet resnet18; do
  for method in datm datm_clr; do
    alpha=0.1; random_real=False
    [ "$method" = datm ] && alpha=0.0 && random_real=True
    .venv/bin/python "${R1[@]}" --workdir=$ROOT/${method}_seed$seed --config.seed=$seed \
      --config.clr.alpha=$alpha --mode=evaluate "--config.eval.archs=('$arch',)" \
      --config.eval.random_real=$random_real
  done
done
