"""Network shapes, parameter counts (SPEC §2) and the two convolution implementations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datm_clr_jax import models


@pytest.mark.parametrize("arch,classes,shape,width,expected", [
    ("convnet", 10, (32, 32, 3), 128, 320_010),
    ("convnet", 100, (32, 32, 3), 128, 504_420),
    ("convnetd4", 200, (64, 64, 3), 128, 857_160),
    ("convnet", 10, (32, 32, 3), 32, 24_714),  # protocol R1
])
def test_param_counts(arch, classes, shape, width, expected):
  assert models.count_params(arch, classes, shape, width=width) == expected


def test_forward_shapes_and_features():
  net = models.make_network("convnet", 10, (16, 16, 1), width=8, depth=2)
  p = net.init_flat(jax.random.PRNGKey(0), (16, 16, 1))
  logits, feats = net.apply_flat(p, jnp.zeros((5, 16, 16, 1)))
  assert logits.shape == (5, 10) and feats.shape == (5, 8 * 4 * 4)
  assert p.shape == (net.num_params,)


def test_torch_style_init_bounds():
  net = models.make_network("convnet", 10, (32, 32, 3), width=16, depth=3)
  params = net.unravel(net.init_flat(jax.random.PRNGKey(1), (32, 32, 3)))
  k0 = params["TorchConv_0"]["kernel"]
  bound = 1 / np.sqrt(3 * 9)
  assert float(jnp.abs(k0).max()) <= bound and float(jnp.abs(k0).max()) > 0.9 * bound
  fc = params["TorchDense_0"]["kernel"]
  assert float(jnp.abs(fc).max()) <= 1 / np.sqrt(fc.shape[0])
  assert np.allclose(params["InstanceNorm_0"]["scale"], 1) and np.allclose(
      params["InstanceNorm_0"]["bias"], 0)


def test_parameters_share_one_dtype():
  # Mixed leaf dtypes would make unravel round a float64 flat vector to float32 leaves, which
  # breaks the float64 finite-difference checks of the hypergradient.
  with jax.enable_x64(True):
    net = models.make_network("convnet", 10, (8, 8, 3), width=4, depth=2)
    tree = net.unravel(jnp.zeros(net.num_params, jnp.float64))
    assert {a.dtype for a in jax.tree_util.tree_leaves(tree)} == {jnp.dtype(jnp.float64)}


def test_im2col_matches_xla_conv():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5))
  a = models.conv2d(x, w, 1, "xla")
  b = models.conv2d(x, w, 1, "im2col")
  np.testing.assert_allclose(a, b, atol=1e-5)
  ga = jax.grad(lambda w: jnp.sum(models.conv2d(x, w, 1, "xla") ** 2))(w)
  gb = jax.grad(lambda w: jnp.sum(models.conv2d(x, w, 1, "im2col") ** 2))(w)
  np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin,k,pad,size", [(3, 3, 1, 8), (20, 3, 1, 8), (16, 1, 0, 8),
                                             (18, 5, 2, 8), (20, 3, 1, 2)])
def test_hybrid_conv_derivatives_match_xla_to_second_order(cin, k, pad, size):
  """The hybrid conv's hand-written VJPs against JAX's own derivatives of XLA's conv.

  Second order as trajectory matching uses it: the gradient of a function of the gradient.
  Both paths of each gradient are covered: cin 3 folds dy @ W^T and takes one im2col matmul
  for the weight gradient, cin >= 16 a flipped convolution and one matmul per kernel tap;
  2x2 maps take im2col for the forward convolution and the input gradient.
  """
  with jax.enable_x64(True):
    kx, kw = jax.random.split(jax.random.PRNGKey(cin))
    x = jax.random.normal(kx, (2, size, size, cin), jnp.float64)
    w = 0.3 * jax.random.normal(kw, (k, k, cin, 7), jnp.float64)

    def results(impl):
      loss = lambda x, w: jnp.sum(jnp.tanh(models.conv2d(x, w, pad, impl)) ** 2)

      def outer(x, w):
        gx, gw = jax.grad(loss, (0, 1))(x, w)
        return jnp.sum(jnp.sin(gw)) + jnp.sum(gx ** 3) + loss(x - 0.1 * gx, w - 0.1 * gw)

      return loss(x, w), jax.grad(loss, (0, 1))(x, w), jax.grad(outer, (0, 1))(x, w)

    want, got = results("xla"), results("hybrid")
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
      np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size,xla_convs", [(2, 0), (3, 1)])
def test_hybrid_conv_takes_im2col_on_tiny_maps(size, xla_convs):
  """XLA:CPU's convolution is ~50x slower than a matmul on 2x2 maps (benchmark_conv.py)."""
  x, w = jnp.ones((2, size, size, 16)), jnp.ones((3, 3, 16, 8))
  jaxpr = str(jax.make_jaxpr(lambda x, w: models.conv2d(x, w, 1, "hybrid"))(x, w))
  assert jaxpr.count("conv_general_dilated") == xla_convs
  grads = str(jax.make_jaxpr(jax.grad(
      lambda x, w: jnp.sum(models.conv2d(x, w, 1, "hybrid") ** 2), (0, 1)))(x, w))
  assert grads.count("conv_general_dilated") == 2 * xla_convs  # forward and input gradient


def test_for_vmap_uses_im2col_with_the_same_numbers():
  net = models.make_network("convnet", 10, (8, 8, 3), width=4, depth=2, conv_impl="hybrid")
  v = net.for_vmap()
  assert net.module.conv_impl == "hybrid" and v.module.conv_impl == "im2col"
  p = net.init_flat(jax.random.PRNGKey(0), (8, 8, 3))
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 3))
  np.testing.assert_allclose(v.apply_flat(p, x)[0], net.apply_flat(p, x)[0], atol=1e-5)
  xla = models.make_network("convnet", 10, (8, 8, 3), width=4, depth=2, conv_impl="xla")
  assert xla.for_vmap() is xla
  # Off the CPU an explicit 'hybrid' keeps its matmul weight gradient under vmap.
  assert net.for_vmap(backend="gpu") is net


def test_hybrid_under_vmap_matches_xla():
  """The hybrid form batched over kernels (what a GPU runs under vmap) gives XLA's gradients."""
  shape = (8, 8, 3)
  nets = {impl: models.make_network("convnet", 10, shape, width=16, depth=2, conv_impl=impl)
          for impl in ("hybrid", "xla")}
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params = jnp.stack([nets["xla"].init_flat(k, shape) for k in keys])
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, *shape))

  def grads(net):
    loss = lambda p, xb: jnp.sum(net.apply_flat(p, xb)[0] ** 2)
    return jax.jit(jax.vmap(jax.grad(loss)))(params, x)

  hybrid = nets["hybrid"].for_vmap(backend="gpu")
  assert hybrid.module.conv_impl == "hybrid"
  np.testing.assert_allclose(grads(hybrid), grads(nets["xla"]), rtol=1e-4, atol=1e-5)


def test_instance_norm_matches_flax_group_norm():
  x = 3 * jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 5)) + 1
  kb, ks = jax.random.split(jax.random.PRNGKey(1))
  params = {"scale": jax.random.normal(ks, (5,)), "bias": jax.random.normal(kb, (5,))}
  ours = lambda x: models.InstanceNorm().apply({"params": params}, x)
  flax_gn = lambda x: nn.GroupNorm(num_groups=5, epsilon=1e-5).apply({"params": params}, x)
  np.testing.assert_allclose(ours(x), flax_gn(x), rtol=1e-5, atol=1e-5)
  g = lambda f: jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x)
  np.testing.assert_allclose(g(ours), g(flax_gn), rtol=1e-4, atol=1e-5)


def test_instance_norm_derivatives_match_autodiff_to_second_order():
  """The hand-written VJP against JAX's derivatives of the same formula, in float64.

  Includes a constant map (its variance clips at 0) and a gradient of a function of the
  gradient, as trajectory matching takes it.
  """
  def plain(x, scale, bias, eps=1e-5):
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.maximum(jnp.mean(x * x, axis=(1, 2), keepdims=True) - mean * mean, 0)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias

  with jax.enable_x64(True):
    kx, ks, kb = jax.random.split(jax.random.PRNGKey(3), 3)
    x = 2 * jax.random.normal(kx, (3, 6, 5, 4), jnp.float64) + 1
    x = x.at[1, :, :, 2].set(0.7)
    scale = jax.random.normal(ks, (4,), jnp.float64)
    bias = jax.random.normal(kb, (4,), jnp.float64)

    def results(norm):
      loss = lambda *a: jnp.sum(jnp.tanh(norm(*a)) ** 2)

      def outer(*a):
        gx, gs, gb = jax.grad(loss, (0, 1, 2))(*a)
        return jnp.sum(jnp.sin(gx)) + jnp.sum(gs ** 3) + loss(a[0] - 0.1 * gx, a[1] - gs, a[2])

      args = (x, scale, bias)
      return norm(*args), jax.grad(loss, (0, 1, 2))(*args), jax.grad(outer, (0, 1, 2))(*args)

    ours = lambda x, s, b: models.instance_norm(x, s, b, 1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(results(plain)),
                    jax.tree_util.tree_leaves(results(ours))):
      np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9)


def test_avg_pool2_matches_flax():
  for shape in ((2, 8, 6, 3), (2, 7, 5, 3)):  # odd sizes drop the last row / column
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    np.testing.assert_allclose(models.avg_pool2(x), nn.avg_pool(x, (2, 2), strides=(2, 2)),
                               atol=1e-6)


def test_instance_norm_is_per_sample():
  net = models.make_network("convnet", 10, (8, 8, 3), width=4, depth=1)
  p = net.init_flat(jax.random.PRNGKey(0), (8, 8, 3))
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3))
  full = net.apply_flat(p, x)[0]
  single = net.apply_flat(p, x[:1])[0]
  np.testing.assert_allclose(full[:1], single, atol=1e-5)


def test_unknown_arch_and_norm():
  with pytest.raises(ValueError, match="unknown architecture"):
    models.build_module("resnet99", 10)
  with pytest.raises(ValueError, match="unknown norm"):
    models.build_module("convnet", 10, norm="layer")


def _conv(cin, cout, k, bias=True):
  return cin * k * k * cout + (cout if bias else 0)


def test_cross_architecture_param_counts():
  """Counts from the layer lists of SPEC §2, added up by hand here."""
  # ResNet18: stem, 4 stages of 2 basic blocks (two 3x3 convs + norms), 1x1 projections.
  resnet = _conv(3, 64, 3, False) + 2 * 64
  cin = 64
  for width in (64, 128, 256, 512):
    for j in range(2):
      resnet += _conv(cin, width, 3, False) + _conv(width, width, 3, False) + 4 * width
      if cin != width:
        resnet += _conv(cin, width, 1, False) + 2 * width
      cin = width
  resnet += 512 * 10 + 10
  assert resnet == 11_173_962  # the familiar CIFAR ResNet18 figure
  vgg, cin = 0, 3
  for v in models.VGG11_CFG:
    if v != "M":
      vgg += _conv(cin, v, 3) + 2 * v
      cin = v
  vgg += 512 * 10 + 10
  alex = (_conv(3, 128, 5) + _conv(128, 192, 5) + _conv(192, 256, 3) + _conv(256, 192, 3)
          + _conv(192, 192, 3) + 192 * 4 * 4 * 10 + 10)
  for arch, expected in (("resnet18", resnet), ("resnet18_bn", resnet), ("vgg11", vgg),
                         ("alexnet", alex)):
    assert models.count_params(arch, 10, (32, 32, 3)) == expected, arch
  assert models.make_network("resnet18_bn", 10, (32, 32, 3)).stateful
  assert not models.make_network("resnet18", 10, (32, 32, 3)).stateful


# VGG11's shapes are traced by the parameter-count test; a full forward compile costs ~20 s.
@pytest.mark.parametrize("arch,size", [("resnet18", 8), ("alexnet", 32)])
def test_cross_architecture_forward(arch, size):
  module = models.build_module(arch, 7)
  x = jnp.zeros((2, size, size, 3))
  variables = module.init(jax.random.PRNGKey(0), x, train=False)
  logits, feats = module.apply(variables, x, train=False)
  assert logits.shape == (2, 7) and feats.ndim == 2


def test_strided_im2col_matches_xla():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  for k, pad in ((3, 1), (1, 0)):
    w = jax.random.normal(jax.random.PRNGKey(k), (k, k, 3, 4))
    np.testing.assert_allclose(models.conv2d(x, w, pad, "xla", 2),
                               models.conv2d(x, w, pad, "im2col", 2), atol=1e-5)
