"""TESLA's first-order, memory-constant gradient of the trajectory-matching loss.

The student runs its N steps once without differentiation, keeping each step's parameters
theta_i (its minibatch and DSA draw are fixed by the iteration's key, so they can be drawn
again). With G = sum_i g_i, D = ||theta_0 - theta*||^2 and theta_N = theta_0 - syn_lr G:

  L_tm = ||theta_N - theta*||^2 / D
  dL/dx   ~ sum_i d<c, g_i(theta_i, x)>/dx,   c = 2 (syn_lr (theta* - theta_0) + syn_lr^2 G) / D
  dL/dlr  = 2 <theta_N - theta*, -G> / D      (G held)

theta_i and c are constants: the terms that pass through the later steps' parameters are
dropped, so this equals the unrolled gradient (step.make_segments_loss) only for N = 1;
tests/test_tesla.py measures the distance. Each step's term is one vector-Hessian product,
taken in turn inside a scan, so memory does not grow with N beyond the stored theta_i.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from datm_clr_jax import losses
from datm_clr_jax.errors import ConfigError
from datm_clr_jax.models import Network


def check(cfg) -> None:
  """TESLA's estimator covers the plain trajectory-matching step only."""
  if cfg.contrast_on or cfg.student_momentum or cfg.num_segments != 1:
    raise ConfigError("distill.gradient='tesla' needs clr.strategy='none' (or alpha 0), "
                      "distill.student_momentum=0 and distill.num_segments=1")


def make_value_and_grad(network: Network, cfg, syn_classes):
  """value_and_grad(learned, trajectories (K,T,P), upper (), key) with TESLA's gradient.

  Same signature and outputs as jax.value_and_grad of step.make_segments_loss, has_aux:
  ((L_tm, (L_tm, 0, experts (1,), starts (1,))), (g_images, g_labels, g_lr, g_head)).
  """
  from datm_clr_jax import step  # pylint: disable=import-outside-toplevel
  check(cfg)
  plan = step.ViewPlan.from_step_config(cfg)

  def inner_grad(theta, images, probs, idx, key):
    """g_i: the student's CE gradient (P,) on step i's augmented minibatch."""
    x = step.draw_views(plan, cfg.strategy, images[idx], key, (0,))[0]
    ce = lambda th: losses.soft_cross_entropy(network.apply_flat(th, x)[0], probs[idx])
    return jax.grad(ce)(theta)

  def value_and_grad(learned, trajectories, upper, key):
    images, label_logits, lr, head = learned
    expert, start, theta0, target = step.sample_segment(key, trajectories, upper, cfg)
    _, _, k_batch, k_aug, _ = step.step_keys(key)
    idx = step.minibatch_indices(k_batch, images.shape[0], cfg.batch_syn, cfg.num_inner_steps)
    aug_keys = jax.random.split(k_aug, cfg.num_inner_steps)
    targets = lambda imgs, logits: step.label_targets(cfg, network, logits, syn_classes, imgs,
                                                      target)
    probs = targets(images, label_logits)

    def forward(theta, xs):
      g = inner_grad(theta, images, probs, *xs)
      return theta - lr * g, (theta, g)

    theta_n, (thetas, gs) = jax.lax.scan(forward, theta0, (idx, aug_keys))
    big_g = jnp.sum(gs, axis=0)
    denom = jnp.sum(jnp.square(theta0 - target))
    l_tm = losses.trajectory_loss(theta_n, theta0, target)
    c = jax.lax.stop_gradient(2 * (lr * (target - theta0) + lr ** 2 * big_g) / denom)

    def backward(acc, xs):
      theta_i, i, k = xs
      term = lambda imgs, logits: jnp.vdot(c, inner_grad(theta_i, imgs, targets(imgs, logits),
                                                         i, k))
      g_img, g_lab = jax.grad(term, argnums=(0, 1))(images, label_logits)
      return (acc[0] + g_img, acc[1] + g_lab), None

    zeros = (jnp.zeros_like(images), jnp.zeros_like(label_logits))
    (g_images, g_labels), _ = jax.lax.scan(backward, zeros, (thetas, idx, aug_keys))
    g_lr = 2 * jnp.vdot(theta_n - target, -big_g) / denom
    grads = (g_images, g_labels, g_lr, jax.tree_util.tree_map(jnp.zeros_like, head))
    aux = (l_tm, jnp.zeros((), l_tm.dtype), expert[None], start[None])
    return (l_tm, aux), grads

  return value_and_grad
