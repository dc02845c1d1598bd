"""The distillation step of two versions of the package, timed in turns in one process.

  python -m launch.bench.ab_step --base=HEAD                   # c10_ipc1:10, datm + dsa
  python -m launch.bench.ab_step --base=418c49c --setting=r1 --width=32 --kind=datm-clr
  python -m launch.bench.ab_step --setting=r1 --width=32 --unroll=2  # HEAD's step, unrolled
  python -m launch.bench.ab_step --options='{"xla_cpu_multi_thread_eigen": false}'

Copies the package as it is at --base (`git archive`) into a temporary folder under another
name (datm_clr_jax_base), imports it beside the working tree's package, builds the benchmark's
step (benchmark.setup_distill) from each and times their calls in turns, so drift in the
machine's speed moves both alike. A change that should not move the numbers is checked by
the loss and image-gradient norm printed beside each, as float.hex(), and by whether the two
steps' new images are the same bits. --unroll and --options (XLA compile options, as JSON)
apply to the worktree's step only, so an XLA flag or a scan setting is compared with the
default in one process too.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import jax
import numpy as np

from launch.bench import benchmark, timing

ROOT = Path(__file__).resolve().parents[2]
BASE_NAME = "datm_clr_jax_base"


def extract_package(rev: str, dest: Path) -> Path:
  """Writes the package at git revision `rev` to dest/BASE_NAME, its own imports renamed so
  that it imports beside the working tree's package. Returns the folder."""
  try:
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "datm_clr_jax"],
                         check=True, capture_output=True).stdout
  except subprocess.CalledProcessError as e:
    raise SystemExit(f"ab_step: git archive {rev!r} failed: {e.stderr.decode().strip()}")
  with tarfile.open(fileobj=io.BytesIO(tar)) as t:
    t.extractall(dest, filter="data")
  pkg = dest / BASE_NAME
  (dest / "datm_clr_jax").rename(pkg)
  for f in pkg.rglob("*.py"):
    f.write_text(re.sub(r"\bdatm_clr_jax\b", BASE_NAME, f.read_text()))
  return pkg


def import_package(pkg: Path) -> None:
  """Imports the package folder `pkg` under its own name, leaving the import path alone."""
  spec = importlib.util.spec_from_file_location(pkg.name, pkg / "__init__.py",
                                                submodule_search_locations=[str(pkg)])
  module = importlib.util.module_from_spec(spec)
  sys.modules[pkg.name] = module
  spec.loader.exec_module(module)


def parse_options(text: str) -> dict:
  """--options as a dict of XLA compile options; a one-line SystemExit for bad JSON or for an
  option this XLA does not know (checked by compiling a scalar function, before any step)."""
  try:
    options = json.loads(text)
  except json.JSONDecodeError as e:
    raise SystemExit(f"ab_step: --options is not JSON ({e}): {text!r}")
  if not isinstance(options, dict):
    raise SystemExit(f"ab_step: --options must be a JSON object, got {text!r}")
  try:
    jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=options)
  except Exception as e:  # noqa: BLE001 - XLA reports unknown options as a runtime error
    raise SystemExit(f"ab_step: XLA refused --options: {str(e).splitlines()[0]}")
  return options


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--base", default="HEAD", help="git revision to compare the worktree against")
  p.add_argument("--setting", default="c10_ipc1:10", help="benchmark setting, NAME[:N]")
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--kind", default="datm + dsa", choices=list(benchmark.KINDS))
  p.add_argument("--views", default="shared", choices=["extra", "shared"])
  p.add_argument("--remat", default="convs", choices=list(benchmark.REMAT_MODES))
  p.add_argument("--repeats", type=int, default=9)
  p.add_argument("--no_settle", dest="settle", action="store_false",
                 help="time each call right after the other version's (benchmark's "
                      "times_interleaved)")
  p.add_argument("--unroll", type=int, default=1, help="the worktree step's scan unroll")
  p.add_argument("--options", default="{}",
                 help="XLA compile options of the worktree's step, a JSON object")
  a = p.parse_args(argv)
  options = parse_options(a.options)
  name, classes, ipc, n_steps, batch_syn = benchmark.setting(a.setting, quick=False)
  with tempfile.TemporaryDirectory() as d:
    import_package(extract_package(a.base, Path(d)))
    calls, lines, images = [], [], []
    sides = ((f"base ({a.base})", BASE_NAME, 1, None),
             ("worktree", "datm_clr_jax", a.unroll, options or None))
    for label, package, unroll, side_options in sides:
      _, step, args, _ = benchmark.setup_distill(
          classes, ipc, n_steps, batch_syn, a.width, 32, full=a.kind == "datm-clr",
          remat=a.remat, kind=a.kind, views=a.views, unroll=unroll,
          lib=benchmark.library(package))
      compile_s, call, peak, flops = benchmark.jax_distill_call(step, args, side_options)
      state, m = jax.device_get(call())  # the compiled call: step(*args) would compile again
      calls.append(call)
      images.append(np.asarray(state.syn_images))
      lines.append(f"| {label} | {compile_s:.1f} s | {timing.fmt_gflop(flops)} | "
                   f"{timing.fmt_bytes(peak)} | {float(m['loss']).hex()} | "
                   f"{float(m['grad_norm_images']).hex()} |")
    per_round = timing.times_interleaved(calls, a.repeats, settle=a.settle)
  worktree = "".join([f"; worktree: scan unroll {a.unroll}" if a.unroll != 1 else "",
                      f"; worktree: XLA options {options}" if options else ""])
  print(f"{name}: N={n_steps} batch_syn={batch_syn} width={a.width} {a.kind} step "
        f"({a.views} views), remat {benchmark.REMAT_MODES[a.remat][1]}; {a.repeats} calls "
        f"each in turns; backend {jax.default_backend()}{worktree}\n")
  print("| package | compile | GFLOP (XLA) | peak (XLA) | loss | image-gradient norm | step "
        "| base / this | base / this, per round: median (min-max) |\n"
        "|---|---|---|---|---|---|---|---|---|")
  times = [statistics.median(t) for t in per_round]
  for line, t, rounds in zip(lines, times, per_round):
    print(f"{line} {timing.fmt_s(t)} | {times[0] / t:.3f}x | "
          f"{timing.fmt_round_ratios(per_round[0], rounds)} |")
  same = np.array_equal(images[0].view(np.uint32), images[1].view(np.uint32))
  print(f"\nnew syn_images after one step: {'the same bits' if same else 'DIFFERENT'}")


if __name__ == "__main__":
  main()
