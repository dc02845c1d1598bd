"""DSA: shapes, differentiability, exactness of flip/crop on hand-made images, modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datm_clr_jax import augment

X = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 3))


@pytest.mark.parametrize("name", sorted(augment.OPS))
def test_op_shape_and_gradient(name):
  op = augment.OPS[name]
  y = op(X, jax.random.PRNGKey(1))
  assert y.shape == X.shape and y.dtype == X.dtype
  g = jax.grad(lambda x: jnp.sum(op(x, jax.random.PRNGKey(1)) * jnp.arange(x.size).reshape(
      x.shape)))(X)
  assert g.shape == X.shape
  assert float(jnp.abs(g).sum()) > 0, f"{name}: no gradient reaches the pixels"


def test_ops_are_deterministic_per_key_and_vary_per_sample():
  y1 = augment.rotate(X, jax.random.PRNGKey(3))
  y2 = augment.rotate(X, jax.random.PRNGKey(3))
  np.testing.assert_array_equal(y1, y2)
  same = jnp.stack([X[0]] * 4)
  out = augment.rotate(same, jax.random.PRNGKey(3))
  assert not np.allclose(out[0], out[1]), "parameters must be drawn per sample"


def test_flip_exact():
  img = jnp.arange(2 * 3 * 4 * 1, dtype=jnp.float32).reshape(2, 3, 4, 1)
  out = augment.flip(img, jax.random.PRNGKey(0))
  do = jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, (2, 1, 1, 1))
  for i in range(2):
    expected = img[i, :, ::-1] if bool(do[i, 0, 0, 0]) else img[i]
    np.testing.assert_array_equal(out[i], expected)


def test_shift_exact_with_zero_fill():
  img = jnp.arange(1, 17, dtype=jnp.float32).reshape(1, 4, 4, 1)
  out = augment._shift(img, jnp.array([1]), jnp.array([-1]))
  expected = np.zeros((4, 4))
  expected[:3, 1:] = np.arange(1, 17).reshape(4, 4)[1:, :3]
  np.testing.assert_array_equal(out[0, :, :, 0], expected)


def test_crop_is_an_integer_translation_within_range():
  img = jnp.zeros((8, 16, 16, 1)).at[:, 8, 8, 0].set(1.0)
  out = augment.crop(img, jax.random.PRNGKey(5))
  s = round(0.125 * 16)
  for i in range(8):
    ys, xs = np.nonzero(np.asarray(out[i, :, :, 0]))
    assert len(ys) == 1 and out[i, ys[0], xs[0], 0] == 1.0
    assert abs(ys[0] - 8) <= s and abs(xs[0] - 8) <= s


def test_identity_affine_is_exact():
  theta = jnp.tile(jnp.array([[1.0, 0, 0], [0, 1.0, 0]]), (4, 1, 1))
  np.testing.assert_allclose(augment.affine(X, theta), X, atol=1e-6)


def test_color_matches_a_numpy_reference():
  """Brightness, saturation (about the per-pixel channel mean), contrast (about the image
  mean), with the op's own per-sample draws."""
  key = jax.random.PRNGKey(6)
  kb, ks, kc = (np.asarray(augment._uniform(k, 4)) for k in jax.random.split(key, 3))
  x = np.asarray(X, np.float64) + (kb - 0.5) * augment.BRIGHTNESS
  m = x.mean(axis=-1, keepdims=True)
  x = (x - m) * (ks * augment.SATURATION) + m
  m = x.mean(axis=(1, 2, 3), keepdims=True)
  ref = (x - m) * (kc + augment.CONTRAST) + m
  np.testing.assert_allclose(augment.color(X, key), ref, rtol=1e-5, atol=1e-6)


def test_cutout_zeroes_a_square():
  out = augment.cutout(jnp.ones((3, 8, 8, 1)), jax.random.PRNGKey(2))
  zeros = np.asarray(out[..., 0] == 0).sum(axis=(1, 2))
  assert np.all(zeros > 0) and np.all(zeros <= 16)


def test_modes():
  k = jax.random.PRNGKey(7)
  single = augment.dsa(X, k, mode="single")
  multiple = augment.dsa(X, k, mode="multiple")
  assert single.shape == multiple.shape == X.shape
  np.testing.assert_array_equal(augment.dsa(X, k, mode="none"), X)
  # 'single' applies exactly one family: the result equals one of the ops with the same key.
  _, k_op = jax.random.split(k)
  candidates = [augment.OPS[n](X, k_op) for n in augment.parse_strategy(augment.DEFAULT_STRATEGY)]
  assert any(np.allclose(single, c) for c in candidates)
  with pytest.raises(ValueError, match="unknown DSA op"):
    augment.dsa(X, k, strategy="color_blur")
  with pytest.raises(ValueError, match="unknown DSA mode"):
    augment.dsa(X, k, mode="both")


def test_separable_scale_equals_dense_affine():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 12, 10, 3))
  key = jax.random.PRNGKey(5)
  s = augment.scale_factors(key, 4)
  zeros = jnp.zeros(4)
  theta = jnp.stack([jnp.stack([s[:, 0], zeros, zeros], -1),
                     jnp.stack([zeros, s[:, 1], zeros], -1)], axis=1)
  np.testing.assert_allclose(augment.scale(x, key), augment.affine(x, theta), atol=1e-5)


def _bilinear_reference(x, theta):
  """grid_sample(affine_grid(theta), align_corners=True, zero padding), one pixel at a time."""
  b, h, w, c = x.shape
  out = np.zeros_like(x)
  for i in range(b):
    for r in range(h):
      for q in range(w):
        u, v = -1 + 2 * q / (w - 1), -1 + 2 * r / (h - 1)
        su, sv = theta[i] @ np.array([u, v, 1.0])
        px, py = (su + 1) * (w - 1) / 2, (sv + 1) * (h - 1) / 2
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
          if 0 <= yy < h and 0 <= xx < w:
            out[i, r, q] += (1 - abs(py - yy)) * (1 - abs(px - xx)) * x[i, yy, xx]
  return out


def _random_affine(seed, b):
  """Maps that move some source points outside the image, so zero padding is exercised."""
  rng = np.random.default_rng(seed)
  return (np.array([[1.0, 0, 0], [0, 1.0, 0]]) + 0.4 * rng.standard_normal((b, 2, 3)))


def test_affine_matches_a_per_pixel_bilinear_reference():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (3, 7, 6, 2)), np.float64)
  theta = _random_affine(0, 3)
  np.testing.assert_allclose(augment.affine(jnp.float32(x), jnp.float32(theta)),
                             _bilinear_reference(x, theta), atol=1e-5)


def test_affine_matches_torch_grid_sample():
  torch = pytest.importorskip("torch")
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(6), (4, 9, 8, 3)), np.float32)
  theta = _random_affine(1, 4).astype(np.float32)
  xt = torch.tensor(x.transpose(0, 3, 1, 2))
  grid = torch.nn.functional.affine_grid(torch.tensor(theta), list(xt.shape), align_corners=True)
  ref = torch.nn.functional.grid_sample(xt, grid, align_corners=True).numpy()
  np.testing.assert_allclose(augment.affine(x, theta), ref.transpose(0, 2, 3, 1), atol=1e-5)


def test_affine_gradient_is_the_transposed_sampling_matrix():
  # The map is linear in the pixels, so its vjp must be the transpose of the matrix whose
  # columns are the reference's responses to each one-pixel image.
  b, h, w, c = 2, 5, 4, 1
  theta = _random_affine(2, b)
  basis = np.eye(h * w).reshape(h * w, 1, h, w, 1)
  cols = [np.stack([_bilinear_reference(np.broadcast_to(e, (b, h, w, c)).copy(), theta)])
          for e in basis]
  matrix = np.concatenate(cols).reshape(h * w, b, h * w)  # [input pixel, batch, output pixel]
  ct = np.asarray(jax.random.normal(jax.random.PRNGKey(8), (b, h, w, c)))
  _, vjp = jax.vjp(lambda x: augment.affine(x, jnp.float32(theta)), jnp.zeros((b, h, w, c)))
  expected = np.einsum("ibo,bo->bi", matrix, ct.reshape(b, h * w)).reshape(b, h, w, c)
  np.testing.assert_allclose(vjp(jnp.float32(ct))[0], expected, atol=1e-5)
