"""Losses against direct loop-based reference implementations written here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datm_clr_jax import losses


def _cos(a, b):
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def supcon_reference(z1, z2, labels, tau):
  z = np.concatenate([z1, z2]).astype(np.float64)
  y = np.concatenate([labels, labels])
  n = len(z)
  total = 0.0
  for i in range(n):
    den = sum(math.exp(_cos(z[i], z[a]) / tau) for a in range(n) if a != i)
    pos = [p for p in range(n) if p != i and y[p] == y[i]]
    total += -sum(math.log(math.exp(_cos(z[i], z[p]) / tau) / den) for p in pos) / len(pos)
  return total / n


def ntxent_reference(z1, z2, labels, tau):
  z = np.concatenate([z1, z2]).astype(np.float64)
  y = np.concatenate([labels, labels])
  b, n = len(z1), len(z1) * 2
  total = 0.0
  for i in range(n):
    j = (i + b) % n
    num = math.exp(_cos(z[i], z[j]) / tau)
    neg = sum(math.exp(_cos(z[i], z[a]) / tau) for a in range(n) if y[a] != y[i])
    total += -math.log(num / (num + neg))
  return total / n


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4], [0, 0, 1, 1, 2], [1, 1, 1, 0, 0]])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_supcon_and_ntxent_match_reference(labels, tau):
  rng = np.random.default_rng(len(labels) + int(tau * 10))
  z1, z2 = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
  y = np.asarray(labels)
  got = losses.supcon_loss(jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(y), tau)
  np.testing.assert_allclose(got, supcon_reference(z1, z2, y, tau), rtol=1e-4)
  got = losses.ntxent_loss(jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(y), tau)
  np.testing.assert_allclose(got, ntxent_reference(z1, z2, y, tau), rtol=1e-4)


def test_supcon_equals_ntxent_with_one_image_per_class():
  rng = np.random.default_rng(3)
  z1, z2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  y = jnp.arange(6)
  a = losses.supcon_loss(z1, z2, y, 0.1)
  b = losses.ntxent_loss(z1, z2, y, 0.1)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  # ...and they differ once a class repeats.
  y2 = jnp.array([0, 0, 1, 2, 3, 4])
  assert abs(float(losses.supcon_loss(z1, z2, y2, 0.1) - losses.ntxent_loss(z1, z2, y2, 0.1))) > 1e-3


def test_soft_cross_entropy_reference():
  rng = np.random.default_rng(0)
  logits, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  p = np.exp(y) / np.exp(y).sum(1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  expected = -(p * logp).sum(1).mean()
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, p), expected, rtol=1e-5)
  w = np.array([1, 1, 0, 1.0])
  expected_w = -((p * logp).sum(1) * w).sum() / 3
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, p, w), expected_w, rtol=1e-5)


def test_trajectory_loss():
  a, b, c = jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0]), jnp.array([1.0, 1.0])
  np.testing.assert_allclose(losses.trajectory_loss(a, b, c), 1.0 / 2.0)
  # The denominator is a constant: no gradient flows into the start point.
  g = jax.grad(lambda s: losses.trajectory_loss(a, s, c))(b)
  np.testing.assert_array_equal(g, 0)


def test_unknown_contrastive_kind():
  with pytest.raises(ValueError, match="unknown contrastive loss"):
    losses.contrastive_loss("triplet", jnp.ones((2, 2)), jnp.ones((2, 2)), jnp.arange(2), 0.1)
