"""Benchmark: XLA convolution vs im2col, inside and outside lax loops (run on demand).

  python launch/benchmark_conv.py             # XLA conv vs im2col, in and out of loops
  python launch/benchmark_conv.py --vs_torch  # matmul and a conv layer, JAX beside PyTorch

Prints one table: compile time and steady-state time per call of a conv weight-gradient,
alone and inside an 8-step fori_loop, for both implementations, side by side, with ratios.
It is the measurement behind models.resolve_conv_impl choosing im2col on CPU.
"""

import time

import jax
import jax.numpy as jnp

from datm_clr_jax import models


def timeit(f, *args, reps=5):
  f = jax.jit(f)
  t = time.perf_counter()
  jax.block_until_ready(f(*args))
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(reps):
    out = f(*args)
  jax.block_until_ready(out)
  return compile_s, (time.perf_counter() - t) / reps


def main():
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 16, 16, 32))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 32)) * 0.05
  rows = []
  for impl in ("xla", "im2col"):
    g = jax.grad(lambda w, x, impl=impl: jnp.sum(models.conv2d(x, w, 1, impl) ** 2))
    once = timeit(g, w, x)
    loop = timeit(lambda w, x: jax.lax.fori_loop(0, 8, lambda i, w: w - 1e-4 * g(w, x), w),
                  w, x)
    rows.append((impl, once, loop))
  print(f"backend: {jax.default_backend()}  device: {jax.devices()[0].device_kind}")
  print(f"{'impl':8s} {'grad ms':>9s} {'8-step loop ms':>15s} {'per loop step ms':>17s} "
        f"{'compile s (loop)':>17s}")
  for impl, once, loop in rows:
    print(f"{impl:8s} {once[1] * 1e3:9.2f} {loop[1] * 1e3:15.2f} {loop[1] / 8 * 1e3:17.2f} "
          f"{loop[0]:17.2f}")
  (_, xo, xl), (_, io, il) = rows
  print(f"ratio xla/im2col: grad alone {xo[1] / io[1]:.2f}x, inside the loop {xl[1] / il[1]:.2f}x")


def vs_torch():
  """Matmul and one conv layer (fwd+bwd) at the CIFAR ConvNet's shapes, JAX beside PyTorch."""
  import torch  # pylint: disable=import-outside-toplevel

  def per_call(f, *args, reps=20):
    f(*args)
    t = time.perf_counter()
    for _ in range(reps):
      out = f(*args)
    if not isinstance(out, torch.Tensor):
      jax.block_until_ready(out)
    return (time.perf_counter() - t) / reps

  print(f"{'matmul m x k x n':22s} {'JAX GFLOP/s':>12s} {'PyTorch GFLOP/s':>16s}")
  for m, k, n in [(2560, 1152, 128), (640, 1152, 128), (10240, 27, 128)]:
    gflop = 2 * m * k * n / 1e9
    tj = per_call(jax.jit(lambda a, b: a @ b), jnp.ones((m, k)), jnp.ones((k, n)))
    tt = per_call(lambda a, b: a @ b, torch.ones(m, k), torch.ones(k, n))
    print(f"{f'{m} x {k} x {n}':22s} {gflop / tj:12.1f} {gflop / tt:16.1f}")
  x, w = jnp.ones((10, 16, 16, 128)), jnp.full((3, 3, 128, 128), 0.01)
  g = jax.jit(jax.grad(lambda w, x: jnp.sum(models.conv2d(x, w, 1, "im2col") ** 2), (0, 1)))
  xt = torch.ones(10, 128, 16, 16, requires_grad=True)
  wt = torch.full((128, 128, 3, 3), 0.01, requires_grad=True)

  def torch_grad(x, w):
    (torch.nn.functional.conv2d(x, w, padding=1) ** 2).sum().backward()
    return x.grad

  tj, tt = per_call(g, w, x), per_call(torch_grad, xt, wt)
  print(f"conv 3x3 128->128 on (10,16,16) fwd+bwd: JAX im2col {tj * 1e3:.1f} ms, PyTorch "
        f"{tt * 1e3:.1f} ms ({tt / tj:.2f}x)")


if __name__ == "__main__":
  import sys
  vs_torch() if "--vs_torch" in sys.argv else main()
