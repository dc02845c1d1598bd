"""Benchmark harness: JAX beside a minimal PyTorch implementation, in one run, on one machine.

Run on demand (not part of the tests):
  .venv/bin/python launch/benchmark.py                       # every section, CPU-sized
  .venv/bin/python launch/benchmark.py --sections=distill --settings=c10_ipc1,c10_ipc10
  .venv/bin/python launch/benchmark.py --quick               # tiny shapes: a smoke run

Sections (each prints a markdown table; --out also writes them to a file):
  distill  one outer distillation step at each setting's real shapes (ConvNet width 128, the
           setting's N and batch_syn). "matched" rows do the same work in both frameworks:
           N unrolled soft-CE SGD steps on the synthetic minibatch, L_tm, gradients w.r.t.
           images, label logits and syn_lr, and the SGD-momentum updates; no DSA, no
           contrastive term (PyTorch: flat functional parameters, create_graph=True, as
           MTT/DATM do). "datm + dsa" rows add DSA in single mode to every inner step, as a
           DATM run takes it, and "datm-clr" rows the contrastive term of Contrastive Fusion
           as well (two "multiple"-DSA views, features, a random head, SupCon, alpha 0.1;
           --clr_views=extra|shared): the steps runs really take, with PyTorch's rendering in
           launch/bench/torch_dsa.py. --skip_full leaves those two out.
           --remat=1,convs,0 times the JAX step with per-step rematerialisation, with remat
           that also keeps the convolution outputs (config.distill.remat_convs), and without remat
           (PyTorch keeps every step's graph: it never recomputes, and uses memory linear in N).
           "GFLOP per inner step" is XLA's cost analysis of the compiled step, which counts
           the scan body once: the rows' ratios are the ratios of the work each step does.
  memory   peak memory of the compiled DATM-CLR step (XLA's memory analysis) for N = 20/40/80,
           for each --memory_remat mode (default: with and without remat).
  unroll   the DATM-CLR step at one setting for several lax.scan unroll factors.
  dsa      the DATM step with one DSA op family at every inner step (--dsa_setting; single
           mode of a one-op strategy), beside no DSA, the full strategy in single and
           multiple mode, and rotation's former dense form; calls in turns, JAX only.
  runs     K independent distillation runs in one compiled program (launch/bench/parallel.py;
           --runs=1,3,6 --runs_setting --runs_kinds), JAX only: time of the K-run step against
           K steps of one run, a kind's calls taken in turns.
  segments the DATM-CLR step matching k trajectory segments per iteration
           (config.distill.num_segments; --segments, --segment_loops map/vmap), JAX only:
           segments/s, against the first row.
  experts  expert-training throughput (images/s) with K experts in one compiled epoch (at once
           under vmap or in turn under lax.map: --expert_loops; split over all devices when
           there are several, as experts.train does), against PyTorch training the same K one
           after another (no DSA in either). GFLOP/s = images/s x XLA's FLOP count of one
           training step per image, beside a large float32 matmul's rate in the same run
           (--matmul_size): how much of the device one expert leaves for more.
  eval     evaluation throughput: S seeds trained on the synthetic set in one compiled call
           (JAX, seeds under vmap or in turn under lax.map: --eval_loops) against S
           sequential PyTorch runs (SGD momentum + weight decay, no DSA in either;
           --eval_dsa adds DSA to the JAX runs and drops PyTorch). --eval_arch times another
           network (models.ARCHS), JAX only. --eval_progress=0,P times the loop without and
           with its progress callback every P epochs (eval.progress_every), in turns.
  test     the test-set pass after evaluation training: S networks' accuracy on
           --test_images images (evaluate.make_tester, networks under vmap or in turn:
           --eval_loops, --eval_seeds) for each of --test_archs, against S sequential PyTorch
           ConvNet forward passes.

Times are medians of --repeats calls after a warm-up call (the distill section takes all of a
setting's calls, both frameworks, in turns); "compile" is lowering plus XLA compilation of
the jitted function. Ratios are PyTorch time / JAX time (> 1: JAX is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib
import os
import statistics
import sys
import time
import types
from pathlib import Path

# JAX must not take 75% of an accelerator up front: PyTorch runs in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from datm_clr_jax import augment, evaluate, experts, losses, sharding, torch_io  # noqa: E402
from datm_clr_jax.models import make_network  # noqa: E402
from launch.bench import parallel, torch_dsa  # noqa: E402
from launch.bench.timing import (  # noqa: E402
    OOM, compiled_peak, cost_flops, fmt_bytes, fmt_compile, fmt_gflop, fmt_mflop, fmt_rate,
    fmt_round_ratios, fmt_s, is_oom, loop_label, machine, median_time, median_times_interleaved, ratio, table,
    times_interleaved)


def library(package: str = "datm_clr_jax") -> types.SimpleNamespace:
  """What setup_distill builds a step from, out of `package`: this tree's, or an older copy
  (launch/bench/ab_step.py), whose step lived in a module named distill."""
  models = importlib.import_module(f"{package}.models")
  try:
    outer = importlib.import_module(f"{package}.step")
    feature_dim = models.feature_dim
  except ModuleNotFoundError:
    outer = importlib.import_module(f"{package}.distill")
    feature_dim = outer.feature_dim
  return types.SimpleNamespace(
      StepConfig=outer.StepConfig, OuterOptim=outer.OuterOptim, init_state=outer.init_state,
      make_distill_step=outer.make_distill_step, feature_dim=feature_dim,
      make_network=models.make_network,
      default_strategy=importlib.import_module(f"{package}.augment").DEFAULT_STRATEGY)


# name: (classes, ipc, N, batch_syn), DATM's values (configs/).
SETTINGS = {
    "c10_ipc1": (10, 1, 80, 10),
    "c10_ipc10": (10, 10, 80, 100),
    "c10_ipc50": (10, 50, 80, 500),
    "c100_ipc10": (100, 10, 80, 1000),
    "r1": (10, 1, 20, 10),  # protocol R1's step (configs/cifar10_r1.py); use --width=32
}
QUICK = {"c10_ipc1": (10, 1, 4, 10), "c10_ipc10": (10, 10, 4, 100)}


class Torch:
  """The PyTorch side, created only when torch imports."""

  def __init__(self):
    self.torch = torch_io.require_torch()
    self.device = "cuda" if self.torch.cuda.is_available() else "cpu"

  def sync(self):
    if self.device == "cuda":
      self.torch.cuda.synchronize()

  def reset_peak(self):
    if self.device == "cuda":
      self.torch.cuda.reset_peak_memory_stats()

  def peak(self):
    return self.torch.cuda.max_memory_allocated() if self.device == "cuda" else None

  def release(self):
    """Hands PyTorch's cached device memory back, so that the JAX rows that follow are not
    starved (one process holds both; PyTorch's step can cache over 100 GiB)."""
    if self.device == "cuda":
      gc.collect()
      self.torch.cuda.empty_cache()

  def tensors(self, network, flat):
    return [self.torch.tensor(a, device=self.device) for a in
            torch_io.flat_to_torch_list(network, flat)]


# ------------------------------------------------------------------------------- distillation


# --remat / --memory_remat modes: (StepConfig fields, table label).
REMAT_MODES = {"1": (dict(remat=True), "on"), "0": (dict(remat=False), "off"),
               "convs": (dict(remat=True, remat_convs=True), "on, convs kept")}


# Step kinds: (DSA mode of the student's view, contrastive term on).
KINDS = {"matched": ("none", False), "datm + dsa": ("single", False), "datm-clr": ("single", True)}


def setup_distill(classes, ipc, n_steps, batch_syn, width, size, *, full: bool, remat="1",
                  unroll=1, conv_impl="auto", num_segments=1, segment_loop="map", kind=None,
                  views="extra", strategy=None, dsa_mode=None, runs=0, lib=None):
  """JAX network, jitted step, initial state and fake trajectories at one setting's shapes.

  strategy / dsa_mode, when given, replace the kind's DSA (the dsa section's per-op rows).
  views: the contrastive views of the datm-clr kind; the other kinds keep DATM's CE view
  (shared views would draw it in view_mode, 'multiple').
  runs > 0: that many independent runs in one program (parallel.make_parallel_step), each
  from its own initial images and key. lib: the package to build from (library()).
  """
  lib = lib or library()
  shape = (size, size, 3)
  net = lib.make_network("convnet", classes, shape, width=width, conv_impl=conv_impl)
  n = classes * ipc
  rng = np.random.default_rng(0)
  images = rng.standard_normal((n, *shape)).astype(np.float32)
  logits = rng.standard_normal((n, classes)).astype(np.float32)
  theta = np.asarray(net.init_flat(jax.random.PRNGKey(0), shape))
  # Two experts, 3 snapshots: start epoch 0, target 2 (values only need to be plausible).
  traj = np.stack([theta + 0.01 * k * rng.standard_normal((3, theta.size)).astype(np.float32)
                   for k in (1, 2)])
  traj[:, 0] = theta
  kind_mode, clr = KINDS[kind or ("datm-clr" if full else "matched")]
  dsa_mode = dsa_mode or kind_mode
  if strategy is None:
    strategy = lib.default_strategy if dsa_mode != "none" else ""
  cfg = lib.StepConfig(
      num_inner_steps=n_steps, expert_epochs=2, min_start_epoch=0, batch_syn=batch_syn,
      threshold=1e9, strategy=strategy,
      dsa_mode=dsa_mode, clr_strategy="fusion" if clr else "none",
      views=views if clr else "extra",
      unroll=unroll, num_segments=num_segments, segment_loop=segment_loop,
      **REMAT_MODES[remat][0])
  opt = lib.OuterOptim(lr_img=100.0, lr_lr=1e-5, lr_y=2.0)
  feat = lib.feature_dim(net, shape)
  syn_classes = np.repeat(np.arange(classes), ipc)
  if runs:
    step = parallel.make_parallel_step(net, cfg, opt, syn_classes, feat)
    state = parallel.stack_states([lib.init_state(images + 0.01 * k, logits, 0.01, opt)
                                  for k in range(runs)])
    keys = jnp.stack([jax.random.PRNGKey(k) for k in range(runs)])
    return net, step, (state, jnp.asarray(traj), jnp.asarray(1, jnp.int32), keys), traj
  step = lib.make_distill_step(net, cfg, opt, syn_classes, feat)
  state = lib.init_state(images, logits, 0.01, opt)
  args = (state, jnp.asarray(traj), jnp.asarray(1, jnp.int32), jax.random.PRNGKey(0))
  return net, step, args, traj


def jax_distill_call(step, args, compiler_options=None):
  """(compile seconds, the compiled step as a blocking call, XLA's peak, XLA's FLOP count)
  after one call. XLA counts the scan body once whatever N: the count is one inner step's
  forward and backward plus the step's non-loop work, which includes the 'multiple'-mode
  views of all N steps where the step draws them before the scan (step.ViewPlan).
  compiler_options: XLA options for this compilation only (e.g. xla_cpu_multi_thread_eigen)."""
  t0 = time.perf_counter()
  compiled = step.lower(*args).compile(compiler_options=compiler_options)
  compile_s = time.perf_counter() - t0
  call = lambda: jax.block_until_ready(compiled(*args))
  call()
  return compile_s, call, compiled_peak(compiled), cost_flops(compiled)


def torch_distill(tb: Torch, net, traj, classes, ipc, n_steps, batch_syn, size,
                  depth=3, kind="matched", views="extra"):
  """MTT/DATM's outer step as a call: flat params, create_graph=True, backward to the syn set.

  kind (KINDS): "datm + dsa" augments each step's minibatch with DSA (single mode);
  "datm-clr" also adds alpha * mean_n L_contrast (launch/bench/torch_dsa.py) to the outer loss.
  """
  torch = tb.torch
  dsa_mode, clr = KINDS[kind]
  f = torch.nn.functional
  dev = tb.device
  rng = np.random.default_rng(0)
  n = classes * ipc
  images = torch.tensor(rng.standard_normal((n, 3, size, size)).astype(np.float32), device=dev,
                        requires_grad=True)
  logits = torch.tensor(rng.standard_normal((n, classes)).astype(np.float32), device=dev,
                        requires_grad=True)
  syn_lr = torch.tensor(0.01, device=dev, requires_grad=True)
  opts = [torch.optim.SGD([images], lr=100.0, momentum=0.5),
          torch.optim.SGD([logits], lr=2.0, momentum=0.9),
          torch.optim.SGD([syn_lr], lr=1e-5, momentum=0.5)]
  def torch_flat(flat):  # our flat vector -> the reference's flat order and layouts
    tensors = torch_io.flat_to_torch_list(net, flat)
    return [a.shape for a in tensors], torch.tensor(
        np.concatenate([a.ravel() for a in tensors]), device=dev)

  labels = torch.arange(classes, device=dev).repeat_interleave(ipc)
  feat_dim = library().feature_dim(net, (size, size, 3))
  shapes, start = torch_flat(traj[0, 0])
  _, target = torch_flat(traj[0, 2])
  sizes = [int(np.prod(s)) for s in shapes]

  def unflat(p):
    return [t.view(s) for t, s in zip(torch.split(p, sizes), shapes)]

  def one_step():
    for o in opts:
      o.zero_grad()
    y = f.softmax(logits, dim=1)
    chunks = n // batch_syn
    perm = torch.cat([torch.randperm(n, device=dev)[:chunks * batch_syn]
                      for _ in range(-(-n_steps // chunks))]).view(-1, batch_syn)
    params = [start.clone().requires_grad_(True)]
    head = torch_dsa.random_head(torch, feat_dim, 128, dev) if clr else None
    cons = []
    for i in range(n_steps):
      idx = perm[i]
      x = images[idx]
      shared = clr and views == "shared"
      x_ce = torch_dsa.dsa(torch, x, "multiple" if shared else dsa_mode)
      out, feats = torch_io.torch_convnet(unflat(params[-1]), x_ce, depth=depth)
      ce = -(y[idx] * f.log_softmax(out, dim=1)).sum(1).mean()
      if clr:
        if shared:  # the CE view is the first contrastive view (Algorithm 1)
          _, f2 = torch_io.torch_convnet(unflat(params[-1]), torch_dsa.dsa(
              torch, x, "multiple"), depth=depth)
          (w1, b1), (w2, b2) = head
          z = f.linear(f.relu(f.linear(torch.cat([feats, f2]), w1, b1)), w2, b2)
          cons.append(torch_dsa.supcon(torch, z[:len(idx)], z[len(idx):], labels[idx]))
        else:
          cons.append(torch_dsa.contrast(torch, torch_io.torch_convnet, unflat(params[-1]), x,
                                         labels[idx], head, depth))
      g = torch.autograd.grad(ce, params[-1], create_graph=True)[0]
      params.append(params[-1] - syn_lr * g)
    l_tm = ((params[-1] - target) ** 2).sum() / ((start - target) ** 2).sum()
    loss = l_tm + 0.1 * torch.stack(cons).mean() if clr else l_tm
    loss.backward()
    for o in opts:
      o.step()
    tb.sync()

  return one_step


def jax_distill_call_or_oom(step, args):
  """jax_distill_call, or (None, None, None, None) when the step does not fit."""
  try:
    return jax_distill_call(step, args)
  except Exception as e:  # noqa: BLE001 - only out-of-memory is turned into a table cell
    if not is_oom(e):
      raise
    print(f"   JAX step out of memory: {str(e).splitlines()[0][:200]}", flush=True)
    return None, None, None, None


def jax_distill_or_oom(step, args, repeats):
  """(compile seconds, median step time, XLA's peak), or (None, OOM, None) when it does not fit."""
  compile_s, call, peak, _ = jax_distill_call_or_oom(step, args)
  return (compile_s, median_time(call, repeats), peak) if call else (None, OOM, None)


def torch_distill_or_oom(tb: Torch, *args):
  """(torch_distill's call, the peak of its first call), or (None, the peak reached) when
  PyTorch runs out of device memory (the reference keeps all N steps' graphs, so large
  synthetic minibatches can exceed one GPU)."""
  one_step = None
  tb.reset_peak()
  try:
    one_step = torch_distill(tb, *args)
    one_step()
  except Exception as e:  # noqa: BLE001
    if not is_oom(e):
      raise
    print(f"   PyTorch step out of memory: {str(e).splitlines()[0][:200]}", flush=True)
    one_step = None
  # Outside the handler: the exception's traceback holds the step's tensors until then.
  peak = tb.peak()
  tb.release()
  return one_step, peak


def setting(spec: str, quick: bool):
  """'c10_ipc10' or 'c10_ipc10:10' (N overridden, e.g. to fit a CPU's time) -> its shapes."""
  name, _, n = spec.partition(":")
  classes, ipc, n_steps, batch_syn = (QUICK if quick else SETTINGS)[name]
  return name, classes, ipc, int(n) if n else n_steps, batch_syn


def section_distill(a, tb):
  """Every step of a setting, both frameworks, timed in turns (times_interleaved): a
  machine whose speed drifts during the run moves all of them alike, so the ratios hold."""
  rows, clr_rows = [], []
  for spec in a.settings:
    name, classes, ipc, n_steps, batch_syn = setting(spec, a.quick)
    print(f"[distill] {name}: N={n_steps} batch_syn={batch_syn}", flush=True)
    kinds = ["matched"] + ([] if a.skip_full else ["datm + dsa", "datm-clr"])
    cells = []
    for kind in kinds:
      views = a.clr_views if kind == "datm-clr" else "extra"
      torch_cell = None
      for remat in a.remat:
        net, step, args, traj = setup_distill(classes, ipc, n_steps, batch_syn, a.width,
                                              a.size, full=False, unroll=a.unroll,
                                              remat=remat, conv_impl=a.conv_impl, kind=kind,
                                              views=views)
        c, call, mem, flops = jax_distill_call_or_oom(step, args)
        if tb and torch_cell is None:  # PyTorch keeps every step's graph: no remat to vary.
          one_step, tmem = torch_distill_or_oom(tb, net, traj, classes, ipc, n_steps,
                                                batch_syn, a.size, 3, kind, views)
          torch_cell = {"call": one_step, "peak": tmem}
        label = kind + (f" ({views} views)" if kind == "datm-clr" else "")
        cells.append({"row": [name, label, REMAT_MODES[remat][1], n_steps, batch_syn,
                              fmt_compile(c), fmt_gflop(flops)], "jax": call, "mem": mem,
                      "torch": torch_cell, "kind": kind, "remat": remat})
    # Each call once (a kind's PyTorch call serves all its remat rows), those that fit only.
    calls = list(dict.fromkeys(c for cell in cells for c in (
        cell["jax"], cell["torch"] and cell["torch"]["call"]) if c))
    per_round = dict(zip(calls, times_interleaved(
        calls, a.repeats, between=tb.release if tb else None, settle=a.settle)))
    times = {c: statistics.median(t) for c, t in per_round.items()}
    for cell in cells:
      t_jax = times[cell["jax"]] if cell["jax"] else OOM
      t = cell["torch"]
      t_torch = (times[t["call"]] if t["call"] else OOM) if t else None
      rows.append(cell["row"] + [fmt_s(t_jax), fmt_bytes(cell["mem"]), fmt_s(t_torch),
                                 fmt_bytes(t["peak"] if t else None), ratio(t_torch, t_jax)])
      print("  ", rows[-1], flush=True)
    # What the contrastive term costs: DATM-CLR over DATM + DSA, round by round.
    by_kind = {(cell["kind"], cell["remat"]): cell for cell in cells}
    rounds = lambda call: per_round.get(call) if call else None  # None: out of memory
    torch_call = lambda cell: cell["torch"] and cell["torch"]["call"]
    for remat in a.remat:
      clr, datm = by_kind.get(("datm-clr", remat)), by_kind.get(("datm + dsa", remat))
      if clr and datm:
        clr_rows.append([name, REMAT_MODES[remat][1], a.repeats,
                         fmt_round_ratios(rounds(clr["jax"]), rounds(datm["jax"])),
                         fmt_round_ratios(rounds(torch_call(clr)), rounds(torch_call(datm)))])
  text = table(["setting", "step", "remat", "N", "batch_syn", "JAX compile",
                "GFLOP per inner step (XLA)", "JAX step", "JAX peak (XLA)", "PyTorch step",
                "PyTorch peak", "PyTorch/JAX"], rows)
  if clr_rows:
    text += "\n\nDATM-CLR / DATM + DSA, each framework, the two calls of each round:\n\n" + table(
        ["setting", "remat", "rounds", "JAX: median (min-max)", "PyTorch: median (min-max)"],
        clr_rows)
  return text


def section_memory(a, tb):
  rows = []
  for spec in a.memory_settings:
    name, classes, ipc, _, batch_syn = setting(spec, False)
    for n_steps in a.memory_steps:
      mems = []
      for remat in a.memory_remat:
        _, step, args, _ = setup_distill(classes, ipc, n_steps, batch_syn, a.width, a.size,
                                         full=True, remat=remat, unroll=a.unroll,
                                         conv_impl=a.conv_impl)
        t0 = time.perf_counter()
        mems.append(compiled_peak(step.lower(*args).compile()))
        print(f"[memory] {name} N={n_steps} remat={remat}: {fmt_bytes(mems[-1])} "
              f"({time.perf_counter() - t0:.1f} s to compile)", flush=True)
      ratios = ["-" if None in (m, mems[0]) else f"{m / mems[0]:.2f}x" for m in mems[1:]]
      rows.append([name, n_steps, *map(fmt_bytes, mems), *ratios])
  labels = [REMAT_MODES[m][1] for m in a.memory_remat]
  return table(["setting", "N", *[f"peak, remat {l}" for l in labels],
                *[f"{l} / {labels[0]}" for l in labels[1:]]], rows)


def section_unroll(a, tb):
  _, classes, ipc, n_steps, batch_syn = setting(a.unroll_setting, a.quick)
  rows = []
  for u in a.unrolls:
    _, step, args, _ = setup_distill(classes, ipc, n_steps, batch_syn, a.width, a.size,
                                     full=True, unroll=u, conv_impl=a.conv_impl)
    c, t, mem = jax_distill_or_oom(step, args, a.repeats)
    rows.append([a.unroll_setting, u, fmt_compile(c), fmt_s(t), fmt_bytes(mem)])
    print("[unroll]", rows[-1], flush=True)
  return table(["setting", "scan unroll", "compile", "step", "peak (XLA)"], rows)


def rotate_dense(x, key):
  """augment.rotate as it was before a9780b5: bilinear "tent" weights over every source pixel,
  (B, HW, H) and (B, HW, W), contracted with the images by two einsums. The same values
  (tests/test_augment.py checks the current form against a per-pixel reference); kept here
  only as the dsa section's baseline row."""
  b, h, w, _ = x.shape
  ang = jax.random.uniform(key, (b,), x.dtype, -augment.ROTATE_DEG,
                           augment.ROTATE_DEG) * (np.pi / 180)
  cos, sin, zeros = jnp.cos(ang), jnp.sin(ang), jnp.zeros_like(ang)
  theta = jnp.stack([jnp.stack([cos, sin, zeros], -1), jnp.stack([-sin, cos, zeros], -1)], 1)
  v, u = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
  grid = jnp.stack([u, v, jnp.ones_like(u)], axis=-1).reshape(h * w, 3).astype(x.dtype)
  src = jnp.einsum("pk,bjk->bpj", grid, theta)
  xs, ys = (src[..., 0] + 1) * (w - 1) / 2, (src[..., 1] + 1) * (h - 1) / 2
  ky = jax.nn.relu(1 - jnp.abs(ys[..., None] - jnp.arange(h, dtype=x.dtype)))
  kx = jax.nn.relu(1 - jnp.abs(xs[..., None] - jnp.arange(w, dtype=x.dtype)))
  rows = jnp.einsum("bpa,bawc->bpwc", ky, x)
  return jnp.einsum("bpw,bpwc->bpc", kx, rows).reshape(x.shape)


def section_dsa(a, tb):
  """What each DSA op adds to the DATM step: one op family at every inner step, in turns."""
  del tb  # JAX only: the PyTorch DSA of the harness is timed in the distill section
  name, classes, ipc, n_steps, batch_syn = setting(a.dsa_setting, a.quick)
  ops = augment.parse_strategy(augment.DEFAULT_STRATEGY)
  variants = ([("none", "none")] + [(op, "single") for op in ops] + [("rotatedense", "single")]
              + [(augment.DEFAULT_STRATEGY, "single"), (augment.DEFAULT_STRATEGY, "multiple")])
  calls, compiles = [], []
  augment.OPS["rotatedense"] = rotate_dense  # only while the steps are traced
  try:
    for strategy, mode in variants:
      _, step, args, _ = setup_distill(classes, ipc, n_steps, batch_syn, a.width, a.size,
                                       full=False, remat=a.remat[0], conv_impl=a.conv_impl,
                                       kind="datm + dsa",
                                       strategy=strategy if mode != "none" else "",
                                       dsa_mode=mode)
      t0 = time.perf_counter()
      compiled = step.lower(*args).compile()
      compiles.append(time.perf_counter() - t0)
      calls.append(lambda c=compiled, a=args: jax.block_until_ready(c(*a)))
  finally:
    del augment.OPS["rotatedense"]
  times = median_times_interleaved(calls, a.repeats, settle=a.settle)
  shown = {"none": "(no DSA)", "rotatedense": "rotate, dense tent weights (before a9780b5)"}
  rows = [[name, shown.get(strategy, strategy), mode, n_steps, batch_syn,
           fmt_compile(c), fmt_s(t), f"{(t - times[0]) / n_steps * 1e3:+.2f} ms",
           f"{t / times[0]:.2f}x"]
          for (strategy, mode), c, t in zip(variants, compiles, times)]
  return table(["setting", "DSA strategy", "mode", "N", "batch_syn", "JAX compile", "JAX step",
                "added per inner step", "vs no DSA"], rows)


def section_runs(a, tb):
  """K independent distillation runs compiled into one program (parallel.make_parallel_step)
  against one run's step, all K of a kind timed in turns: on a latency-bound device K runs
  should cost far less than K steps."""
  del tb
  name, classes, ipc, n_steps, batch_syn = setting(a.runs_setting, a.quick)
  rows = []
  for kind in a.runs_kinds:
    cells = []
    for k in a.runs:
      _, step, args, _ = setup_distill(classes, ipc, n_steps, batch_syn, a.width, a.size,
                                       full=False, unroll=a.unroll, conv_impl=a.conv_impl,
                                       remat=a.remat[0], kind=kind, views=a.clr_views,
                                       runs=0 if k == 1 else k)
      cells.append((k, *jax_distill_call_or_oom(step, args)[:3]))
    fit = [call for _, _, call, _ in cells if call]
    times = dict(zip(fit, median_times_interleaved(fit, a.repeats, settle=a.settle)))
    one = next((times[call] for k, _, call, _ in cells if k == 1 and call), None)
    for k, c, call, mem in cells:
      t = times[call] if call else OOM
      rows.append([name, kind, k, fmt_compile(c), fmt_s(t), fmt_bytes(mem),
                   f"{k / t:,.2f}" if call else "-",
                   f"{k * one / t:.2f}x" if call and one else "-"])
      print("[runs]", rows[-1], flush=True)
  return table(["setting", "step", "runs K", "compile", "step (all K)", "peak (XLA)",
                "run-steps/s", "vs K single steps"], rows)


def section_segments(a, tb):
  """The DATM-CLR step matching k trajectory segments per iteration (config.distill.num_segments)."""
  name, classes, ipc, n_steps, batch_syn = setting(a.segments_setting, a.quick)
  rows, base = [], None
  for i, loop in enumerate(a.segment_loops):
    for k in a.segments:
      if k == 1 and i > 0:  # one segment takes no loop: the first loop's row is the row
        continue
      _, step, args, _ = setup_distill(classes, ipc, n_steps, batch_syn, a.width, a.size,
                                       full=True, unroll=a.unroll, conv_impl=a.conv_impl,
                                       num_segments=k, segment_loop=loop)
      c, t, mem = jax_distill_or_oom(step, args, a.repeats)
      per_s = None if t in (None, OOM) else k / t
      base = base or per_s
      rows.append([name, k, loop, fmt_compile(c), fmt_s(t), fmt_bytes(mem),
                   "-" if per_s is None else f"{per_s:,.2f}",
                   "-" if None in (per_s, base) else f"{per_s / base:.2f}x"])
      print("[segments]", rows[-1], flush=True)
  return table(["setting", "segments", "loop", "compile", "step", "peak (XLA)", "segments/s",
                "vs first row"], rows)


# ----------------------------------------------------------------------- experts, evaluation


def torch_train(tb, net, flat, x, y, *, steps, batch, lr, momentum=0.0, wd=0.0, depth=3):
  """Plain PyTorch SGD training of one ConvNet: `steps` minibatches of `batch` images."""
  torch = tb.torch
  params = [p.requires_grad_(True) for p in tb.tensors(net, flat)]
  opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
  n = x.shape[0]
  for s in range(steps):
    idx = torch.randint(0, n, (batch,), device=tb.device)
    out, _ = torch_io.torch_convnet(params, x[idx], depth=depth)
    loss = torch.nn.functional.cross_entropy(out, y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
  tb.sync()


def matmul_rate(n: int, repeats: int) -> float:
  """FLOP/s of an (n, n) @ (n, n) float32 matmul: the device's compute ceiling, as JAX gets it."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
  mm = jax.jit(lambda a: a @ a).lower(x).compile()
  return 2 * n**3 / median_time(lambda: jax.block_until_ready(mm(x)), repeats)


def training_flops_per_image(arch: str, shape, width: int, batch: int) -> float | None:
  """FLOPs of one SGD step's loss and gradient over `batch` images, divided by `batch`.

  Counted with XLA's convolutions: the algorithm's FLOPs, the same whichever convolution
  implementation runs (im2col and the hybrid form count a few percent more).
  """
  net = make_network(arch, 10, shape, width=width, conv_impl="xla")
  flat = net.init_flat(jax.random.PRNGKey(0), shape)
  x = jnp.zeros((batch, *shape))
  y = jnp.zeros((batch, net.module.num_classes))
  loss = lambda p, x, y: losses.soft_cross_entropy(net.apply_flat(p, x)[0], y)
  flops = cost_flops(jax.jit(jax.grad(loss)).lower(flat, x, y).compile())
  return None if flops is None else flops / batch


def section_experts(a, tb):
  """K experts in one compiled epoch; with several devices the K are split over them.

  The FLOP/s column (XLA's count of one training step, times images/s) set against a large
  matmul's rate in the same run says how much of the machine one expert leaves idle, which
  bounds the gain that K at once can give.
  """
  shape = (a.size, a.size, 3)
  net = make_network("convnet", 10, shape, width=a.width, conv_impl=a.conv_impl)
  batch, steps = a.expert_batch, a.expert_steps
  n = batch * steps
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, *shape)).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  mesh = sharding.device_mesh()
  devices = sharding.num_devices(mesh)
  xd, yd = sharding.replicate((jnp.asarray(x), jnp.asarray(y)), mesh)
  flat = np.asarray(net.init_flat(jax.random.PRNGKey(0), shape))
  flops_per_image = training_flops_per_image("convnet", shape, a.width, batch)
  peak = matmul_rate(a.matmul_size, a.repeats)
  m = a.matmul_size
  head = (f"Batch {batch} per expert; {fmt_mflop(flops_per_image)} per training image (XLA's "
          f"cost analysis of one step with XLA's convolutions); a {m}x{m} float32 matmul ran "
          f"at {fmt_rate(peak)} GFLOP/s on this device.\n\n")
  print("[experts]", head.strip(), flush=True)
  t_torch1 = None
  if tb:
    xt = tb.torch.tensor(x.transpose(0, 3, 1, 2), device=tb.device)
    yt = tb.torch.tensor(y.astype(np.int64), device=tb.device)
    t_torch1 = median_time(lambda: torch_train(tb, net, flat, xt, yt, steps=steps, batch=batch,
                                               lr=0.01), a.repeats)
  rows, base = [], None
  for loop in a.expert_loops:
    resolved = sharding.resolve_network_loop(loop, devices, "--expert_loops")
    epoch = experts.make_train_epoch(net, lr=0.01, batch_size=batch, num_train=n, strategy="",
                                     dsa_mode="none", loop=resolved)
    for k in a.expert_k:
      params = sharding.shard_leading(jnp.asarray(np.repeat(flat[None], k, 0)), mesh)
      keys = sharding.shard_leading(jax.random.split(jax.random.PRNGKey(1), k), mesh)
      t0 = time.perf_counter()
      compiled = epoch.lower(params, keys, xd, yd).compile()
      c = time.perf_counter() - t0
      t = median_time(lambda: jax.block_until_ready(compiled(params, keys, xd, yd)), a.repeats)
      ips = k * n / t
      base = base or ips / k  # the first row's per-expert rate
      rate = None if flops_per_image is None else ips * flops_per_image
      tt = None if t_torch1 is None else k * t_torch1
      rows.append([k, loop_label(loop, resolved), devices, f"{c:.1f} s",
                   fmt_s(t), f"{ips:,.0f}", f"{ips / base:.2f}x", fmt_rate(rate),
                   "-" if None in (rate, peak) else f"{rate / peak:.0%}",
                   "-" if tt is None else f"{k * n / tt:,.0f}", ratio(tt, t)])
      print("[experts]", rows[-1], flush=True)
  return head + table(
      ["K experts", "loop", "devices", "JAX compile", f"JAX time ({steps} steps)",
       "JAX images/s", "JAX speed-up vs first row", "JAX GFLOP/s", "of matmul rate",
       "PyTorch images/s (sequential)", "PyTorch/JAX"], rows)


def section_eval(a, tb):
  shape = (a.size, a.size, 3)
  net = make_network(a.eval_arch, 10, shape, width=a.width, conv_impl=a.conv_impl)
  n = 10 * a.eval_ipc
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, *shape)).astype(np.float32)
  labels = np.repeat(np.arange(10), a.eval_ipc)
  y = np.eye(10, dtype=np.float32)[labels]
  cfg = evaluate.EvalConfig(epochs=a.eval_epochs, strategy=a.eval_dsa,
                            dsa_mode="single" if a.eval_dsa else "none")
  steps_per_epoch = -(-n // cfg.batch_size)
  # The JAX loop runs epochs + 1 epochs (the reference's range(epochs + 1)).
  total_steps = steps_per_epoch * (a.eval_epochs + 1)
  flat = np.asarray(net.init_flat(jax.random.PRNGKey(0), shape))
  rows = []
  t_torch1 = None
  if tb and not a.eval_dsa and a.eval_arch == "convnet":  # PyTorch: a DSA-free ConvNet loop
    xt = tb.torch.tensor(x.transpose(0, 3, 1, 2), device=tb.device)
    yt = tb.torch.tensor(labels.astype(np.int64), device=tb.device)
    t_torch1 = median_time(lambda: torch_train(
        tb, net, flat, xt, yt, steps=total_steps, batch=min(n, cfg.batch_size), lr=0.01,
        momentum=0.9, wd=5e-4), a.repeats)
  mesh = sharding.device_mesh()
  devices = sharding.num_devices(mesh)
  for s in a.eval_seeds:
    keys = sharding.shard_leading(jax.random.split(jax.random.PRNGKey(0), s), mesh)
    args = (keys, *sharding.replicate((jnp.asarray(x), jnp.asarray(y), jnp.asarray(0.01)), mesh))
    for loop in a.eval_loops:
      resolved = evaluate.resolve_seed_loop(loop, devices)
      # The --eval_progress variants are timed in turns: they differ by little, and drift
      # between two blocks of calls on a busy machine was larger than that.
      compiled, compile_s = [], []
      for every in a.eval_progress:
        trainer = evaluate.make_trainer(
            net, dataclasses.replace(cfg, seed_loop=resolved, progress_every=every), n, shape)
        t0 = time.perf_counter()
        compiled.append(trainer.lower(*args).compile())
        compile_s.append(time.perf_counter() - t0)
      times = median_times_interleaved(
          [functools.partial(lambda f: jax.block_until_ready(f(*args)), f) for f in compiled],
          a.repeats, settle=a.settle)
      for every, c, t in zip(a.eval_progress, compile_s, times):
        tt = None if t_torch1 is None else s * t_torch1
        label = loop_label(loop, resolved) + (f", progress every {every}" if every else "")
        rows.append([s, label, devices, a.eval_arch, n, a.eval_epochs,
                     a.width, f"{c:.1f} s", fmt_s(t), fmt_s(tt), ratio(tt, t)])
        print("[eval]", rows[-1], flush=True)
  return table(["seeds", "seed loop", "devices", "network", "images", "epochs", "width",
                "JAX compile", "JAX time", "PyTorch time (sequential)", "PyTorch/JAX"], rows)


def section_test(a, tb):
  """S trained networks' test accuracy over --test_images images (evaluate.make_tester)."""
  shape = (a.size, a.size, 3)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((a.test_images, *shape)).astype(np.float32)
  y = rng.integers(0, 10, a.test_images)
  rows = []
  for arch in a.test_archs:
    net = make_network(arch, 10, shape, width=a.width, conv_impl=a.conv_impl)
    t_torch1 = None
    if tb and arch == "convnet":
      flat = np.asarray(net.init_flat(jax.random.PRNGKey(0), shape))
      params = tb.tensors(net, flat)
      xt = tb.torch.tensor(x.transpose(0, 3, 1, 2), device=tb.device)

      def torch_test():
        with tb.torch.no_grad():
          for i in range(0, len(xt), 1000):
            torch_io.torch_convnet(params, xt[i:i + 1000], depth=3)[0].argmax(-1)
        tb.sync()

      t_torch1 = median_time(torch_test, a.repeats)
    for s in a.eval_seeds:
      variables = jax.vmap(lambda k: net.init_variables(k, shape))(
          jax.random.split(jax.random.PRNGKey(0), s))
      for loop in a.eval_loops:
        loop = evaluate.resolve_seed_loop(loop)
        test = evaluate.make_tester(net, loop)
        t0 = time.perf_counter()
        test(variables, x, y)  # compiles (one shape per chunk size)
        c = time.perf_counter() - t0
        t = median_time(lambda: test(variables, x, y), a.repeats)
        tt = None if t_torch1 is None else s * t_torch1
        rows.append([s, loop, arch, a.test_images, fmt_s(c), fmt_s(t), fmt_s(tt), ratio(tt, t)])
        print("[test]", rows[-1], flush=True)
  return table(["networks", "loop", "network", "test images", "first call (compiles)",
                "JAX time", "PyTorch time (sequential)", "PyTorch/JAX"], rows)


SECTIONS = {"distill": section_distill, "memory": section_memory, "unroll": section_unroll,
            "segments": section_segments, "experts": section_experts, "eval": section_eval,
            "test": section_test, "dsa": section_dsa, "runs": section_runs}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  csv = lambda s: [v for v in s.split(",") if v]
  ints = lambda s: [int(v) for v in csv(s)]
  p.add_argument("--sections", type=csv, default=list(SECTIONS))
  p.add_argument("--settings", type=csv, default=["c10_ipc1", "c10_ipc10"],
                 help="names from SETTINGS; NAME:N overrides the inner-step count")
  p.add_argument("--memory_settings", type=csv, default=["c10_ipc10", "c100_ipc10"])
  p.add_argument("--memory_steps", type=ints, default=[20, 40, 80])
  p.add_argument("--unroll_setting", default="c10_ipc1")
  p.add_argument("--unrolls", type=ints, default=[1, 2, 4, 8])
  p.add_argument("--unroll", type=int, default=1, help="scan unroll of the other sections")
  p.add_argument("--segments_setting", default="c10_ipc1")
  p.add_argument("--dsa_setting", default="r1", help="dsa section: the setting (use --width=32 for r1)")
  p.add_argument("--segments", type=ints, default=[1, 2, 4])
  p.add_argument("--runs_setting", default="c10_ipc1", help="runs section: the setting")
  p.add_argument("--runs", type=ints, default=[1, 3, 6], help="runs section: K (1 first)")
  p.add_argument("--runs_kinds", type=csv, default=["datm-clr"],
                 help="runs section: step kinds (KINDS)")
  p.add_argument("--segment_loops", type=csv, default=["map", "vmap"])
  p.add_argument("--remat", type=csv, default=["1"],
                 help="distill section: remat modes, of " + ",".join(REMAT_MODES))
  p.add_argument("--memory_remat", type=csv, default=["1", "0"],
                 help="memory section: remat modes, the first is the reference column")
  p.add_argument("--conv_impl", default="auto",
                 help="auto | xla | im2col | hybrid: the JAX networks' convolution, every section")
  p.add_argument("--expert_k", type=ints, default=[1, 2, 4, 8])
  p.add_argument("--expert_steps", type=int, default=10)
  p.add_argument("--expert_batch", type=int, default=256,
                 help="each expert's minibatch (the reference trains experts at 256)")
  p.add_argument("--expert_loops", type=csv, default=["auto"],
                 help="expert group loops to time: auto, vmap, map (sharding.NETWORK_LOOPS)")
  p.add_argument("--matmul_size", type=int, default=2048,
                 help="the reference matmul of the experts section (n x n)")
  p.add_argument("--eval_ipc", type=int, default=10)
  p.add_argument("--eval_epochs", type=int, default=50)
  p.add_argument("--eval_seeds", type=ints, default=[1, 5])
  p.add_argument("--eval_loops", type=csv, default=["auto"],
                 help="evaluation seed loops to time: auto, vmap, map (evaluate.SEED_LOOPS)")
  p.add_argument("--eval_progress", type=ints, default=[0],
                 help="eval section: progress callback every this many epochs (0: none)")
  p.add_argument("--eval_dsa", default="",
                 help="DSA strategy for the evaluation section ('' = none, as PyTorch's loop)")
  p.add_argument("--eval_arch", default="convnet",
                 help="eval section network (models.ARCHS; PyTorch column for convnet only)")
  p.add_argument("--test_archs", type=csv, default=["convnet"],
                 help="test section networks (PyTorch column for convnet only)")
  p.add_argument("--test_images", type=int, default=2000)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no_settle", dest="settle", action="store_false",
                 help="time each call right after the previous fn's, not after an untimed "
                      "call of its own (timing.median_times_interleaved)")
  p.add_argument("--skip_full", action="store_true",
                 help="distill: only the matched rows (no DSA, no contrastive term)")
  p.add_argument("--clr_views", default="extra", choices=["extra", "shared"],
                 help="distill: the datm-clr rows' contrastive views (clr.views)")
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--quick", action="store_true", help="tiny shapes, for a smoke run")
  p.add_argument("--out", default="", help="also write the tables to this markdown file")
  a = p.parse_args(argv)
  for mode in a.remat + a.memory_remat:
    if mode not in REMAT_MODES:
      p.error(f"unknown remat mode {mode!r}; use {', '.join(REMAT_MODES)}")
  if a.quick:
    a.width, a.size, a.repeats, a.expert_steps, a.eval_epochs = 8, 16, 1, 2, 2
    a.matmul_size = 256
    a.test_images = 100
    a.memory_settings, a.memory_steps, a.unrolls, a.expert_k = ["c10_ipc1"], [2, 4], [1, 2], [1, 2]
    a.segments = [1, 2]
    a.dsa_setting = "c10_ipc1"
    a.settings = [s for s in a.settings if s.partition(":")[0] in QUICK]
  tb = None
  if not a.no_torch:
    try:
      tb = Torch()
    except torch_io.TorchIOError as e:
      print(f"PyTorch columns left empty: {e}", flush=True)
  header = [f"# Benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
            machine() + (f"; PyTorch {tb.torch.__version__} on {tb.device}" if tb else ""),
            "", "Command: `python -m launch.bench.benchmark "
            + " ".join(argv or sys.argv[1:]) + "`",
            f"ConvNet width {a.width}, {a.size}x{a.size} images, median of {a.repeats}; "
            f"distill section: remat {a.remat}, scan unroll {a.unroll}; "
            f"conv_impl {a.conv_impl} (every section).", ""]
  print("\n".join(header), flush=True)
  out = header[:]
  for name in a.sections:
    t0 = time.perf_counter()
    text = SECTIONS[name](a, tb)
    block = f"## {name} ({time.perf_counter() - t0:.0f} s)\n\n{text}\n"
    print(block, flush=True)
    out.append(block)
    if a.out:
      Path(a.out).parent.mkdir(parents=True, exist_ok=True)
      Path(a.out).write_text("\n".join(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
