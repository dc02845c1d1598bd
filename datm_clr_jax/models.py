"""Networks used for experts, distillation students and evaluation.

Images are NHWC float arrays. Every network is a Flax linen module whose `__call__(x, train)`
returns `(logits, features)`: `logits` of shape (B, num_classes) and `features` of shape
(B, feature_dim), the flattened map that feeds the classifier (what the contrastive head reads).

Initialisation follows PyTorch's defaults rather than Flax's: conv and linear weights and
biases are uniform in +-1/sqrt(fan_in). Expert statistics and the learned learning rate of
the reference depend on that scale, so it matters for reproducing its numbers. The
convolutions and norms themselves live in `kernels` (their XLA:CPU forms).

Trajectory matching works on *flat* parameter vectors. `Network` bundles a module with the
ravel/unravel pair so the rest of the code can treat parameters as a 1-D array of length
`num_params`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.flatten_util import ravel_pytree

from datm_clr_jax.kernels import (CONV_OUTPUT, avg_pool2, conv2d, instance_norm,
                                  resolve_conv_impl)

NORMS = ("instance", "batch", "none")

HEAD_HIDDEN = "head_hidden"  # checkpoint name of the projection head's hidden layer


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
  """CIFAR ResNet18 of the reference: 3x3 stride-1 stem, no max-pool, [2,2,2,2] basic blocks,
  widths 64-512, bias-free convolutions, global average pool, linear head."""

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
  """VGG11 of the reference: conv3x3 + norm + ReLU blocks with max-pools, linear 512 -> classes."""

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
  """The CIFAR AlexNet of the reference: five convolutions (5x5 128, 5x5 192, 3x3 256, 3x3 192,
  3x3 192) with max-pools, no normalisation, linear head."""

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


class DenseNet(nn.Module):
  """The CIFAR DenseNet of the dataset-distillation benchmarks (DenseNet-121: blocks of
  6, 12, 24, 16 bottleneck layers, growth 32): a 3x3 stem of 2 * growth channels, each layer
  BN-ReLU-1x1 conv (4 * growth)-BN-ReLU-3x3 conv (growth) concatenated to its input, a
  transition (BN-ReLU-1x1 conv halving the channels, 2x2 average pool) after every block but
  the last, then BN-ReLU, global average pool and a linear head. Bias-free convolutions;
  batch norm with running statistics."""

  num_classes: int
  blocks: tuple[int, ...] = (6, 12, 24, 16)
  growth: int = 32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = lambda f, k, p: TorchConv(f, kernel_size=k, padding=p, use_bias=False,
                                     conv_impl=self.conv_impl)
    bn_relu = lambda y: nn.relu(make_norm("batch", train)(y))
    x = conv(2 * self.growth, 3, 1)(x)
    for i, layers in enumerate(self.blocks):
      for _ in range(layers):
        y = conv(4 * self.growth, 1, 0)(bn_relu(x))
        x = jnp.concatenate([conv(self.growth, 3, 1)(bn_relu(y)), x], axis=-1)
      if i < len(self.blocks) - 1:
        x = avg_pool2(conv(x.shape[-1] // 2, 1, 0)(bn_relu(x)))
    features = jnp.mean(bn_relu(x), axis=(1, 2))  # the reference's 4x4 average pool at 32 px
    return TorchDense(self.num_classes)(features), features


ARCHS = ("convnet", "convnetd4", "resnet18", "resnet18_bn", "vgg11", "vgg11_bn", "alexnet",
         "densenet121")


def build_module(arch: str, num_classes: int, *, width: int = 128, depth: int = 3,
                 norm: str = "instance", conv_impl: str = "auto") -> nn.Module:
  """Builds a network by name (one of ARCHS).

  `width`, `depth` and `norm` apply to the ConvNets; the cross-architecture networks fix their
  own widths, and their `_bn` variants (and DenseNet-121) use batch norm with running
  statistics.
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
  if arch == "densenet121":
    return DenseNet(num_classes, conv_impl=impl)
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
    convolutions, which XLA:CPU runs far slower than im2col's batched matmuls, so on the CPU
    (`backend`, default JAX's) vmapped networks use im2col (docs/performance.md). Elsewhere an
    explicit 'hybrid' stays: its weight gradient is then batched matmuls instead of a grouped
    weight-gradient convolution.
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


def from_config(model_config, num_classes: int, image_shape: tuple[int, int, int],
                arch: str | None = None) -> Network:
  """The run config's network (its model section), or evaluation network `arch` with the
  same ConvNet settings; a ValueError when its pooling stages shrink the images to nothing."""
  m = model_config
  arch = arch or m.arch
  try:
    net = make_network(arch, num_classes, image_shape, width=m.width, depth=m.depth,
                       norm=m.norm, conv_impl=m.conv_impl)
    ok = feature_dim(net, image_shape) > 0
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"architecture {arch!r} does not fit {tuple(image_shape)} images (its "
                     "pooling stages shrink them to nothing); use larger data.image_size")
  return net


def count_params(arch: str, num_classes: int, image_shape: tuple[int, int, int], **kw) -> int:
  """Number of trainable parameters (the flat length)."""
  return make_network(arch, num_classes, image_shape, **kw).num_params


def feature_dim(network: Network, image_shape: tuple[int, int, int]) -> int:
  """The width F of the (B, F) features the network returns beside its logits."""
  _, f = jax.eval_shape(lambda x: network.module.apply(
      network.module.init(jax.random.PRNGKey(0), x, train=False), x, train=False),
                        jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return int(f.shape[-1])


class ProjectionHead(nn.Module):
  """Contrastive projection MLP: features (B, F) -> (B, out_dim) via ReLU hidden layer."""

  hidden: int
  out_dim: int = 128

  @nn.compact
  def __call__(self, f):
    # The output layer is built first, so it is TorchDense_0 and the hidden one TorchDense_1:
    # checkpointed heads, and the random heads a seed draws, are keyed by these names.
    out = TorchDense(self.out_dim)
    return out(nn.relu(checkpoint_name(TorchDense(self.hidden)(f), HEAD_HIDDEN)))
