"""Where the distillation step spends its time: XLA kernels grouped by kind (run on demand).

  python launch/profile_step.py                       # c10_ipc1 shapes, N=5, matched step
  python launch/profile_step.py --setting=c10_ipc10:3 --full
  python launch/profile_step.py --setting=r1 --width=32 --kind="datm + dsa"
  python launch/profile_step.py --setting=r1 --width=32 --kind=datm-clr --views=shared --by=line
  python launch/profile_step.py --setting=c10_ipc1:10 --kind="datm + dsa" --remat=convs --by=op
  XLA_FLAGS=--xla_cpu_use_onednn=true python launch/profile_step.py   # try a flag
  python launch/profile_step.py --setting=c10_ipc1:10 --kind="datm + dsa" --torch
  python launch/profile_step.py --setting=c10_ipc1:10 --kind=datm-clr --views=shared --by=flops

Traces one call of the compiled step (benchmark.setup_distill's shapes and fake trajectories)
with the JAX profiler and prints, per kernel kind (ynn_fusion = YNNPACK matmuls and reductions,
*_fusion = XLA loop fusions, concatenate = im2col copies, ...), the total time, its share and
the time per inner step; --by=line groups them instead by the line of datm_clr_jax each came
from (the compiled module's stack frames), --by=op by each kernel's main op (convolution, dot,
reduce or elementwise) and result shape. The XLA:CPU runtime runs independent kernels
concurrently, so the sum can exceed the wall time; the wall time of the traced call is printed
beside it. A single traced call is no basis for a ratio between two steps (this CPU's speed
drifts between calls): compare steps with launch/ab_step.py or benchmark.py.

--by=flops traces nothing: it sums the FLOPs of the compiled module's matmuls and convolutions
by the JAX op path each came from (e.g. transpose(jvp())/while/body/.../TorchConv_1/...: the
backward sweep's work for layer 2), which shows work done twice, such as a forward pass that
remat recomputes. Like XLA's cost analysis it counts a loop body once.

--torch profiles the benchmark's PyTorch rendering of the same step instead (torch.profiler,
each aten op's own CPU time; PyTorch runs its ops one after another, parallel inside each, so
the sum is close to the wall time), with the op families (TORCH_FAMILIES) summed below.
"""

import argparse
import collections
import gzip
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path

# Per-kernel trace events on XLA:CPU need this flag, set before JAX starts its backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # pylint: disable=wrong-import-position

from launch.bench import benchmark, timing  # pylint: disable=wrong-import-position


def source_lines(hlo_text: str) -> dict[str, str]:
  """{kernel name: 'file.py:line function'} from a compiled module's text: the innermost
  frame in datm_clr_jax of the op each kernel (fusion) was made from, read off the module's
  FileNames / FunctionNames / FileLocations / StackFrames tables."""
  tables = {"FileNames": {}, "FunctionNames": {}, "FileLocations": {}, "StackFrames": {}}
  table, kernels = None, {}
  for line in hlo_text.splitlines():
    if line in tables:
      table = line
      continue
    if not line.strip():
      table = None
      continue
    if table in ("FileNames", "FunctionNames") and (m := re.match(r'(\d+) "(.*)"', line)):
      tables[table][int(m[1])] = m[2]
    elif table == "FileLocations" and (m := re.match(
        r"(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", line)):
      tables[table][int(m[1])] = (int(m[2]), int(m[3]), int(m[4]))
    elif table == "StackFrames" and (m := re.match(
        r"(\d+) \{file_location_id=(\d+)(?: parent_frame_id=(\d+))?", line)):
      tables[table][int(m[1])] = (int(m[2]), int(m[3]) if m[3] else None)
    elif m := re.match(r"\s*(?:ROOT )?%?([\w.-]+) = .*stack_frame_id=(\d+)", line):
      kernels[m[1]] = int(m[2])

  def where(frame):
    seen = set()
    while frame in tables["StackFrames"] and frame not in seen:
      seen.add(frame)
      loc, parent = tables["StackFrames"][frame]
      f, fn, ln = tables["FileLocations"][loc]
      if "datm_clr_jax" in tables["FileNames"][f]:
        return f"{Path(tables['FileNames'][f]).name}:{ln} {tables['FunctionNames'][fn]}"
      frame = parent
    return "(outside datm_clr_jax)"

  return {name: where(frame) for name, frame in kernels.items()}


OPS = ("convolution", "dot", "reduce")


def kernel_ops(hlo_text: str) -> dict[str, str]:
  """{kernel name: 'op output-shape'}: each fusion's main op (a convolution, a dot or a
  reduction if its fused computation holds one, else 'elementwise') and its result's shape."""
  calls, shapes, own, ops, comp = {}, {}, {}, collections.defaultdict(set), None
  for line in hlo_text.splitlines():
    if not line.startswith(" "):
      m = re.match(r"(?:ENTRY )?%?([\w.-]+) .*\{$", line)
      comp = m[1] if m else None
      continue
    m = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = (\w+\[[^\]]*\])\S* ([\w-]+)\(", line)
    if not m:
      continue
    name, shape, op = m.groups()
    shapes[name], own[name] = shape, op
    if comp:
      ops[comp].add(op)
    if op == "fusion" and (c := re.search(r"calls=%?([\w.-]+)", line)):
      calls[name] = c[1]

  def main(name):
    held = ops[calls[name]] if name in calls else {own[name]}
    return next((o for o in OPS if o in held), "elementwise")

  return {name: f"{main(name)} {shape}" for name, shape in shapes.items()}


def kernel_times(trace_dir: str, group=None) -> collections.Counter:
  """Microseconds per kernel kind (or per group[kernel name]) from the profiler's trace."""
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
    kind = re.sub(r"\.\d+$", "", name)
    kinds[group.get(name, "(no source) " + kind) if group is not None else kind] += e.get("dur", 0)
  return kinds


# aten op name -> family: the first family with a matching prefix (after "aten::"); what
# matches none is element-wise work.
TORCH_FAMILIES = (("norm", ("native_group_norm", "native_batch_norm", "instance_norm")),
                  ("convolution", ("conv", "mkldnn_conv", "_convolution")),
                  ("dot", ("mm", "addmm", "bmm", "matmul", "linear")),
                  ("reduce", ("sum", "mean", "var", "std", "linalg_vector_norm")))


def torch_family(op: str) -> str:
  """The family of an aten op name ("aten::mkldnn_convolution" -> "convolution")."""
  name = op.split("::")[-1]
  return next((family for family, prefixes in TORCH_FAMILIES if name.startswith(prefixes)),
              "elementwise")


def profile_torch(classes, ipc, n_steps, batch_syn, width, kind, views):
  """(wall seconds of one traced step, {aten op: own CPU microseconds}) of the benchmark's
  PyTorch step at these shapes."""
  tb = benchmark.Torch()
  net, _, _, traj = benchmark.setup_distill(classes, ipc, n_steps, batch_syn, width, 32,
                                            full=False, kind=kind, views=views)
  one_step = benchmark.torch_distill(tb, net, traj, classes, ipc, n_steps, batch_syn, 32, 3,
                                     kind, views)
  one_step()
  with tb.torch.profiler.profile(activities=[tb.torch.profiler.ProfilerActivity.CPU]) as prof:
    t = time.perf_counter()
    one_step()
    wall = time.perf_counter() - t
  return wall, collections.Counter({e.key: e.self_cpu_time_total
                                    for e in prof.key_averages() if e.self_cpu_time_total > 0})


def print_torch_ops(wall: float, ops: collections.Counter, n_steps: int, top: int):
  """The `top` aten ops by own time, then every family's total."""
  total = sum(ops.values())
  print(f"profiled call {wall * 1e3:.1f} ms wall; ops {total / 1e3:.1f} ms summed (own time)")
  families = collections.Counter()
  for op, us in ops.items():
    families[torch_family(op)] += us
  for rows in (ops.most_common(top), families.most_common()):
    print(f"{'op':40s} {'ms':>9s} {'share':>6s} {'ms/inner step':>14s}")
    for op, us in rows:
      print(f"{op[:40]:40s} {us / 1e3:9.1f} {us / total:6.1%} {us / 1e3 / n_steps:14.2f}")


def matmul_flops(hlo_text: str) -> collections.Counter:
  """{JAX op path: FLOPs} of every dot and convolution in a compiled module's text (2 x the
  output's size x the contraction's length), each counted once wherever it sits."""
  shapes, found = {}, []
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = \w+\[([\d,]*)\]\S* ([\w-]+)\((.*)$", line)
    if not m:
      continue
    name, dims, op, rest = m.groups()
    shapes[name] = [int(d) for d in dims.split(",") if d]
    if op in ("dot", "convolution"):
      found.append((shapes[name], op, rest))
  flops = collections.Counter()
  for out, op, rest in found:
    lhs, rhs = re.findall(r"%([\w.-]+)", rest)[:2]
    if op == "dot":
      axes = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)[1]
      k = math.prod(shapes[lhs][int(a)] for a in axes.split(",") if a)
    else:
      window = re.search(r"window=\{size=([\dx]+)", rest)
      kernel_labels = re.search(r"dim_labels=\w+_(\w+)->", rest)[1]
      k = (math.prod(int(w) for w in window[1].split("x")) if window else 1) * shapes[rhs][
          kernel_labels.index("i")]
    path = re.search(r'op_name="([^"]*)"', rest)
    path = re.sub(r"^jit\([^)]*\)/", "", path[1]) if path else "?"
    flops[path] += 2 * math.prod(out) * k
  return flops


def print_flops(compiled, top: int):
  flops = matmul_flops(compiled.as_text())
  total = sum(flops.values())
  print(f"dot and convolution: {total / 1e9:.3f} GFLOP (XLA's cost analysis, all ops: "
        f"{timing.cost_flops(compiled) / 1e9:.3f})")
  print(f"{'MFLOP':>9s} {'share':>6s}  op path")
  for path, f in flops.most_common(top):
    print(f"{f / 1e6:9.1f} {f / total:6.1%}  {path}")


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
  p.add_argument("--by", default="kind", choices=["kind", "line", "op", "flops"],
                 help="group kernels by kind, by the package source line they came from, or "
                      "by their main op (convolution, dot, reduce, elementwise) and shape; "
                      "flops: no trace, the matmul and convolution FLOPs by JAX op path")
  p.add_argument("--torch", action="store_true",
                 help="profile the benchmark's PyTorch step instead, by aten op")
  a = p.parse_args()
  name, classes, ipc, n_steps, batch_syn = benchmark.setting(a.setting, quick=False)
  kind = a.kind or ("datm-clr" if a.full else "matched")
  if a.torch:
    wall, ops = profile_torch(classes, ipc, n_steps, batch_syn, a.width, kind, a.views)
    print(f"{name}: N={n_steps} batch_syn={batch_syn} width={a.width} {kind}"
          f"{f' ({a.views} views)' if kind == 'datm-clr' else ''} PyTorch step")
    print_torch_ops(wall, ops, n_steps, a.top)
    return
  _, step, args, _ = benchmark.setup_distill(classes, ipc, n_steps, batch_syn, a.width, 32,
                                             full=a.full, conv_impl=a.conv_impl, remat=a.remat,
                                             kind=kind, views=a.views)
  compiled = step.lower(*args).compile()
  title = (f"{name}: N={n_steps} batch_syn={batch_syn} width={a.width} {kind}"
           f"{f' ({a.views} views)' if kind == 'datm-clr' else ''} step")
  if a.by == "flops":
    print(title)
    print_flops(compiled, a.top)
    return
  jax.block_until_ready(compiled(*args))
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    wall = time.perf_counter() - t
    jax.profiler.stop_trace()
    group = {"kind": lambda _: None, "line": source_lines, "op": kernel_ops}[a.by]
    kinds = kernel_times(d, group(compiled.as_text()))
  total = sum(kinds.values())
  print(f"{title}; backend {jax.default_backend()}")
  print(f"traced call {wall * 1e3:.1f} ms wall; kernels {total / 1e3:.1f} ms summed")
  width = {"kind": 32, "line": 56, "op": 40}[a.by]
  print(f"{'kernel ' + a.by:{width}s} {'ms':>9s} {'share':>6s} {'ms/inner step':>14s}")
  for kind, us in kinds.most_common(a.top):
    print(f"{kind[:width]:{width}s} {us / 1e3:9.1f} {us / total:6.1%} {us / 1e3 / n_steps:14.2f}")


if __name__ == "__main__":
  main()
