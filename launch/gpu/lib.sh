# Shared by the device scripts (launch/gpu/session.sh, launch/gpu/g1.sh); source it after
# setting PY, OUT and ROOT, then call start.

start() {  # the output folders and log, the carried files unpacked, the device probed
  export PYTHONUNBUFFERED=1
  mkdir -p "$OUT" "$ROOT"
  LOG="$OUT/session.log"
  unpack_carry
  probe
}

phase() {  # phase NAME LIMIT_S CMD...: runs CMD under a time limit, logs rc and seconds
  local name=$1 limit=$2 t0 rc
  shift 2
  [ "$limit" -gt 0 ] || return 0
  t0=$(date +%s)
  echo "=== $name (limit ${limit}s) $(date -u +%T): $*" >> "$LOG"
  # SIGINT first: a distillation saves its last finished iteration before it exits.
  timeout -s INT -k 15 "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/phases.txt" >> "$LOG"
}

unpack_carry() {  # what launch/gpu/carry.py packed: wheels into /tmp/site, the data unpacked
  local carry=${CARRY:-.gpu_carry}
  [ -d "$carry" ] || return 0
  if compgen -G "$carry/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$carry"/*.whl \
      >> "$LOG" 2>&1 || { echo "the carried wheels do not install: stopping" | tee -a "$OUT/phases.txt"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  compgen -G "$carry/*.xz" > /dev/null || return 0
  # xz and sha256sum stand in where this Python was built without lzma.
  $PY "$(dirname "${BASH_SOURCE[0]}")/carry.py" unpack --carry "$carry" >> "$LOG" 2>&1 ||
    (cd "$carry" && for f in *.xz; do
       xz -dkf "$f" && sha256sum -c "${f%.xz}.sha256" || exit 1
     done) >> "$LOG" 2>&1 ||
    { echo "the carried data does not unpack: stopping" | tee -a "$OUT/phases.txt"; exit 1; }
}

probe() {  # records the device and versions; exits when JAX sees no GPU or the package fails
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
      || echo "no nvidia-smi"; $PY -c "import jax; print('jax', jax.__version__, jax.devices())"; } \
    >> "$OUT/phases.txt" 2>&1
  if [ -z "${ALLOW_CPU:-}" ] && ! $PY -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"
  then
    echo "JAX sees no GPU: stopping (ALLOW_CPU=1 runs the phases anyway)" | tee -a "$OUT/phases.txt"
    exit 1
  fi
  $PY -c "import datm_clr_jax.pipeline, flax, optax, orbax.checkpoint as ocp, ml_collections
print('flax', flax.__version__, 'optax', optax.__version__)" >> "$OUT/phases.txt" 2>&1 || {
    echo "the package does not import: stopping" | tee -a "$OUT/phases.txt"; exit 1; }
}
