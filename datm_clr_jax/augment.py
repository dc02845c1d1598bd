"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) in JAX.

Every op maps images (B, H, W, C) to images of the same shape, is differentiable in the pixels
and draws its random parameters *per sample* from a PRNG key (the randomness itself is not
differentiated). Parameter values follow the reference DSA code.

Modes:
  'single'   - each call picks one op family at random and applies it to the whole batch
               (the reference default, used by MTT/DATM for the student and for evaluation).
  'multiple' - apply every family of the strategy in sequence.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Reference DSA parameters.
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5
CROP_RATIO = 0.125
CUTOUT_RATIO = 0.5
SCALE = 1.2
ROTATE_DEG = 15.0

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _uniform(key, batch, lo=0.0, hi=1.0, dtype=jnp.float32):
  return jax.random.uniform(key, (batch, 1, 1, 1), dtype, lo, hi)


def color(x: jax.Array, key: jax.Array) -> jax.Array:
  """Brightness, then saturation, then contrast jitter; (B,H,W,C) -> (B,H,W,C)."""
  kb, ks, kc = jax.random.split(key, 3)
  b = x.shape[0]
  x = x + (_uniform(kb, b, dtype=x.dtype) - 0.5) * BRIGHTNESS
  # The channel mean as a sum of channel slices: XLA:CPU reduces a minor axis of 3 slowly
  # (docs/performance.md).
  m = sum(x[..., i:i + 1] for i in range(x.shape[-1])) / x.shape[-1]
  x = (x - m) * (_uniform(ks, b, dtype=x.dtype) * SATURATION) + m
  m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - m) * (_uniform(kc, b, dtype=x.dtype) + CONTRAST) + m


def _shift(x: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
  """out[i, h, w] = x[i, h + dy[i], w + dx[i]], zero outside.

  Written as two one-hot matrix products rather than a gather: it differentiates (twice, for
  the hypergradient) into more matrix products, which XLA compiles quickly on every backend.
  """
  _, h, w, _ = x.shape
  sy = (jnp.arange(h)[None, :, None] + dy[:, None, None] == jnp.arange(h)[None, None, :])
  sx = (jnp.arange(w)[None, :, None] + dx[:, None, None] == jnp.arange(w)[None, None, :])
  out = jnp.einsum("bha,bawc->bhwc", sy.astype(x.dtype), x)
  return jnp.einsum("bwa,bhac->bhwc", sx.astype(x.dtype), out)


def crop(x: jax.Array, key: jax.Array) -> jax.Array:
  """Random integer translation in [-s, s], s = round(0.125 * H), zero fill."""
  b, h, w, _ = x.shape
  sy, sx = int(h * CROP_RATIO + 0.5), int(w * CROP_RATIO + 0.5)
  ky, kx = jax.random.split(key)
  dy = jax.random.randint(ky, (b,), -sy, sy + 1)
  dx = jax.random.randint(kx, (b,), -sx, sx + 1)
  return _shift(x, dy, dx)


def cutout(x: jax.Array, key: jax.Array) -> jax.Array:
  """Zeroes a square of side round(0.5 * H) at a random centre (clipped at the border)."""
  b, h, w, _ = x.shape
  ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (b,), 0, h + (1 - ch % 2))
  cx = jax.random.randint(kx, (b,), 0, w + (1 - cw % 2))
  rows = jnp.arange(h)[None, :]
  cols = jnp.arange(w)[None, :]
  in_y = (rows >= (cy - ch // 2)[:, None]) & (rows < (cy - ch // 2 + ch)[:, None])
  in_x = (cols >= (cx - cw // 2)[:, None]) & (cols < (cx - cw // 2 + cw)[:, None])
  mask = 1.0 - (in_y[:, :, None] & in_x[:, None, :]).astype(x.dtype)
  return x * mask[..., None]


def flip(x: jax.Array, key: jax.Array) -> jax.Array:
  """Horizontal flip of each sample with probability 0.5."""
  do = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
  return jnp.where(do, x[:, :, ::-1, :], x)


def affine(x: jax.Array, theta: jax.Array) -> jax.Array:
  """Applies per-sample 2x3 affine maps in normalised [-1, 1] coordinates.

  Bilinear sampling with zero padding, as torch's affine_grid + grid_sample(align_corners=
  True): the output pixel at normalised (u, v) reads the input at theta @ (u, v, 1). Each
  output pixel reads its four neighbouring source pixels through one gather over the whole
  batch; corners outside the image get weight 0. (Dense "tent" weights over every source
  pixel give the same values at H*W/4 times the multiply-adds: docs/performance.md, the
  profile of the step with DSA.)

  Args:
    x: (B, H, W, C) images.
    theta: (B, 2, 3).
  """
  b, h, w, c = x.shape
  v, u = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
  grid = jnp.stack([u, v, jnp.ones_like(u)], axis=-1).reshape(h * w, 3).astype(x.dtype)
  src = jnp.einsum("pk,bjk->bpj", grid, theta)  # (B, HW, 2) as (u, v)
  xs = (src[..., 0] + 1) * (w - 1) / 2
  ys = (src[..., 1] + 1) * (h - 1) / 2
  # The four corners (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1): (B, HW, 4) each.
  yi = jnp.floor(ys)[..., None] + jnp.array([0, 0, 1, 1], x.dtype)
  xi = jnp.floor(xs)[..., None] + jnp.array([0, 1, 0, 1], x.dtype)
  inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
  weight = jnp.where(inside, (1 - jnp.abs(ys[..., None] - yi)) * (1 - jnp.abs(xs[..., None] - xi)),
                     0)
  pixel = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
  pixel = pixel + (jnp.arange(b) * (h * w))[:, None, None]
  corners = x.reshape(b * h * w, c)[pixel]  # (B, HW, 4, C)
  return jnp.einsum("bpk,bpkc->bpc", weight, corners).reshape(x.shape)


def scale_factors(key: jax.Array, batch: int, dtype=jnp.float32) -> jax.Array:
  """(B, 2) per-sample (x, y) scale factors in [1/1.2, 1.2]."""
  return jax.random.uniform(key, (batch, 2), dtype, 1.0 / SCALE, SCALE)


def scale(x: jax.Array, key: jax.Array) -> jax.Array:
  """Independent x/y scaling by factors in [1/1.2, 1.2], bilinear, zero padding.

  The same sampling as `affine` with theta = diag(sx, sy) (tested equal), written as two
  products with (H x H) and (W x W) bilinear "tent" matrices: an axis-aligned map's weights
  factorise into a row and a column matrix, and matrix products need no scatter in the
  gradient.
  """
  b, h, w, _ = x.shape
  s = scale_factors(key, b, x.dtype)

  def tent(factor, n):  # (B, n_out, n_in) bilinear weights of the source coordinate
    coord = (factor[:, None] * jnp.linspace(-1, 1, n, dtype=x.dtype) + 1) * (n - 1) / 2
    return jax.nn.relu(1 - jnp.abs(coord[..., None] - jnp.arange(n, dtype=x.dtype)))

  out = jnp.einsum("bha,bawc->bhwc", tent(s[:, 1], h), x)
  return jnp.einsum("bwa,bhac->bhwc", tent(s[:, 0], w), out)


def rotate(x: jax.Array, key: jax.Array) -> jax.Array:
  """Rotation by an angle in [-15, 15] degrees, bilinear, zero padding."""
  b = x.shape[0]
  ang = jax.random.uniform(key, (b,), x.dtype, -ROTATE_DEG, ROTATE_DEG) * (math.pi / 180)
  c, s = jnp.cos(ang), jnp.sin(ang)
  zeros = jnp.zeros_like(c)
  theta = jnp.stack([jnp.stack([c, s, zeros], -1), jnp.stack([-s, c, zeros], -1)], axis=1)
  return affine(x, theta)


OPS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale,
       "rotate": rotate}
MODES = ("single", "multiple", "none")


def parse_strategy(strategy: str) -> tuple[str, ...]:
  """'color_crop_...' -> ('color', 'crop', ...); raises on unknown op names."""
  names = tuple(s for s in strategy.split("_") if s)
  unknown = [n for n in names if n not in OPS]
  if unknown:
    raise ValueError(f"unknown DSA op(s) {unknown} in strategy {strategy!r}; "
                     f"known: {sorted(OPS)}")
  return names


def dsa(x: jax.Array, key: jax.Array, strategy: str = DEFAULT_STRATEGY,
        mode: str = "single") -> jax.Array:
  """Augments a batch (B, H, W, C) -> (B, H, W, C) with DSA.

  Args:
    x: images.
    key: PRNG key; all randomness (op choice and per-sample parameters) comes from it.
    strategy: underscore-separated op names.
    mode: 'single' (one random family per call), 'multiple' (all in sequence) or 'none'.
  """
  names = parse_strategy(strategy)
  if mode == "none" or not names:
    return x
  if mode == "multiple":
    for name, k in zip(names, jax.random.split(key, len(names))):
      x = OPS[name](x, k)
    return x
  if mode == "single":
    k_choice, k_op = jax.random.split(key)
    idx = jax.random.randint(k_choice, (), 0, len(names))
    branches = [lambda xx, kk, f=OPS[n]: f(xx, kk) for n in names]
    return jax.lax.switch(idx, branches, x, k_op)
  raise ValueError(f"unknown DSA mode {mode!r}; expected one of {MODES}")
