"""Expert training options: GSAM's update direction, truncated storage, buffer import."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datm_clr_jax import experts, models


def quadratic_loss(a):
  """A non-isotropic loss whose gradient changes with position, so GSAM differs from SGD."""
  return lambda w: jnp.sum(a * w**2) + jnp.sum(jnp.sin(w))


W = jnp.array([0.5, -1.0, 2.0, 0.3])
A = jnp.array([1.0, 3.0, 0.5, 2.0])


@pytest.mark.parametrize("adaptive", [True, False])
def test_gsam_limits_and_decomposition(adaptive):
  loss = quadratic_loss(A)
  g = jax.grad(loss)(W)
  # rho = 0: no perturbation, GSAM is plain SGD's gradient.
  np.testing.assert_allclose(
      experts.gsam_gradient(loss, W, g, experts.GSAM(rho=0.0, adaptive=adaptive)), g, rtol=1e-6)
  # alpha = 0: SAM, the gradient at the perturbed point, computed here by hand.
  rho = 0.05
  e = (rho * W**2 * g / jnp.linalg.norm(W * g)) if adaptive else rho * g / jnp.linalg.norm(g)
  g_p = jax.grad(loss)(W + e)
  np.testing.assert_allclose(experts.gsam_gradient(
      loss, W, g, experts.GSAM(rho=rho, alpha=0.0, adaptive=adaptive)), g_p, rtol=1e-5)
  # alpha > 0 subtracts alpha times the part of g orthogonal to g_p.
  out = experts.gsam_gradient(loss, W, g, experts.GSAM(rho=rho, alpha=0.3, adaptive=adaptive))
  vertical = (g_p - out) / 0.3
  np.testing.assert_allclose(jnp.vdot(vertical, g_p), 0.0, atol=1e-5)
  np.testing.assert_allclose(vertical, g - jnp.vdot(g, g_p) / jnp.vdot(g_p, g_p) * g_p,
                             atol=1e-5)


def test_gsam_experts_and_truncated_storage(tmp_path):
  net = models.make_network("convnet", 3, (8, 8, 1), width=4, depth=1)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 8, 8, 1)).astype(np.float32)
  y = np.repeat(np.arange(3), 10).astype(np.int32)
  kw = dict(epochs=3, lr=0.05, batch_size=10, parallel=2, strategy="flip", dsa_mode="single",
            seed=0, image_shape=(8, 8, 1))
  experts.train_experts(net, x, y, x, y, root=tmp_path / "sgd", num_experts=1, **kw)
  experts.train_experts(net, x, y, x, y, root=tmp_path / "gsam", num_experts=1,
                        gsam=experts.GSAM(), save_epochs=1, **kw)
  sgd, sgd_final = experts.load_trajectories(tmp_path / "sgd", num_params=net.num_params,
                                             return_final=True)
  gsam, gsam_final = experts.load_trajectories(tmp_path / "gsam", num_params=net.num_params,
                                               return_final=True)
  assert sgd.shape == (1, 4, net.num_params) and gsam.shape == (1, 2, net.num_params)
  np.testing.assert_array_equal(sgd_final, sgd[:, -1])
  # Same init and data order; GSAM's steps differ from SGD's.
  np.testing.assert_array_equal(gsam[0, 0], sgd[0, 0])
  assert not np.allclose(gsam[0, 1], sgd[0, 1])
  assert not np.allclose(gsam_final, gsam[:, -1])  # the final epoch is kept apart
  # GSAM experts are other experts: the folder refuses to mix them with SGD ones.
  with pytest.raises(experts.checkpointing.CheckpointError, match="trained with"):
    experts.train_experts(net, x, y, x, y, root=tmp_path / "sgd", num_experts=2,
                          gsam=experts.GSAM(), **kw)


@pytest.mark.parametrize("gsam", [None, experts.GSAM()])
def test_expert_loops_agree(gsam):
  """Experts trained at once (vmap, im2col convs) or in turn (lax.map, hybrid convs)."""
  net = models.make_network("convnet", 3, (8, 8, 2), width=16, depth=2, conv_impl="hybrid")
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(24, 8, 8, 2)).astype(np.float32))
  y = jnp.asarray(np.repeat(np.arange(3), 8).astype(np.int32))
  params = jnp.stack([net.init_flat(jax.random.PRNGKey(k), (8, 8, 2)) for k in range(3)])
  keys = jax.random.split(jax.random.PRNGKey(5), 3)
  out = {loop: experts.make_train_epoch(net, lr=0.05, batch_size=8, num_train=24,
                                        strategy="flip", dsa_mode="single", gsam=gsam,
                                        loop=loop)(params, keys, x, y)
         for loop in ("vmap", "map")}
  assert not np.allclose(out["map"][0], params, atol=1e-3)  # the epoch trained something
  np.testing.assert_allclose(out["map"][0], out["vmap"][0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["map"][1], out["vmap"][1], rtol=1e-5)
  with pytest.raises(ValueError, match="resolve 'auto' first"):
    experts.make_train_epoch(net, lr=0.05, batch_size=8, num_train=24, strategy="flip",
                             dsa_mode="single", loop="auto")
