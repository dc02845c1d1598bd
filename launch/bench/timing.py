"""Timing and formatting helpers shared by the harnesses: calls taken in turns, medians,
per-round ratios, XLA's FLOP and memory counts, markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax


def median_time(fn, repeats: int) -> float:
  fn()  # warm-up (the first call may still allocate)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def times_interleaved(fns: list, repeats: int, between=None, settle: bool = True
                      ) -> list[list[float]]:
  """Each fn's `repeats` call times (s), the calls taken in turns (ABAB..., reversed every
  other round), so a machine that slows down or speeds up during the run favours none of them.
  `between`, if given, runs untimed after every call (e.g. handing PyTorch's cached memory
  back).

  settle: each timed call comes right after an untimed call of the same fn, as in a run, which
  calls one step back to back. The first call after another program can pay for memory that
  program freed: on a VM whose balloon reports free pages, the host takes freed memory back
  and the next touch of it faults on the host (launch/bench/touch_after_free.py shows it),
  which slowed the step after a PyTorch call far more than its FLOPs.
  """
  for fn in fns:
    fn()
    if between:
      between()
  times = [[] for _ in fns]
  for r in range(repeats):
    order = list(range(len(fns)))[::1 if r % 2 == 0 else -1]
    for i in order:
      if settle:
        fns[i]()
      t0 = time.perf_counter()
      fns[i]()
      times[i].append(time.perf_counter() - t0)
      if between:
        between()
  return times


def median_times_interleaved(fns: list, repeats: int, between=None, settle: bool = True
                             ) -> list[float]:
  """The median of each fn's times_interleaved."""
  return [statistics.median(t) for t in times_interleaved(fns, repeats, between, settle)]


def round_ratios(num: list[float], den: list[float]) -> tuple[float, float, float]:
  """(median, min, max) of num[r] / den[r] over rounds r: two steps' times from the same
  rounds of times_interleaved, so each ratio compares calls a few seconds apart."""
  r = [a / b for a, b in zip(num, den, strict=True)]
  return statistics.median(r), min(r), max(r)


def fmt_round_ratios(num, den) -> str:
  if not num or not den:
    return "-"
  med, lo, hi = round_ratios(num, den)
  return f"{med:.3f} ({lo:.3f}-{hi:.3f})"


OOM = "out of memory"  # a cell whose run did not fit in the device's memory


def is_oom(e: Exception) -> bool:
  """PyTorch's OutOfMemoryError, XLA's RESOURCE_EXHAUSTED, or a host allocation failure."""
  text = str(e)
  return "out of memory" in text.lower() or "RESOURCE_EXHAUSTED" in text


def fmt_bytes(n) -> str:
  return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def fmt_s(t) -> str:
  if t is None:
    return "-"
  if t == OOM:
    return OOM
  return f"{t * 1e3:,.1f} ms" if t < 10 else f"{t:,.1f} s"


def fmt_compile(c) -> str:
  return "-" if c is None else f"{c:.1f} s"


def loop_label(loop: str, resolved: str) -> str:
  """'vmap', or 'auto (map)' when 'auto' was resolved."""
  return loop if loop == resolved else f"{loop} ({resolved})"


def ratio(t_torch, t_jax) -> str:
  if t_torch is None or t_jax is None or OOM in (t_torch, t_jax):
    return "-"
  return f"{t_torch / t_jax:.2f}x"


def table(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def compiled_peak(compiled) -> int | None:
  """Peak bytes XLA plans for one call: arguments + outputs + temporaries - aliased."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # some backends return None or raise
    return None


def cost_flops(compiled) -> float | None:
  """FLOPs XLA's cost analysis counts for one call of a compiled function."""
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])
  except Exception:  # some backends return None or leave the count out
    return None


def fmt_rate(flops_per_s) -> str:
  """FLOP/s as GFLOP/s."""
  return "-" if flops_per_s is None else f"{flops_per_s / 1e9:,.1f}"


def fmt_gflop(flops) -> str:
  return "-" if flops is None else f"{flops / 1e9:,.2f}"


def fmt_mflop(flops) -> str:
  return "-" if flops is None else f"{flops / 1e6:,.2f} MFLOP"


def machine() -> str:
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  cpu = platform.processor() or platform.machine()
  return (f"JAX {jax.__version__} on {dev.platform} ({kind}), {len(jax.devices())} device(s); "
          f"host {cpu}, {os.cpu_count()} CPU cores")
