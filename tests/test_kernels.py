"""The XLA:CPU forms of convolution, instance norm and pooling against XLA's and Flax's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datm_clr_jax import kernels, models


def test_im2col_matches_xla_conv():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5))
  a = kernels.conv2d(x, w, 1, "xla")
  b = kernels.conv2d(x, w, 1, "im2col")
  np.testing.assert_allclose(a, b, atol=1e-5)
  ga = jax.grad(lambda w: jnp.sum(kernels.conv2d(x, w, 1, "xla") ** 2))(w)
  gb = jax.grad(lambda w: jnp.sum(kernels.conv2d(x, w, 1, "im2col") ** 2))(w)
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
      loss = lambda x, w: jnp.sum(jnp.tanh(kernels.conv2d(x, w, pad, impl)) ** 2)

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
  jaxpr = str(jax.make_jaxpr(lambda x, w: kernels.conv2d(x, w, 1, "hybrid"))(x, w))
  assert jaxpr.count("conv_general_dilated") == xla_convs
  grads = str(jax.make_jaxpr(jax.grad(
      lambda x, w: jnp.sum(kernels.conv2d(x, w, 1, "hybrid") ** 2), (0, 1)))(x, w))
  assert grads.count("conv_general_dilated") == 2 * xla_convs  # forward and input gradient


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

    ours = lambda x, s, b: kernels.instance_norm(x, s, b, 1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(results(plain)),
                    jax.tree_util.tree_leaves(results(ours))):
      np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9)


def test_avg_pool2_matches_flax():
  for shape in ((2, 8, 6, 3), (2, 7, 5, 3)):  # odd sizes drop the last row / column
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    np.testing.assert_allclose(kernels.avg_pool2(x), nn.avg_pool(x, (2, 2), strides=(2, 2)),
                               atol=1e-6)


def test_instance_norm_is_per_sample():
  net = models.make_network("convnet", 10, (8, 8, 3), width=4, depth=1)
  p = net.init_flat(jax.random.PRNGKey(0), (8, 8, 3))
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3))
  full = net.apply_flat(p, x)[0]
  single = net.apply_flat(p, x[:1])[0]
  np.testing.assert_allclose(full[:1], single, atol=1e-5)


def test_strided_im2col_matches_xla():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  for k, pad in ((3, 1), (1, 0)):
    w = jax.random.normal(jax.random.PRNGKey(k), (k, k, 3, 4))
    np.testing.assert_allclose(kernels.conv2d(x, w, pad, "xla", 2),
                               kernels.conv2d(x, w, pad, "im2col", 2), atol=1e-5)
