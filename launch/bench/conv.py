"""Benchmark: the conv implementations, inside and outside lax loops (run on demand).

  python launch/benchmark_conv.py             # xla / im2col / hybrid, in and out of loops
  python launch/benchmark_conv.py --vs_torch  # matmul and a conv layer, JAX beside PyTorch
  python launch/benchmark_conv.py --norm      # instance norm: Flax GroupNorm(C) vs ours
  python launch/benchmark_conv.py --kernel_grad  # weight gradient: im2col vs one matmul per tap
  python launch/benchmark_conv.py --tiny_maps  # forward conv on 1x1 .. 8x8 maps (VGG11's tail)
  python launch/benchmark_conv.py --winograd   # Winograd F(2x2,3x3) from XLA ops vs XLA's conv

Prints one table: compile time and steady-state time per call of a conv weight-gradient,
alone and inside an 8-step fori_loop, for each kernels.CONV_IMPLS entry, side by side, with
ratios to XLA's. It is the measurement behind kernels.resolve_conv_impl's CPU choice.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from datm_clr_jax import kernels, models


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
  for impl in ("xla", "im2col", "hybrid"):
    g = jax.grad(lambda w, x, impl=impl: jnp.sum(kernels.conv2d(x, w, 1, impl) ** 2))
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
  _, xo, xl = rows[0]
  for impl, once, loop in rows[1:]:
    print(f"ratio xla/{impl}: grad alone {xo[1] / once[1]:.2f}x, inside the loop "
          f"{xl[1] / loop[1]:.2f}x")


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
  def conv_grad(impl):
    return jax.jit(jax.grad(lambda w, x: jnp.sum(kernels.conv2d(x, w, 1, impl) ** 2), (0, 1)))

  grads = {impl: conv_grad(impl) for impl in ("im2col", "hybrid")}
  xt = torch.ones(10, 128, 16, 16, requires_grad=True)
  wt = torch.full((128, 128, 3, 3), 0.01, requires_grad=True)

  def torch_grad(x, w):
    (torch.nn.functional.conv2d(x, w, padding=1) ** 2).sum().backward()
    return x.grad

  tt = per_call(torch_grad, xt, wt)
  for impl, g in grads.items():
    tj = per_call(g, w, x)
    print(f"conv 3x3 128->128 on (10,16,16) fwd+bwd: JAX {impl} {tj * 1e3:.1f} ms, PyTorch "
          f"{tt * 1e3:.1f} ms ({tt / tj:.2f}x)")


def _per_call(f, *args, reps=10):
  f = jax.jit(f)
  jax.block_until_ready(f(*args))
  t = time.perf_counter()
  for _ in range(reps):
    out = f(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / reps


def kernel_grad():
  """The hybrid conv's weight gradient at the CIFAR ConvNet's layer shapes, both ways.

  One im2col matmul over the (B*H*W, 9*Cin) patch matrix against kernels._kernel_grad, which
  takes one matmul per kernel tap for Cin >= 16 (and the im2col matmul below that).
  """
  # pylint: disable=protected-access
  im2col = lambda x, dy: jnp.einsum("bhwk,bhwo->ko", kernels._patches(x, 3, 3, 1), dy)
  print(f"backend: {jax.default_backend()}")
  print(f"{'x (B,H,W,Cin)':18s} {'im2col ms':>10s} {'_kernel_grad ms':>16s} {'ratio':>7s}")
  for b, h, cin in [(10, 16, 128), (10, 8, 128), (100, 16, 128), (100, 8, 128), (10, 32, 3)]:
    x = jax.random.normal(jax.random.PRNGKey(0), (b, h, h, cin))
    dy = jax.random.normal(jax.random.PRNGKey(1), (b, h, h, 128))
    t_im = _per_call(im2col, x, dy)
    t_kg = _per_call(lambda x, dy: kernels._kernel_grad(x, dy, 1, 3, 3), x, dy)
    print(f"{str((b, h, h, cin)):18s} {t_im * 1e3:10.2f} {t_kg * 1e3:16.2f} "
          f"{t_im / t_kg:6.2f}x")


# Winograd F(2x2, 3x3) (Lavin & Gray 2016) written with XLA ops: 16 batched matmuls on 4x4
# input tiles at stride 2 replace the 9 taps, 2.25x fewer multiplies. Kept here, not in
# kernels.py: on XLA:CPU the tile transforms cost more than the multiplies they save
# (docs/performance.md).


def _winograd_rows(a, axis: int, n: int) -> list:
  """B^T applied along `axis` to the length-4 windows at stride 2: 4 arrays of length n."""
  d0, d1, d2, d3 = (jax.lax.slice_in_dim(a, i, i + 2 * n - 1, 2, axis) for i in range(4))
  return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def winograd_input(x):
  """(B,H,W,C), H and W even -> (16, B*H/2*W/2, C): B^T d B of x padded by 1."""
  b, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  tiles = [t for r in _winograd_rows(xp, 1, h // 2) for t in _winograd_rows(r, 2, w // 2)]
  return jnp.stack(tiles).reshape(16, -1, c)


def winograd_kernel(k):
  """(3,3,C,O) -> (16,C,O): G g G^T."""
  def rows(a):
    a0, a1, a2 = a[0], a[1], a[2]
    return [a0, (a0 + a1 + a2) * 0.5, (a0 - a1 + a2) * 0.5, a2]
  return jnp.stack([t for r in rows(k) for t in rows(r)])


def winograd_output(m, b: int, h: int, w: int):
  """(16, B*H/2*W/2, O) -> (B,H,W,O): A^T M A per tile."""
  m = m.reshape(4, 4, b, h // 2, w // 2, m.shape[-1])
  rows = [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
  y = [jnp.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]], axis=3) for r in rows]
  return jnp.stack(y, axis=2).reshape(b, h, w, -1)


def winograd_conv(x, k):
  """3x3 convolution, padding 1, stride 1: x (B,H,W,C), k (3,3,C,O) -> (B,H,W,O)."""
  m = jnp.einsum("pnc,pco->pno", winograd_input(x), winograd_kernel(k))
  return winograd_output(m, *x.shape[:3])


def winograd():
  """XLA's forward convolution against Winograd F(2x2,3x3) and its parts, at ConvNet shapes.

  The parts: the input-tile transform, the kernel transform, the 16 batched matmuls, the same
  FLOPs as one flat matmul (the rate the batched form could reach), the output transform.
  """
  print(f"backend: {jax.default_backend()}; ms per call")
  cols = ["xla conv", "winograd", "input tf", "kernel tf", "16 matmuls", "as 1 matmul",
          "output tf"]
  print(f"{'x (B,H,W,C)':18s} " + " ".join(f"{c:>11s}" for c in cols) + "  xla/winograd")
  for b, h, c in [(10, 16, 128), (10, 8, 128), (20, 16, 128), (10, 16, 32)]:
    x = jax.random.normal(jax.random.PRNGKey(0), (b, h, h, c))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, c)) / np.sqrt(9 * c)
    # pylint: disable=protected-access
    ref = kernels._xla_conv(x, k, 1)
    err = float(jnp.max(jnp.abs(winograd_conv(x, k) - ref)) / jnp.max(jnp.abs(ref)))
    assert err < 1e-5, err
    v, u = winograd_input(x), winograd_kernel(k)
    m = jnp.einsum("pnc,pco->pno", v, u)
    t = [_per_call(lambda x, k: kernels._xla_conv(x, k, 1), x, k), _per_call(winograd_conv, x, k),
         _per_call(winograd_input, x), _per_call(winograd_kernel, k),
         _per_call(lambda v, u: jnp.einsum("pnc,pco->pno", v, u), v, u),
         _per_call(lambda v, u: v.reshape(-1, c) @ u[0], v, u),
         _per_call(lambda m: winograd_output(m, b, h, h), m)]
    print(f"{str((b, h, h, c)):18s} " + " ".join(f"{s * 1e3:11.3f}" for s in t)
          + f"  {t[0] / t[1]:11.2f}x")


def tiny_maps():
  """Forward 3x3 convolutions as VGG11 and ResNet18 meet them at 32 px, down to 1x1 maps.

  XLA:CPU's convolution is far slower than the im2col matmul on the smallest maps, so the
  hybrid conv takes im2col there (kernels._IM2COL_MAX_PIXELS); this table is the measurement
  behind that threshold. PyTorch's convolution beside them when torch is installed.
  """
  # pylint: disable=protected-access
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    torch = None
  print(f"backend: {jax.default_backend()}; threshold: maps of <= "
        f"{kernels._IM2COL_MAX_PIXELS} pixels take im2col under 'hybrid'")
  print(f"{'batch':>5s} {'map':>5s} {'Cin->Cout':>10s} {'xla ms':>9s} {'im2col ms':>10s} "
        f"{'hybrid ms':>10s} {'xla/im2col':>11s} {'PyTorch ms':>11s}")
  for b in (500, 10):
    for hw, cin, cout in [(1, 512, 512), (2, 512, 512), (4, 512, 512), (4, 256, 512),
                          (8, 256, 256), (8, 128, 256)]:
      x = jax.random.normal(jax.random.PRNGKey(0), (b, hw, hw, cin))
      w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, cin, cout)) * 0.01
      t = {impl: _per_call(lambda x, w, impl=impl: kernels.conv2d(x, w, 1, impl), x, w, reps=3)
           for impl in ("xla", "im2col", "hybrid")}
      pt = "-"
      if torch is not None:
        xt, wt = torch.randn(b, cin, hw, hw), torch.randn(cout, cin, 3, 3) * 0.01
        with torch.no_grad():
          torch.nn.functional.conv2d(xt, wt, padding=1)
          t0 = time.perf_counter()
          for _ in range(3):
            torch.nn.functional.conv2d(xt, wt, padding=1)
        pt = f"{(time.perf_counter() - t0) / 3 * 1e3:.2f}"
      print(f"{b:5d} {f'{hw}x{hw}':>5s} {f'{cin}->{cout}':>10s} {t['xla'] * 1e3:9.2f} "
            f"{t['im2col'] * 1e3:10.2f} {t['hybrid'] * 1e3:10.2f} "
            f"{t['xla'] / t['im2col']:10.2f}x {pt:>11s}")


def norm():
  """Instance norm at CIFAR-10 IPC 10's first-layer shape: Flax's GroupNorm(C) vs ours.

  GroupNorm reduces a (B,H,W,C,1) reshape over axes (1,2,4); models.InstanceNorm reduces the
  (B,H,W,C) array over (1,2). The first two rows isolate the reduction, the same fused
  three-input product reduced both ways.
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  shape = (100, 32, 32, 128)
  a, b, c = (jax.random.normal(jax.random.PRNGKey(i), shape) for i in range(3))
  five = lambda v: v.reshape(*shape, 1)
  rows = [
      ("sum of a*b*c over (1,2,4), (B,H,W,C,1) inputs",
       lambda a, b, c: jnp.sum(a * (b * c), axis=(1, 2, 4)), (five(a), five(b), five(c))),
      ("sum of a*b*c over (1,2), (B,H,W,C) inputs",
       lambda a, b, c: jnp.sum(a * (b * c), axis=(1, 2)), (a, b, c)),
  ]
  params = {"params": {"scale": jnp.ones(shape[-1]), "bias": jnp.zeros(shape[-1])}}
  for name, layer in (("Flax GroupNorm(C)", nn.GroupNorm(num_groups=shape[-1], epsilon=1e-5)),
                      ("models.InstanceNorm", models.InstanceNorm())):
    fwd = lambda x, layer=layer: layer.apply(params, x)
    rows.append((f"{name} forward", fwd, (a,)))
    rows.append((f"{name} forward+backward",
                 jax.grad(lambda x, fwd=fwd: jnp.sum(jnp.sin(fwd(x)))), (a,)))
  # Second order, as trajectory matching takes it: JAX's derivative of JAX's derivative of the
  # formula against its derivative of kernels.instance_norm's written-out VJP.
  # pylint: disable=protected-access
  plain = lambda x, s, b: kernels._instance_norm_fwd(x, s, b, 1e-5)[0]  # same formula

  ones, zeros = jnp.ones(shape[-1]), jnp.zeros(shape[-1])
  for name, fn in (("formula, autodiff", plain),
                   ("kernels.instance_norm", lambda x, s, b: kernels.instance_norm(x, s, b, 1e-5))):
    inner = jax.grad(lambda x, s, fn=fn: jnp.sum(jnp.sin(fn(x, s, zeros)) * b), (0, 1))
    rows.append((f"{name}: grad of grad",
                 jax.grad(lambda x, s, inner=inner: jnp.sum(jnp.cos(inner(x, s)[0]))
                          + jnp.sum(inner(x, s)[1] ** 2), (0, 1)), (a, ones)))
  print(f"backend: {jax.default_backend()}; input {shape}")
  for name, f, args in rows:
    print(f"{name:50s} {_per_call(f, *args) * 1e3:9.2f} ms")


if __name__ == "__main__":
  import sys
  if "--vs_torch" in sys.argv:
    vs_torch()
  elif "--norm" in sys.argv:
    norm()
  elif "--kernel_grad" in sys.argv:
    kernel_grad()
  elif "--winograd" in sys.argv:
    winograd()
  elif "--tiny_maps" in sys.argv:
    tiny_maps()
  else:
    main()
