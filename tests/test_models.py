"""Network shapes, parameter counts against the PyTorch definitions, initialisation, vmap."""

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


def test_unknown_arch_and_norm():
  with pytest.raises(ValueError, match="unknown architecture"):
    models.build_module("resnet99", 10)
  with pytest.raises(ValueError, match="unknown norm"):
    models.build_module("convnet", 10, norm="layer")


def _conv(cin, cout, k, bias=True):
  return cin * k * k * cout + (cout if bias else 0)


def test_cross_architecture_param_counts():
  """Counts from the reference networks' layer lists, added up by hand here."""
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


def test_densenet121_param_count_is_the_pytorch_definitions():
  """kuangliu's CIFAR DenseNet121 layer by layer: bias-free convs, BN weight and bias each."""
  growth, count, c = 32, _conv(3, 64, 3, False), 64
  for i, layers in enumerate((6, 12, 24, 16)):
    for _ in range(layers):
      count += 2 * c + _conv(c, 4 * growth, 1, False) + 2 * 4 * growth
      count += _conv(4 * growth, growth, 3, False)
      c += growth
    if i < 3:
      count += 2 * c + _conv(c, c // 2, 1, False)
      c //= 2
  count += 2 * c + c * 10 + 10
  assert count == 6_956_298  # the familiar CIFAR DenseNet121 figure
  assert models.count_params("densenet121", 10, (32, 32, 3)) == count
  assert models.make_network("densenet121", 10, (32, 32, 3)).stateful


def test_densenet_trains_with_batch_statistics():
  # The DenseNet-121 layer pattern at two small blocks: one compile of the full network's
  # training step costs minutes on a CPU (the count above covers its layers).
  module = models.DenseNet(3, blocks=(2, 2), growth=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 8, 8, 3))
  y = jnp.array([0, 1, 2, 0, 1, 2])
  variables = module.init(jax.random.PRNGKey(1), x, train=False)

  @jax.jit
  def step(variables):
    def loss(params):
      (logits, _), new = module.apply({**variables, "params": params}, x, train=True,
                                      mutable=["batch_stats"])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), y]), new
    (value, new), g = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    params = jax.tree.map(lambda p, d: p - 0.1 * d, variables["params"], g)
    return {**new, "params": params}, value

  losses = []
  for _ in range(5):
    variables, value = step(variables)
    losses.append(float(value))
  assert losses[-1] < losses[0]
  stats = jax.tree_util.tree_leaves(variables["batch_stats"])
  assert stats and any(float(jnp.abs(s).sum()) > 0 for s in stats)
  logits, feats = module.apply(variables, x, train=False)
  # channels: stem 8, block 16, transition 8, block 16
  assert logits.shape == (6, 3) and feats.shape == (6, 16)
