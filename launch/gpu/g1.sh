#!/usr/bin/env bash
# The device call a lent session makes first: protocol G1 (configs/cifar10_g1.py) for the contrastive
# study's arms, then the performance issue's GPU rows, each phase under its own time limit.
#   1. g1: the study runner on launch/results/g1/plan.json (configs/cifar10_g1.py: 10 experts
#      of 6 epochs, width 128, N = 80, 1,000 iterations, seed 0; cells A0, then the arms
#      under study, in the plan's order); each cell distills and evaluates (5 seeds), and
#      its results.json, metrics.jsonl and cell.json land in launch/results/g1/runs/;
#   2. runs: K = 1, 3, 6 independent distillation runs compiled into one program
#      (launch.bench.benchmark --sections=runs, launch/bench/parallel.py) at CIFAR-10 IPC 1.
# Usage (the device has no registry and no ml_collections; the data and the wheel travel in
# the git-ignored .gpu_carry/, which the script unpacks first):
#   here:  .venv/bin/python launch/gpu/carry.py pack
#   run (carry [".gpu_carry"], timeout 600):  OUT=$OUT timeout 570 bash launch/gpu/g1.sh
# Sizes: at the step times of launch/results/benchmark_gpu.md, A0 and one arm fit T_G1 with
# their evaluations; a second arm may be cut by the limit (its checkpoint is lost with the
# machine: the next lease runs it again).
# Outputs: phases.txt, session.log, benchmark_gpu_runs.md and g1.tar (the plan folder's
# runs/, summary.json, table.md and plots, and each cell's config.json and syn_images.png).
# A local smoke run: ALLOW_CPU=1 PLAN=<a plan with tiny overrides> bash launch/gpu/g1.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
OUT=${OUT:-checkpoints/gpu_out}
PLAN=${PLAN:-launch/results/g1/plan.json}
ROOT=${ROOT:-checkpoints/g1}
T_G1=${T_G1:-450}
T_RUNS=${T_RUNS:-90}
RUNS_ARGS=${RUNS_ARGS:---runs_setting=c10_ipc1 --runs=1,3,6 --clr_views=shared --repeats=5}
source launch/gpu/lib.sh
start

phase g1 "$T_G1" $PY -m datm_clr_jax --mode=study --study="$PLAN" --workdir="$ROOT"
phase runs "$T_RUNS" $PY -m launch.bench.benchmark --sections=runs --runs_kinds=datm-clr \
  $RUNS_ARGS --out "$OUT/benchmark_gpu_runs.md"

RESULTS=$(dirname "$PLAN")
KEEP=()
for f in "$RESULTS"/runs "$RESULTS"/summary.json "$RESULTS"/table.md "$RESULTS"/*.png \
         "$ROOT"/*/config.json \
         "$ROOT"/*/syn_images.png; do
  [ -e "$f" ] && KEEP+=("$f")
done
[ ${#KEEP[@]} -gt 0 ] && tar -cf "$OUT/g1.tar" "${KEEP[@]}" 2>> "$LOG"
ls -la "$OUT" >> "$LOG"
cat "$OUT/phases.txt"
