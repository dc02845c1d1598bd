"""Each step (JAX and PyTorch, DATM + DSA and DATM-CLR) called twice in a row per round, in
turns: the first call follows another step, the second itself.

  .venv/bin/python launch/results/settled_calls/first_and_second_call.py c10_ipc1:20 128 3
"""
import sys, time, resource, statistics
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "launch")); sys.path.insert(0, str(ROOT))
import benchmark as B
spec, width, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
name, classes, ipc, N, bs = B.setting(spec, False)
tb = B.Torch()
fns, labels = [], []
for kind in ("datm + dsa", "datm-clr"):
  net, step, args, traj = B.setup_distill(classes, ipc, N, bs, width, 32, full=False,
                                          remat="convs", kind=kind, views="shared")
  fns.append(B.jax_distill_call(step, args)[1]); labels.append("jax " + kind)
  t = B.torch_distill(tb, net, traj, classes, ipc, N, bs, 32, 3, kind, "shared"); t()
  fns.append(t); labels.append("torch " + kind)
first, second, ff, fs = ([[] for _ in fns] for _ in range(4))
for r in range(reps):
  order = list(range(len(fns)))[::1 if r % 2 == 0 else -1]
  for i in order:
    for dst, fdst in ((first, ff), (second, fs)):
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      t0 = time.perf_counter(); fns[i](); dst[i].append(time.perf_counter() - t0)
      fdst[i].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
med = statistics.median
for i, l in enumerate(labels):
  print(f"{l:18s} first {med(first[i])*1e3:8.1f} ms ({med(ff[i]):7.0f} faults)  "
        f"second {med(second[i])*1e3:8.1f} ms ({med(fs[i]):7.0f} faults)")
j = {l: (med(first[i]), med(second[i])) for i, l in enumerate(labels)}
for k, w in ((0, "first"), (1, "second")):
  d, c = j["jax datm + dsa"][k], j["jax datm-clr"][k]
  print(w, "CLR/DATM %.3f  torch/jax DATM %.3f  CLR %.3f" % (
      c / d, j["torch datm + dsa"][k] / d, j["torch datm-clr"][k] / c))
