#!/usr/bin/env bash
# Protocol R1 on the CPU (configs/cifar10_r1.py, its first_built reading): shared experts,
# then random real, DATM and DATM-CLR for distillation seeds 0..2, 5 evaluation seeds each.
# Results: checkpoints/cifar10_r1/<method>_seed<s>/results.json. Resumable: after a kill, run
# it again (experts, distillation and finished evaluations resume).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=checkpoints/cifar10_r1
R1=(-m datm_clr_jax --config=configs/cifar10_r1.py:first_built
    --config.experts.dir=$ROOT/experts_run/experts --config.data.cache_dir=$ROOT/cache)
.venv/bin/python "${R1[@]}" --workdir=$ROOT/experts_run --mode=experts
for seed in 0 1 2; do
  for method in datm datm_clr; do
    alpha=0.1; [ "$method" = datm ] && alpha=0.0
    for mode in distill evaluate; do  # a rerun keeps what results.json holds (eval.resume)
      .venv/bin/python "${R1[@]}" --workdir=$ROOT/${method}_seed$seed --config.seed=$seed \
        --config.clr.alpha=$alpha --mode=$mode
    done
  done
done
