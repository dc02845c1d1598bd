"""The distillation step of two versions of the package, timed in turns in one process.

  python launch/ab_step.py --base=HEAD                      # c10_ipc1:10, datm + dsa
  python launch/ab_step.py --base=418c49c --setting=r1 --width=32 --kind=datm-clr
  python launch/ab_step.py --setting=r1 --width=32 --unroll=2    # HEAD's step, unrolled by 2
  python launch/ab_step.py --options='{"xla_cpu_multi_thread_eigen": false}'

Copies the package as it is at --base (`git archive`) into a temporary folder under another
name (datm_clr_jax_base), builds the benchmark's step (benchmark.setup_distill) from it and
from the working tree's package, and times their calls in turns (benchmark's
median_times_interleaved), so drift in the machine's speed (this CPU's varies by 2x between
sessions, launch/results/benchmark_cpu.md) moves both alike. A change that should not move
the numbers can be checked by the loss and image-gradient norm printed beside each.
--unroll and --options (XLA compile options, as JSON) apply to the worktree's step only, so an
XLA flag or a scan setting is compared with the default in one process too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "launch"))

import jax  # noqa: E402

import benchmark  # noqa: E402

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


@contextlib.contextmanager
def benchmark_using(package: str):
  """benchmark.setup_distill builds its step from `package` inside the block."""
  saved = benchmark.distill, benchmark.make_network, benchmark.augment
  benchmark.distill = importlib.import_module(f"{package}.distill")
  benchmark.make_network = importlib.import_module(f"{package}.models").make_network
  benchmark.augment = importlib.import_module(f"{package}.augment")
  try:
    yield
  finally:
    benchmark.distill, benchmark.make_network, benchmark.augment = saved


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
    extract_package(a.base, Path(d))
    sys.path.insert(0, d)
    calls, lines = [], []
    sides = ((f"base ({a.base})", BASE_NAME, 1, None),
             ("worktree", "datm_clr_jax", a.unroll, options or None))
    for label, package, unroll, side_options in sides:
      with benchmark_using(package):
        _, step, args, _ = benchmark.setup_distill(
            classes, ipc, n_steps, batch_syn, a.width, 32, full=a.kind == "datm-clr",
            remat=a.remat, kind=a.kind, views=a.views, unroll=unroll)
        compile_s, call, peak, flops = benchmark.jax_distill_call(step, args, side_options)
        m = jax.device_get(call()[1])  # the compiled call: step(*args) would compile again
      calls.append(call)
      lines.append(f"| {label} | {compile_s:.1f} s | {benchmark.fmt_gflop(flops)} | "
                   f"{benchmark.fmt_bytes(peak)} | {float(m['loss']):.8g} | "
                   f"{float(m['grad_norm_images']):.6g} |")
    per_round = benchmark.times_interleaved(calls, a.repeats, settle=a.settle)
  worktree = "".join([f"; worktree: scan unroll {a.unroll}" if a.unroll != 1 else "",
                      f"; worktree: XLA options {options}" if options else ""])
  print(f"{name}: N={n_steps} batch_syn={batch_syn} width={a.width} {a.kind} step, remat "
        f"{benchmark.REMAT_MODES[a.remat][1]}; {a.repeats} calls each in turns; "
        f"backend {jax.default_backend()}{worktree}\n")
  print("| package | compile | GFLOP (XLA) | peak (XLA) | loss | image-gradient norm | step "
        "| base / this | base / this, per round: median (min-max) |\n"
        "|---|---|---|---|---|---|---|---|---|")
  times = [statistics.median(t) for t in per_round]
  for line, t, rounds in zip(lines, times, per_round):
    print(f"{line} {benchmark.fmt_s(t)} | {times[0] / t:.3f}x | "
          f"{benchmark.fmt_round_ratios(per_round[0], rounds)} |")


if __name__ == "__main__":
  main()
