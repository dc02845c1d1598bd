"""Where the distillation step spends its time: XLA kernels grouped by kind (run on demand).

  python launch/profile_step.py                       # c10_ipc1 shapes, N=5, matched step
  python launch/profile_step.py --setting=c10_ipc10:3 --full
  python launch/profile_step.py --setting=r1 --width=32 --kind="datm + dsa"
  XLA_FLAGS=--xla_cpu_use_onednn=true python launch/profile_step.py   # try a flag

Traces one call of the compiled step (benchmark.setup_distill's shapes and fake trajectories)
with the JAX profiler and prints, per kernel kind (ynn_fusion = YNNPACK matmuls and reductions,
*_fusion = XLA loop fusions, concatenate = im2col copies, ...), the total time, its share and
the time per inner step. The XLA:CPU runtime runs independent kernels concurrently, so the sum
can exceed the wall time; the wall time of the traced call is printed beside it.
"""

import argparse
import collections
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

# Per-kernel trace events on XLA:CPU need this flag, set before JAX starts its backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # pylint: disable=wrong-import-position

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # pylint: disable=wrong-import-position


def kernel_times(trace_dir: str) -> collections.Counter:
  """Microseconds per kernel kind from the perfetto trace the profiler wrote."""
  path = sorted(Path(trace_dir).glob("**/*.json.gz"))[-1]
  trace = json.load(gzip.open(path))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  kinds = collections.Counter()
  for e in events:
    name = e.get("name", "")
    # Host-side python frames and the executor's own wait/execute spans are not kernels.
    if e.get("ph") != "X" or name.startswith("$") or "Thunk" in name or "Await" in name:
      continue
    if "PjRt" in name or "PjitFunction" in name:
      continue
    kinds[re.sub(r"\.\d+$", "", name)] += e.get("dur", 0)
  return kinds


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--setting", default="c10_ipc1:5", help="benchmark setting, NAME[:N]")
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--full", action="store_true", help="DATM-CLR step (same as --kind=datm-clr)")
  p.add_argument("--kind", default=None, choices=list(benchmark.KINDS),
                 help="step kind as the benchmark's rows name them (default: matched)")
  p.add_argument("--views", default="extra", choices=["extra", "shared"],
                 help="contrastive views of the datm-clr kind")
  p.add_argument("--conv_impl", default="auto")
  p.add_argument("--top", type=int, default=20)
  p.add_argument("--remat", default="1", choices=list(benchmark.REMAT_MODES))
  a = p.parse_args()
  name, classes, ipc, n_steps, batch_syn = benchmark.setting(a.setting, quick=False)
  kind = a.kind or ("datm-clr" if a.full else "matched")
  _, step, args, _ = benchmark.setup_distill(classes, ipc, n_steps, batch_syn, a.width, 32,
                                             full=a.full, conv_impl=a.conv_impl, remat=a.remat,
                                             kind=kind, views=a.views)
  compiled = step.lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    wall = time.perf_counter() - t
    jax.profiler.stop_trace()
    kinds = kernel_times(d)
  total = sum(kinds.values())
  print(f"{name}: N={n_steps} batch_syn={batch_syn} width={a.width} "
        f"{kind}{f' ({a.views} views)' if kind == 'datm-clr' else ''} step; backend {jax.default_backend()}")
  print(f"traced call {wall * 1e3:.1f} ms wall; kernels {total / 1e3:.1f} ms summed")
  print(f"{'kernel kind':32s} {'ms':>9s} {'share':>6s} {'ms/inner step':>14s}")
  for kind, us in kinds.most_common(a.top):
    print(f"{kind[:32]:32s} {us / 1e3:9.1f} {us / total:6.1%} {us / 1e3 / n_steps:14.2f}")


if __name__ == "__main__":
  main()
