"""Run by tests/test_sharding.py in a fresh process with 4 forced host devices.

Trains experts, evaluates seeds and takes distillation steps once on one device and once
sharded over 4, and exits non-zero if any result differs beyond float reassociation.
"""

import os
import tempfile

# Appended, not replaced: the test suite's own flags (tests/conftest.py) come through.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=4"]).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from datm_clr_jax import evaluate, experts, models, sharding, step  # noqa: E402

assert len(jax.devices()) == 4, jax.devices()
mesh = sharding.device_mesh()
shape, classes = (8, 8, 1), 4
net = models.make_network("convnet", classes, shape, width=4, depth=1)
rng = np.random.default_rng(0)
x = rng.normal(size=(40, *shape)).astype(np.float32)
y = np.repeat(np.arange(classes), 10).astype(np.int32)

# Experts: 4 independent networks, one per device.
trajs = []
with tempfile.TemporaryDirectory() as tmp:
  for name, m in (("one", None), ("four", mesh)):
    experts.train_experts(net, x, y, x, y, root=f"{tmp}/{name}", num_experts=4, epochs=1, lr=0.05,
                          batch_size=8, parallel=4, strategy="flip", dsa_mode="single", seed=0,
                          image_shape=shape, mesh=m)
    trajs.append(experts.load_trajectories(f"{tmp}/{name}", num_params=net.num_params))
np.testing.assert_allclose(trajs[1], trajs[0], rtol=1e-5, atol=1e-6)

# Evaluation: 4 seeds, one per device.
cfg = evaluate.EvalConfig(epochs=2, strategy="flip")
probs = np.eye(classes, dtype=np.float32)[y[::10]]
accs = [evaluate.evaluate_synset(net, x[::10], probs, 0.01, x, y, seeds=[0, 1, 2, 3], cfg=cfg,
                                 mesh=m) for m in (None, mesh)]
np.testing.assert_allclose(accs[1], accs[0], atol=1e-9)

# Distillation: 8 synthetic images, minibatches of 4 split over the 4 devices. remat_convs:
# the contrastive views are drawn for both inner steps before the scan, the CE view in each.
step_cfg = step.StepConfig(num_inner_steps=2, expert_epochs=1, min_start_epoch=0, batch_syn=4,
                              threshold=10.0, proj_dim=6, strategy="color_crop_flip",
                              remat_convs=True)
opt = step.OuterOptim(lr_img=10.0, lr_lr=1e-4, lr_y=1.0)
feat = models.feature_dim(net, shape)
syn_classes = np.repeat(np.arange(classes), 2)
state0 = step.init_state(x[:8], rng.normal(size=(8, classes)).astype(np.float32), 0.01, opt)
traj = jnp.asarray(trajs[0])
finals = []
for m in (None, mesh):
  step_fn = step.make_distill_step(net, step_cfg, opt, syn_classes, feat, m)
  state = sharding.shard_leading(state0, m)
  t = sharding.replicate(traj, m)
  for it in range(2):
    state, metrics = step_fn(state, t, jnp.asarray(2, jnp.int32), jax.random.PRNGKey(it))
    assert int(metrics["status"]) == step.ACCEPTED, metrics
  if m is not None:  # the synthetic set really lives split over the 4 devices
    assert not state.syn_images.sharding.is_fully_replicated, state.syn_images.sharding
  finals.append(jax.device_get(state))
for name in ("syn_images", "syn_labels", "syn_lr"):
  np.testing.assert_allclose(getattr(finals[1], name), getattr(finals[0], name), rtol=1e-4,
                             atol=1e-5)
assert not np.allclose(finals[0].syn_images, x[:8])  # the steps did change the images
print("sharded == single-device: experts, evaluation, distillation")
