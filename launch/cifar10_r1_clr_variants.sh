#!/usr/bin/env bash
# Protocol R1 (configs/cifar10_r1.py:first_built), DATM-CLR variants beyond the paper's main
# setting, distillation seed 0 only: Contrastive Update, a weaker contrastive term, "single"
# contrastive views. Uses the experts and data cache of launch/cifar10_r1.sh (run that first).
# Random real is not re-evaluated: the same evaluation seeds give the same random-real subsets
# as in checkpoints/cifar10_r1/*_seed0. Resumable like cifar10_r1.sh. Report:
#   python -m datm_clr_jax --mode=report \
#     --report_dirs=checkpoints/cifar10_r1,checkpoints/cifar10_r1_variants \
#     --workdir=launch/results/cifar10_r1
set -euo pipefail
cd "$(dirname "$0")/.."
R1=checkpoints/cifar10_r1
ROOT=checkpoints/cifar10_r1_variants
declare -A VARIANTS=(
  [update_multiple]="--config.clr.strategy=update"        # Table 3: Contrastive Update, lam 0.1
  [fusion_alpha0.01]="--config.clr.alpha=0.01"             # a weaker contrastive term
  [fusion_single]="--config.clr.view_mode=single"          # Table 3: Fusion, single views
)
for name in update_multiple fusion_alpha0.01 fusion_single; do
  args=(-m datm_clr_jax --config=configs/cifar10_r1.py:first_built --workdir=$ROOT/${name}_seed0
        --config.experts.dir=$R1/experts_run/experts --config.data.cache_dir=$R1/cache
        --config.seed=0 --config.eval.random_real=False ${VARIANTS[$name]})
  .venv/bin/python "${args[@]}" --mode=distill
  [ -f $ROOT/${name}_seed0/results.json ] || .venv/bin/python "${args[@]}" --mode=evaluate
done
