#!/usr/bin/env bash
# One GPU session, every phase under its own time limit (a lent device gives ~10 minutes):
#   1. the benchmark harness (launch/bench/benchmark.py), JAX and PyTorch side by side (its tables
#      are written section by section, so a phase cut by its limit keeps what it finished),
#      then experts and evaluation seeds under vmap with im2col convolutions and with hybrid
#      ones (grouped convolutions, weight gradients as batched matmuls), then the K-experts
#      curve of a width-32 ConvNet (one that leaves more of the GPU idle), then the CIFAR-10
#      IPC 1 step matching k trajectory segments per iteration;
#   2. only when T_EXPERTS, T_DISTILL, T_EVAL > 0 (the first device session ran it:
#      launch/results/gpu_c10_ipc1/), the CIFAR-10 IPC 1 protocol (DATM's values, N = 80, width 128)
#      cut to fit: EXPERTS experts of EXPERT_EPOCHS epochs (IPC 1 reads no snapshot past
#      epoch 6; the initial images are then chosen by epoch-6 experts instead of epoch-50
#      ones), as many distillation iterations as T_DISTILL seconds allow (killed with SIGINT,
#      then evaluated from the last checkpoint), the 5-seed ConvNet evaluation of 1000 epochs;
#   3. protocol R1's experts (5 x 8 epochs, width 32), only when T_R1 > 0 (the R1
#      reproduction has its experts from the CPU, so the default skips this).
# A phase whose limit is 0 is skipped. The session stops at once when JAX sees no GPU.
# Usage: OUT=<dir> DATA=<cifar10-jpeg.zip> bash launch/gpu/session.sh
# On the lent device (no registry there; ml_collections is missing from its image), the data
# and the wheel travel in the git-ignored .gpu_carry/, which the script unpacks first:
#   here:  .venv/bin/python launch/gpu/carry.py pack
#   run (carry [".gpu_carry"], timeout 600):
#          OUT=$OUT DATA=.gpu_carry/cifar10-jpeg.zip timeout 580 bash launch/gpu/session.sh
# Outputs (at most 8 files, as the device tool returns): session.log, phases.txt,
# benchmark_gpu{,_im2col,_hybrid,_narrow,_segments}.md, and when the CIFAR-10 phases ran
# outputs.tar (their results.json, syn_images.png and the rest of the run)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
OUT=${OUT:-checkpoints/gpu_out}
DATA=${DATA:-../shared/data/cifar10-jpeg.zip}
ROOT=${ROOT:-checkpoints/gpu}
EXPERTS=${EXPERTS:-10}
EXPERT_EPOCHS=${EXPERT_EPOCHS:-6}
T_BENCH=${T_BENCH:-240}
T_BENCH_IM2COL=${T_BENCH_IM2COL:-60}
T_BENCH_HYBRID=${T_BENCH_HYBRID:-60}
T_BENCH_NARROW=${T_BENCH_NARROW:-60}
T_BENCH_SEGMENTS=${T_BENCH_SEGMENTS:-100}
T_EXPERTS=${T_EXPERTS:-0}
T_DISTILL=${T_DISTILL:-0}
T_EVAL=${T_EVAL:-0}
T_R1=${T_R1:-0}
SRC=${SRC:---config.data.source=image_folder:$(realpath "$DATA")}
EXTRA=${EXTRA:-}              # more --config overrides (local smoke runs)
R1_EXTRA=${R1_EXTRA:-}
# What the first device session (launch/results/benchmark_gpu.md) left open: vmap against map
# for experts and evaluation seeds, the 'convs kept' rows at IPC 50 and CIFAR-100 IPC 10, the
# N = 80 no-remat plan, the test pass and the scan unroll. Memory goes last: its two N = 80
# compiles of the full step take the longest (the first session: 19.6-40.9 s each).
BENCH_ARGS=${BENCH_ARGS:---sections=experts,eval,distill,test,unroll,memory --settings=c10_ipc50,c100_ipc10 --remat=convs --skip_full --expert_k=1,2,4,8,16,32 --expert_loops=vmap,map --matmul_size=8192 --eval_seeds=1,5,10 --eval_loops=vmap,map --memory_settings=c100_ipc10 --memory_steps=80 --unrolls=1,4 --repeats=3}
source launch/gpu/lib.sh
start
M="$PY -m datm_clr_jax"
C10="--config=configs/cifar10_ipc1.py --workdir=$ROOT/c10_ipc1 $SRC --config.data.cache_dir=$ROOT/cache"

phase benchmark "$T_BENCH" $PY -m launch.bench.benchmark $BENCH_ARGS --out "$OUT/benchmark_gpu.md"
# Networks under vmap with im2col convolutions (batched matmuls) instead of XLA's grouped ones.
phase benchmark_im2col "$T_BENCH_IM2COL" $PY -m launch.bench.benchmark --sections=experts,eval \
  --conv_impl=im2col --expert_k=1,2,4,8,16,32 --expert_loops=vmap --eval_seeds=1,5,10 \
  --eval_loops=vmap --repeats=3 --no_torch --out "$OUT/benchmark_gpu_im2col.md"
# The same with hybrid convolutions: under vmap 'xla' differentiates into a grouped
# weight-gradient convolution, 'hybrid' into batched matmuls (models.Network.for_vmap).
phase benchmark_hybrid "$T_BENCH_HYBRID" $PY -m launch.bench.benchmark --sections=experts,eval \
  --conv_impl=hybrid --expert_k=1,2,4,8,16,32 --expert_loops=vmap --eval_seeds=1,5,10 \
  --eval_loops=vmap --repeats=3 --no_torch --out "$OUT/benchmark_gpu_hybrid.md"
# Width 32: a quarter of the channels, so one expert leaves more of the device for K at once.
phase benchmark_narrow "$T_BENCH_NARROW" $PY -m launch.bench.benchmark --sections=experts --width=32 \
  --expert_k=1,2,4,8,16,32,64 --expert_loops=vmap,map --repeats=3 --matmul_size=8192 \
  --out "$OUT/benchmark_gpu_narrow.md"
# k trajectory segments per iteration at CIFAR-10 IPC 1 (a way to fill a large GPU).
phase benchmark_segments "$T_BENCH_SEGMENTS" $PY -m launch.bench.benchmark --sections=segments \
  --segments=1,4 --segment_loops=map,vmap --repeats=3 --out "$OUT/benchmark_gpu_segments.md"
phase c10_experts "$T_EXPERTS" $M $C10 --mode=experts --config.experts.num_experts="$EXPERTS" \
  --config.experts.epochs="$EXPERT_EPOCHS" --config.experts.parallel=5 $EXTRA
phase c10_distill "$T_DISTILL" $M $C10 --mode=distill --config.experts.num_experts="$EXPERTS" \
  --config.experts.epochs="$EXPERT_EPOCHS" --config.distill.checkpoint_every=50 $EXTRA
phase c10_evaluate "$T_EVAL" $M $C10 --mode=evaluate --config.experts.num_experts="$EXPERTS" \
  --config.experts.epochs="$EXPERT_EPOCHS" $EXTRA
phase r1_experts "$T_R1" $M --config=configs/cifar10_r1.py --workdir="$ROOT/r1" --mode=experts \
  $SRC --config.data.cache_dir="$ROOT/cache" $R1_EXTRA

W="$ROOT/c10_ipc1"
KEEP=()
for f in "$ROOT/r1/experts" "$ROOT/r1/metrics.jsonl" "$W/results.json" "$W/syn_set.npz" \
         "$W/config.json" "$W/metrics.jsonl" "$W/syn_images.png"; do
  [ -e "$f" ] && KEEP+=("$f")
done
[ ${#KEEP[@]} -gt 0 ] && tar -cf "$OUT/outputs.tar" "${KEEP[@]}" 2>> "$LOG"
ls -la "$OUT" >> "$LOG"
cat "$OUT/phases.txt"
