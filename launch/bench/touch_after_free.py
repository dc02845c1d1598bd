"""The cost of touching 512 MiB of fresh pages right after freeing as much, and after a wait
of some seconds (a balloon that reports free pages hands freed memory back to the host):

  .venv/bin/python -m launch.bench.touch_after_free
"""

import resource
import time

import numpy as np

FLOATS = 512 * 2**20 // 4
WAITS = (0, 0, 5, 0, 10, 0, 5, 0)  # seconds between a free and the next touch


def touch():
  """A fresh 512 MiB array, filled; its seconds, minor faults and system seconds."""
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  a = np.empty(FLOATS, np.float32)
  a.fill(1.0)
  t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
  return a, t, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime


def main():
  touch()  # a first array, freed at once
  for wait in WAITS:
    time.sleep(wait)
    a, t, faults, sys_s = touch()
    t0 = time.perf_counter()
    a.fill(3.0)  # the same pages again, already mapped
    rewrite = time.perf_counter() - t0
    del a
    print(f"after {wait:2d} s: touch {t * 1e3:7.1f} ms, {faults} faults, system {sys_s:.2f} s; "
          f"rewrite {rewrite * 1e3:.1f} ms", flush=True)


if __name__ == "__main__":
  main()
