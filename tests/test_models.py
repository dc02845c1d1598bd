"""Network shapes, parameter counts (SPEC §2) and the two convolution implementations."""

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
  assert np.allclose(params["GroupNorm_0"]["scale"], 1) and np.allclose(
      params["GroupNorm_0"]["bias"], 0)


def test_im2col_matches_xla_conv():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 5))
  a = models.conv2d(x, w, 1, "xla")
  b = models.conv2d(x, w, 1, "im2col")
  np.testing.assert_allclose(a, b, atol=1e-5)
  ga = jax.grad(lambda w: jnp.sum(models.conv2d(x, w, 1, "xla") ** 2))(w)
  gb = jax.grad(lambda w: jnp.sum(models.conv2d(x, w, 1, "im2col") ** 2))(w)
  np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-4)


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
