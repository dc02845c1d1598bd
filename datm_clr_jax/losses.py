"""Losses: soft-label cross-entropy, normalised trajectory matching, SupCon and NT-Xent."""

from __future__ import annotations

import jax
import jax.numpy as jnp

CONTRASTIVE_KINDS = ("supcon", "ntxent")


def soft_cross_entropy(logits: jax.Array, targets: jax.Array,
                       weights: jax.Array | None = None) -> jax.Array:
  """Mean of -sum_c targets * log_softmax(logits).

  Args:
    logits: (B, C) network outputs.
    targets: (B, C) target probabilities (softmax of label logits, or one-hot).
    weights: optional (B,) per-sample weights (0 masks padding); the mean is weighted.
  Returns:
    scalar loss.
  """
  per_sample = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  if weights is None:
    return jnp.mean(per_sample)
  return jnp.sum(per_sample * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def trajectory_loss(student: jax.Array, start: jax.Array, target: jax.Array) -> jax.Array:
  """||student - target||^2 / ||start - target||^2 on flat parameters of shape (P,)."""
  num = jnp.sum(jnp.square(student - target))
  den = jnp.sum(jnp.square(jax.lax.stop_gradient(start - target)))
  return num / den


def _similarities(z1: jax.Array, z2: jax.Array, temperature: float):
  z = jnp.concatenate([z1, z2], axis=0)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  return z @ z.T / temperature


def supcon_loss(z1: jax.Array, z2: jax.Array, labels: jax.Array,
                temperature: float = 0.1) -> jax.Array:
  """Supervised contrastive loss (Khosla et al. 2020, L_out) over 2B views.

  Each of the 2B views is an anchor; its positives are every other view with the same label
  (always including its own second view); the denominator runs over all other views.

  Args:
    z1, z2: (B, D) projections of the two views (normalised here).
    labels: (B,) integer class labels.
    temperature: tau.
  Returns:
    scalar, the mean over anchors.
  """
  b = z1.shape[0]
  sim = _similarities(z1, z2, temperature)
  y = jnp.concatenate([labels, labels])
  not_self = ~jnp.eye(2 * b, dtype=bool)
  pos = (y[:, None] == y[None, :]) & not_self
  log_den = jax.nn.logsumexp(jnp.where(not_self, sim, -jnp.inf), axis=1)
  log_prob = sim - log_den[:, None]
  mean_pos = jnp.sum(jnp.where(pos, log_prob, 0.0), axis=1) / jnp.sum(pos, axis=1)
  return -jnp.mean(mean_pos)


def ntxent_loss(z1: jax.Array, z2: jax.Array, labels: jax.Array,
                temperature: float = 0.1) -> jax.Array:
  """NT-Xent (SimCLR, the paper's eq. 2) with label-aware negatives.

  The positive of each view is its other view only; the negatives are the views of *other*
  classes (same-class views are dropped from the denominator, as the paper builds negatives
  from other classes). With one image per class in the batch this equals `supcon_loss`.

  Args, returns: as `supcon_loss`.
  """
  b = z1.shape[0]
  sim = _similarities(z1, z2, temperature)
  y = jnp.concatenate([labels, labels])
  partner = jnp.concatenate([jnp.arange(b, 2 * b), jnp.arange(b)])
  is_partner = jax.nn.one_hot(partner, 2 * b, dtype=bool)
  keep = is_partner | (y[:, None] != y[None, :])
  log_den = jax.nn.logsumexp(jnp.where(keep, sim, -jnp.inf), axis=1)
  pos_sim = jnp.take_along_axis(sim, partner[:, None], axis=1)[:, 0]
  return -jnp.mean(pos_sim - log_den)


def contrastive_loss(kind: str, z1, z2, labels, temperature: float) -> jax.Array:
  """Dispatches on `kind` in CONTRASTIVE_KINDS."""
  if kind == "supcon":
    return supcon_loss(z1, z2, labels, temperature)
  if kind == "ntxent":
    return ntxent_loss(z1, z2, labels, temperature)
  raise ValueError(f"unknown contrastive loss {kind!r}; expected one of {CONTRASTIVE_KINDS}")
