"""Networks used for experts, distillation students and evaluation.

Images are NHWC float arrays. Every network is a Flax linen module whose `__call__(x, train)`
returns `(logits, features)`: `logits` of shape (B, num_classes) and `features` of shape
(B, feature_dim), the flattened map that feeds the classifier (what the contrastive head reads).

Initialisation follows PyTorch's defaults rather than Flax's (SPEC §2): conv and linear weights
and biases are uniform in +-1/sqrt(fan_in). Expert statistics and the learned learning rate of
the reference depend on that scale, so it matters for reproducing its numbers.

Trajectory matching works on *flat* parameter vectors. `Network` bundles a module with the
ravel/unravel pair so the rest of the code can treat parameters as a 1-D array of length
`num_params`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.flatten_util import ravel_pytree

NORMS = ("instance", "batch", "none")

# Names (jax.ad_checkpoint.checkpoint_name) of the convolution outputs, under the hybrid
# convolution of the input gradients the student's backward pass computes, and of the
# projection head's hidden pre-activation: a remat policy may keep them
# (distill.StepConfig.remat_convs) instead of recomputing the convolutions and the head.
CONV_OUTPUT = "conv_output"
CONV_INPUT_GRAD = "conv_input_grad"
HEAD_HIDDEN = "head_hidden"


def _torch_uniform(fan_in_axes: tuple[int, ...]) -> Callable:
  """PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights."""

  def init(key, shape, dtype=jnp.float32):
    fan_in = math.prod(shape[a] for a in fan_in_axes)
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _torch_bias(fan_in: int) -> Callable:
  def init(key, shape, dtype=jnp.float32):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


CONV_IMPLS = ("auto", "xla", "im2col", "hybrid")


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> 'hybrid' on CPU, 'xla' elsewhere.

  'xla': XLA's convolution, differentiated by JAX. On XLA:CPU its weight-gradient
  convolution runs many times slower inside a while loop (lax.scan, fori_loop) than outside
  it (launch/benchmark_conv.py measures it), and trajectory matching differentiates convolutions inside scans everywhere.
  'im2col': shifted slices + one matmul, differentiated by JAX; matmul speed in or out of
  loops, but the patch copies and their adjoints cost memory traffic.
  'hybrid': XLA's convolution for the forward pass and the input gradient, matmuls for the
  weight gradient (`_kernel_grad`), tied together by custom derivative rules that hold to any
  order (`_conv_s1`). Measured in launch/benchmark_conv.py and launch/benchmark.py.
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv_impl {impl!r}; expected one of {CONV_IMPLS}")
  if impl == "auto":
    return "hybrid" if jax.default_backend() == "cpu" else "xla"
  return impl


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
# and the weight gradient is one im2col matmul (see `_kernel_grad`). The value separates RGB
# inputs (3) from hidden layers (>= 32 here); it was not tuned.
_FOLD_BELOW_CIN = 16


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

  Wide inputs take one matmul dy^T @ (x shifted by the tap) per kernel tap. One im2col matmul
  over a (B*H'*W', kh*kw*Cin) patch matrix does the same FLOPs, but XLA:CPU copies the patch
  matrix twice (building it, then transposing it for the matmul), and in the CIFAR-10 IPC 1
  step the copies took three quarters of the matmul's time (launch/results/benchmark_cpu.md;
  launch/benchmark_conv.py --kernel_grad compares both). With few input channels the patch
  matrix is small and one matmul beats kh*kw thin ones.
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


# XLA:CPU's convolution on tiny maps is pathological: on 2x2 maps (VGG11's last two layers at
# 32 px) the im2col matmul is far faster, at 4x4 the two are close (the figures:
# launch/benchmark_conv.py --tiny_maps, launch/results/cross_arch_cpu.md).
_IM2COL_MAX_PIXELS = 4


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """Stride-1 convolution whose derivatives are again `_conv_s1` and `_kernel_grad`.

  So every derivative, of any order (trajectory matching differentiates the student's
  gradient), is either an XLA forward convolution or the weight-gradient matmuls, and
  XLA:CPU's slow weight-gradient convolution never appears. Maps of at most
  `_IM2COL_MAX_PIXELS` pixels take the im2col matmul instead of XLA's convolution.
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


class TorchConv(nn.Module):
  """kxk convolution with PyTorch-default initialisation; NHWC, HWIO kernel."""

  features: int
  kernel_size: int = 3
  padding: int = 1
  use_bias: bool = True
  conv_impl: str = "auto"
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    in_ch = x.shape[-1]
    fan_in = in_ch * self.kernel_size * self.kernel_size
    kernel = self.param("kernel", _torch_uniform((0, 1, 2)),
                        (self.kernel_size, self.kernel_size, in_ch, self.features))
    y = conv2d(x, kernel.astype(x.dtype), self.padding, self.conv_impl, self.stride)
    if self.use_bias:
      y = y + self.param("bias", _torch_bias(fan_in), (self.features,)).astype(x.dtype)
    return checkpoint_name(y, CONV_OUTPUT)


class TorchDense(nn.Module):
  """Linear layer with PyTorch-default initialisation."""

  features: int

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param("kernel", _torch_uniform((0,)), (fan_in, self.features))
    bias = self.param("bias", _torch_bias(fan_in), (self.features,))
    return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
  """(x - mean) / sqrt(var + epsilon) * scale + bias over H and W: x (B,H,W,C), scale (C,).

  The variance is E[x^2] - E[x]^2 clipped at 0, as Flax's GroupNorm computes it. The
  derivative is the textbook one written out (`_instance_norm_bwd`), which trajectory
  matching differentiates again. In the CIFAR-10 IPC 1 step that was faster than JAX's
  derivative of the formula; at IPC 10, and on its own, it was not slower
  (launch/results/benchmark_cpu.md).
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


class InstanceNorm(nn.Module):
  """Per-sample, per-channel normalisation over H and W with a learned scale and bias.

  The numbers of Flax's GroupNorm(num_groups=C) (and PyTorch's GroupNorm(C, C)), reduced over
  the (B,H,W,C) array's axes 1 and 2 directly: GroupNorm reduces a reshaped (B,H,W,C,1)
  array over (1,2,4), and XLA:CPU runs that reduction (and its gradients) several times
  slower.
  """

  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    # float32 like every other parameter (and Flax's GroupNorm): ravel_pytree's unravel casts
    # a flat vector back to each leaf's dtype once the leaves' dtypes differ.
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return instance_norm(x, scale, bias, self.epsilon)


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2: (B,H,W,C) -> (B,H//2,W//2,C); an odd last row or column
  is dropped, as PyTorch's AvgPool2d(2) and Flax's VALID avg_pool do.

  As a reshape and mean rather than a reduce-window: the gradient is then a broadcast, where
  XLA:CPU would run a padded reduce-window over the whole input.
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def make_norm(norm: str, train: bool):
  """Returns a callable norm layer: instance norm, batch norm or the identity."""
  if norm == "instance":
    return lambda x: InstanceNorm()(x)
  if norm == "batch":
    # PyTorch's BN momentum 0.1 is Flax's 0.9.
    return lambda x: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                  epsilon=1e-5)(x)
  if norm == "none":
    return lambda x: x
  raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


class ConvNet(nn.Module):
  """The MTT/DATM ConvNet: `depth` x [conv3x3 -> norm -> ReLU -> avgpool2], then linear."""

  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "instance"
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = True):
    for _ in range(self.depth):
      x = TorchConv(self.width, conv_impl=self.conv_impl)(x)
      x = make_norm(self.norm, train)(x)
      x = nn.relu(x)
      x = avg_pool2(x)
    features = _nchw_flatten(x)
    return TorchDense(self.num_classes)(features), features


def _nchw_flatten(x):
  """Flatten channel-major, as PyTorch's x.view(B, -1) on NCHW, so weights line up."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class BasicBlock(nn.Module):
  """ResNet basic block: two bias-free 3x3 convs with norms, 1x1 projection when shapes change."""

  features: int
  stride: int
  norm: str
  conv_impl: str

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, p: TorchConv(f, kernel_size=k, padding=p, use_bias=False,
                                        conv_impl=self.conv_impl, stride=s)
    y = nn.relu(make_norm(self.norm, train)(conv(self.features, 3, self.stride, 1)(x)))
    y = make_norm(self.norm, train)(conv(self.features, 3, 1, 1)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = make_norm(self.norm, train)(conv(self.features, 1, self.stride, 0)(x))
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """CIFAR ResNet18 (SPEC §2): 3x3 stride-1 stem, no max-pool, [2,2,2,2] basic blocks."""

  num_classes: int
  norm: str = "instance"
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = TorchConv(64, use_bias=False, conv_impl=self.conv_impl)(x)
    x = nn.relu(make_norm(self.norm, train)(x))
    for i, width in enumerate((64, 128, 256, 512)):
      for j in range(2):
        x = BasicBlock(width, 2 if (i > 0 and j == 0) else 1, self.norm, self.conv_impl)(x, train)
    features = jnp.mean(x, axis=(1, 2))  # the reference's 4x4 average pool at 32 px
    return TorchDense(self.num_classes)(features), features


VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
  """VGG11 (SPEC §2): conv3x3 + norm + ReLU blocks with max-pools, linear 512 -> classes."""

  num_classes: int
  norm: str = "instance"
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = True):
    for v in VGG11_CFG:
      if v == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nn.relu(make_norm(self.norm, train)(TorchConv(v, conv_impl=self.conv_impl)(x)))
    features = _nchw_flatten(x)
    return TorchDense(self.num_classes)(features), features


class AlexNet(nn.Module):
  """The CIFAR AlexNet of the reference (SPEC §2), no normalisation."""

  num_classes: int
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = lambda f, k, p: TorchConv(f, kernel_size=k, padding=p, conv_impl=self.conv_impl)
    pool = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2))
    x = pool(nn.relu(conv(128, 5, 2)(x)))
    x = pool(nn.relu(conv(192, 5, 2)(x)))
    x = nn.relu(conv(256, 3, 1)(x))
    x = nn.relu(conv(192, 3, 1)(x))
    x = pool(nn.relu(conv(192, 3, 1)(x)))
    features = _nchw_flatten(x)
    return TorchDense(self.num_classes)(features), features


ARCHS = ("convnet", "convnetd4", "resnet18", "resnet18_bn", "vgg11", "vgg11_bn", "alexnet")


def build_module(arch: str, num_classes: int, *, width: int = 128, depth: int = 3,
                 norm: str = "instance", conv_impl: str = "auto") -> nn.Module:
  """Builds a network by name (one of ARCHS).

  `width`, `depth` and `norm` apply to the ConvNets; the cross-architecture networks fix their
  own widths, and their `_bn` variants use batch norm (with running statistics).
  """
  arch = arch.lower()
  if norm not in NORMS:
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
  impl = resolve_conv_impl(conv_impl)
  if arch == "convnet":
    return ConvNet(num_classes, width=width, depth=depth, norm=norm, conv_impl=impl)
  if arch == "convnetd4":
    return ConvNet(num_classes, width=width, depth=4, norm=norm, conv_impl=impl)
  if arch in ("resnet18", "resnet18_bn"):
    return ResNet18(num_classes, norm="batch" if arch.endswith("_bn") else "instance",
                    conv_impl=impl)
  if arch in ("vgg11", "vgg11_bn"):
    return VGG11(num_classes, norm="batch" if arch.endswith("_bn") else "instance",
                 conv_impl=impl)
  if arch == "alexnet":
    return AlexNet(num_classes, conv_impl=impl)
  raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")


@dataclasses.dataclass(frozen=True)
class Network:
  """A module plus the flat-parameter view trajectory matching needs.

  Attributes:
    module: the Flax module.
    unravel: maps a flat vector of shape (num_params,) back to the params pytree.
    num_params: length of the flat vector.
    stateful: whether the network carries batch statistics (BatchNorm).
  """

  module: nn.Module
  unravel: Callable[[jax.Array], Any]
  num_params: int
  stateful: bool

  def for_vmap(self, backend: str | None = None) -> Network:
    """This network for parameter sets trained side by side under jax.vmap; same numbers.

    Batched over kernels, the hybrid convolution's XLA convolutions become grouped
    convolutions, which XLA:CPU runs far slower than im2col's batched matmuls (experts at
    K = 2 and 4 fell from 140 to 57 and 50 images/s: launch/results/benchmark_cpu.md as of
    commit 3226fae), so on the CPU (`backend`, default JAX's) vmapped networks use im2col.
    Elsewhere an explicit 'hybrid' stays: its forward and input-gradient convolutions are
    grouped, but its weight gradient is batched matmuls instead of the grouped weight-gradient
    convolution that 'xla' gets under vmap (a candidate for GPUs: launch/gpu_session.sh).
    """
    if (getattr(self.module, "conv_impl", None) != "hybrid"
        or (backend or jax.default_backend()) != "cpu"):
      return self
    return dataclasses.replace(self, module=self.module.clone(conv_impl="im2col"))

  def init_flat(self, key: jax.Array, image_shape: tuple[int, int, int]) -> jax.Array:
    """Fresh PyTorch-style parameters, flat, shape (num_params,)."""
    variables = self.module.init(key, jnp.zeros((1, *image_shape)), train=False)
    return ravel_pytree(variables["params"])[0]

  def init_variables(self, key: jax.Array, image_shape: tuple[int, int, int]) -> dict:
    """Fresh variables dict ({'params': ..., 'batch_stats': ...} for BN networks)."""
    return dict(self.module.init(key, jnp.zeros((1, *image_shape)), train=False))

  def apply_flat(self, flat_params: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Forward pass of a stateless network from flat params.

    Args:
      flat_params: (num_params,).
      x: (B, H, W, C) images.
    Returns:
      logits (B, num_classes) and features (B, feature_dim).
    """
    return self.module.apply({"params": self.unravel(flat_params)}, x, train=True)


def make_network(arch: str, num_classes: int, image_shape: tuple[int, int, int], *,
                 width: int = 128, depth: int = 3, norm: str = "instance",
                 conv_impl: str = "auto") -> Network:
  """Builds `Network` for images of shape (H, W, C)."""
  module = build_module(arch, num_classes, width=width, depth=depth, norm=norm,
                        conv_impl=conv_impl)
  variables = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False))
  flat, unravel = ravel_pytree(jax.tree_util.tree_map(
      lambda s: jnp.zeros(s.shape, s.dtype), variables["params"]))
  return Network(module=module, unravel=unravel, num_params=int(flat.size),
                 stateful="batch_stats" in variables)


def count_params(arch: str, num_classes: int, image_shape: tuple[int, int, int], **kw) -> int:
  """Number of trainable parameters (the flat length)."""
  return make_network(arch, num_classes, image_shape, **kw).num_params


class ProjectionHead(nn.Module):
  """Contrastive projection MLP: features (B, F) -> (B, out_dim) via ReLU hidden layer."""

  hidden: int
  out_dim: int = 128

  @nn.compact
  def __call__(self, f):
    # The output layer is built first, so it is TorchDense_0 and the hidden one TorchDense_1:
    # the parameter names (and the random heads drawn from them) of earlier runs.
    out = TorchDense(self.out_dim)
    return out(nn.relu(checkpoint_name(TorchDense(self.hidden)(f), HEAD_HIDDEN)))
