"""The cost of touching 512 MiB of fresh pages, right after freeing the same amount
and after waiting some seconds (free page reporting hands freed memory to the host).

  .venv/bin/python launch/results/settled_calls/touch_after_free.py
"""
import time, resource, sys
import numpy as np
n = 512 * 2**20 // 4
def touch():
  f0 = resource.getrusage(resource.RUSAGE_SELF)
  t0 = time.perf_counter(); a = np.empty(n, np.float32); a.fill(1.0); t = time.perf_counter() - t0
  f1 = resource.getrusage(resource.RUSAGE_SELF)
  return a, t, f1.ru_minflt - f0.ru_minflt, f1.ru_stime - f0.ru_stime
a, *_ = touch(); del a
for wait in [0, 0, 5, 0, 10, 0, 5, 0]:
  time.sleep(wait)
  a, t, f, s = touch()
  a.fill(2.0); t0 = time.perf_counter(); a.fill(3.0); t_re = time.perf_counter() - t0
  del a
  print(f"after {wait:2d} s: touch {t*1e3:7.1f} ms, {f} faults, sys {s:.2f} s; rewrite {t_re*1e3:.1f} ms", flush=True)
