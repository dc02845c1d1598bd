"""Each distillation step called twice in a row, the pairs taken in turns: the first call of a
pair follows another step's call, the second its own. JAX and PyTorch, DATM + DSA and DATM-CLR
(shared views, remat with the convolutions kept), at one benchmark setting:

  .venv/bin/python -m launch.bench.settled_calls c10_ipc1:20 128 3

Prints each call's median time, minor page faults and system time, first and second.
"""

import resource
import statistics
import sys
import time

from launch.bench import benchmark, timing

KINDS = ("datm + dsa", "datm-clr")


def measured(fn, log):
  """fn, appending (seconds, minor faults, system seconds) of each call to log."""
  def call():
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    log.append((t, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime))
  return call


def main(spec: str, width: int, rounds: int):
  name, classes, ipc, n_steps, batch_syn = benchmark.setting(spec, quick=False)
  tb = benchmark.Torch()
  steps = {}
  for kind in KINDS:
    net, step, args, traj = benchmark.setup_distill(
        classes, ipc, n_steps, batch_syn, width, 32, full=False, remat="convs", kind=kind,
        views="shared")
    steps[f"JAX {kind}"] = benchmark.jax_distill_call(step, args)[1]
    steps[f"PyTorch {kind}"] = benchmark.torch_distill(
        tb, net, traj, classes, ipc, n_steps, batch_syn, 32, 3, kind, "shared")
  logs = {label: [] for label in steps}
  pairs = []
  for label, fn in steps.items():
    call = measured(fn, logs[label])
    pairs.append(lambda call=call: (call(), call()))
  timing.times_interleaved(pairs, rounds, settle=False)
  print(f"{name}: N={n_steps} width={width}, {rounds} rounds; median ms (faults, system s)")
  med = {}
  for label, log in logs.items():
    log = log[2:]  # the warm-up pair
    cells = []
    for which in (0, 1):
      t, faults, sys_s = (statistics.median(v) for v in zip(*log[which::2]))
      med[label, which] = t
      cells.append(f"{t * 1e3:9.1f} ({faults:7.0f}, {sys_s:.2f})")
    print(f"{label:20s} first {cells[0]}  second {cells[1]}")
  for which, word in ((0, "first"), (1, "second")):
    jax_datm, jax_clr = med["JAX datm + dsa", which], med["JAX datm-clr", which]
    print(f"{word}: JAX DATM-CLR / DATM {jax_clr / jax_datm:.3f}; PyTorch/JAX DATM "
          f"{med['PyTorch datm + dsa', which] / jax_datm:.3f}, DATM-CLR "
          f"{med['PyTorch datm-clr', which] / jax_clr:.3f}")


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
