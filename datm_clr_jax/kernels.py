"""Convolution, instance norm and pooling as the networks compute them, tuned for XLA:CPU.

Trajectory matching differentiates the student's gradient, so every op here is differentiated
twice. On XLA:CPU the weight-gradient convolution runs many times slower inside a loop
(lax.scan) than outside it, so by default the CPU takes the 'hybrid' convolution: XLA's
convolution for the forward pass and the input gradient, matmuls for the weight gradient, tied
together by custom derivative rules that hold to any order. Elsewhere XLA's own convolution
is used. Every form computes the same function (tests/test_kernels.py); docs/performance.md
holds the measurements behind each choice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# Names (jax.ad_checkpoint.checkpoint_name) of each convolution's output and, under the
# hybrid convolution, of the input gradient the student's backward pass computes: a remat
# policy may keep them (step.StepConfig.remat_convs) instead of recomputing them.
CONV_OUTPUT = "conv_output"
CONV_INPUT_GRAD = "conv_input_grad"

CONV_IMPLS = ("auto", "xla", "im2col", "hybrid")


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> 'hybrid' on CPU, 'xla' elsewhere.

  'xla': XLA's convolution, differentiated by JAX.
  'im2col': shifted slices and one matmul, differentiated by JAX.
  'hybrid': XLA's convolution forward and for the input gradient, matmuls for the weight
  gradient (`_conv_s1`).
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv_impl {impl!r}; expected one of {CONV_IMPLS}")
  if impl == "auto":
    return "hybrid" if jax.default_backend() == "cpu" else "xla"
  return impl


def conv2d(x: jax.Array, kernel: jax.Array, padding: int, impl: str,
           stride: int = 1) -> jax.Array:
  """Convolution, x (B,H,W,Cin), kernel (kh,kw,Cin,Cout) -> (B,H',W',Cout)."""
  impl = resolve_conv_impl(impl)
  if impl == "xla":
    return _xla_conv(x, kernel, padding, stride)
  if impl == "hybrid" and stride == 1:
    return _conv_s1(x, kernel, padding)
  # Strided convolutions (ResNet's downsampling) keep the plain im2col form under 'hybrid'.
  return _im2col(x, kernel, padding, stride)


def _xla_conv(x: jax.Array, kernel: jax.Array, padding: int, stride: int = 1) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=[(padding, padding)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _shifted(x: jax.Array, kh: int, kw: int, padding: int, stride: int = 1) -> list:
  """(B,H,W,C) -> kh*kw views (B,H',W',C) of the padded input, one per kernel tap (i, j)."""
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  return [xp[:, i:i + h:stride, j:j + w:stride, :] for i in range(kh) for j in range(kw)]


def _patches(x: jax.Array, kh: int, kw: int, padding: int, stride: int = 1) -> jax.Array:
  """(B,H,W,C) -> (B,H',W',kh*kw*C): every kh x kw window, ordered (i, j, c)."""
  return jnp.concatenate(_shifted(x, kh, kw, padding, stride), axis=-1)


def _im2col(x: jax.Array, kernel: jax.Array, padding: int, stride: int = 1) -> jax.Array:
  kh, kw, cin, cout = kernel.shape
  return _patches(x, kh, kw, padding, stride) @ kernel.reshape(kh * kw * cin, cout)


# With fewer input channels than this, the input gradient is dy @ W^T folded back onto the
# image (as a convolution it would produce only Cin channels from a kh*kw*Cout-wide input),
# and the weight gradient is one im2col matmul. The value separates RGB inputs from hidden
# layers; it was not tuned.
_FOLD_BELOW_CIN = 16

# Maps of at most this many pixels (VGG11's last layers at 32 px) take the im2col matmul
# under 'hybrid': XLA:CPU's convolution is slow on them.
_IM2COL_MAX_PIXELS = 4


def _input_grad(dy: jax.Array, kernel: jax.Array, padding: int, x_shape) -> jax.Array:
  """d<conv(x, kernel), dy>/dx at stride 1: dy (B,H',W',Cout) -> (B,H,W,Cin).

  The adjoint of a stride-1 convolution is a convolution of dy, padded by k - 1 - padding,
  with the kernel flipped in space and its channel axes swapped.
  """
  kh, kw, cin, _ = kernel.shape
  if cin < _FOLD_BELOW_CIN:
    fold = jax.linear_transpose(lambda x: _patches(x, kh, kw, padding),
                                jax.ShapeDtypeStruct(x_shape, dy.dtype))
    return fold(dy @ kernel.reshape(kh * kw * cin, -1).T)[0]
  return _conv_s1(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), kh - 1 - padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _kernel_grad(x: jax.Array, dy: jax.Array, padding: int, kh: int, kw: int) -> jax.Array:
  """d<conv(x, kernel), dy>/dkernel at stride 1: -> (kh,kw,Cin,Cout), as matmuls.

  Wide inputs take one matmul dy^T @ (x shifted by the tap) per kernel tap: one im2col
  matmul does the same FLOPs, but XLA:CPU copies its patch matrix twice. With few input
  channels the patch matrix is small and one matmul beats kh*kw thin ones.
  """
  cin, cout = x.shape[-1], dy.shape[-1]
  if cin < _FOLD_BELOW_CIN:
    g = jnp.einsum("bhwk,bhwo->ko", _patches(x, kh, kw, padding), dy)
    return g.reshape(kh, kw, cin, cout)
  taps = [jnp.einsum("bhwo,bhwc->oc", dy, xs) for xs in _shifted(x, kh, kw, padding)]
  return jnp.stack(taps).reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2)


def _kernel_grad_fwd(x, dy, padding, kh, kw):
  return _kernel_grad(x, dy, padding, kh, kw), (x, dy)


def _kernel_grad_bwd(padding, kh, kw, res, ct):
  del kh, kw
  # Bilinear in (x, dy): in dy its derivative is the convolution of x with ct, in x the input
  # gradient of that same convolution.
  x, dy = res
  return _input_grad(dy, ct, padding, x.shape), _conv_s1(x, ct, padding)


_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """Stride-1 convolution whose derivatives are again `_conv_s1` and `_kernel_grad`.

  So every derivative, of any order, is either an XLA forward convolution or the
  weight-gradient matmuls, and XLA:CPU's weight-gradient convolution never appears.
  """
  if x.shape[1] * x.shape[2] <= _IM2COL_MAX_PIXELS:
    return _im2col(x, kernel, padding)
  return _xla_conv(x, kernel, padding)


def _conv_s1_fwd(x, kernel, padding):
  return _conv_s1(x, kernel, padding), (x, kernel)


def _conv_s1_bwd(padding, res, dy):
  x, kernel = res
  kh, kw = kernel.shape[:2]
  dx = checkpoint_name(_input_grad(dy, kernel, padding, x.shape), CONV_INPUT_GRAD)
  return dx, _kernel_grad(x, dy, padding, kh, kw)


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
  """(x - mean) / sqrt(var + epsilon) * scale + bias over H and W: x (B,H,W,C), scale (C,).

  The variance is E[x^2] - E[x]^2 clipped at 0, as Flax's GroupNorm computes it. The
  derivative is the textbook one written out (`_instance_norm_bwd`), which XLA:CPU runs
  faster, differentiated again, than JAX's derivative of the formula.
  """
  return _instance_norm_fwd(x, scale, bias, epsilon)[0]


def _instance_norm_fwd(x, scale, bias, epsilon):
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.maximum(jnp.mean(jnp.square(x), axis=(1, 2), keepdims=True) - jnp.square(mean), 0)
  inv = jax.lax.rsqrt(var + epsilon)
  xhat = (x - mean) * inv
  return xhat * scale + bias, (xhat, inv, scale)


def _instance_norm_bwd(epsilon, res, dy):
  del epsilon
  xhat, inv, scale = res
  g = dy * scale
  # d xhat / dx projects out the mean and the xhat direction of each (sample, channel) map.
  dx = inv * (g - jnp.mean(g, axis=(1, 2), keepdims=True)
              - xhat * jnp.mean(g * xhat, axis=(1, 2), keepdims=True))
  return dx, jnp.sum(dy * xhat, axis=(0, 1, 2)), jnp.sum(dy, axis=(0, 1, 2))


instance_norm.defvjp(_instance_norm_fwd, _instance_norm_bwd)


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2: (B,H,W,C) -> (B,H//2,W//2,C); an odd last row or column
  is dropped, as PyTorch's AvgPool2d(2) and Flax's VALID avg_pool do.

  As a reshape and mean rather than a reduce-window: the gradient is then a broadcast, where
  XLA:CPU would run a padded reduce-window over the whole input.
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
