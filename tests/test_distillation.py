"""The outer loop: checkpoints on interrupt, hooks, the start-epoch schedule, the initial set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datm_clr_jax import checkpointing, distillation, errors, models, step
from conftest import tiny_config
from test_step import CLASSES, SHAPE, _setup


def test_start_epoch_schedule():
  kw = dict(max_start_epoch=20, sequential=True, current_max_start_epoch=10, expansion_end=1000)
  assert distillation.start_epoch_upper(0, **kw) == 10
  assert distillation.start_epoch_upper(500, **kw) == 15
  assert distillation.start_epoch_upper(5000, **kw) == 20
  assert distillation.start_epoch_upper(7, **{**kw, "sequential": False}) == 20
  config = tiny_config()
  config.distill.update(sequential=True, max_start_epoch=20, current_max_start_epoch=10,
                        expansion_end=1000)
  assert [distillation.schedule(config.distill)(it) for it in (0, 500, 5000)] == [10, 15, 20]


def test_initial_synset_from_experts():
  net = models.make_network("convnet", CLASSES, SHAPE, width=4, depth=1)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, *SHAPE)).astype(np.float32)
  y = np.repeat(np.arange(CLASSES), 10)
  final = np.stack([net.init_flat(jax.random.PRNGKey(i), SHAPE) for i in range(3)])
  images, logits = distillation.initial_synset(net, x, y, final, ipc=2, num_classes=CLASSES,
                                               init="real", seed=0)
  assert images.shape == (8, *SHAPE) and logits.shape == (8, CLASSES)
  # Class-major: the first ipc images come from class 0.
  for i, img in enumerate(images):
    assert y[np.flatnonzero((x == img).all(axis=(1, 2, 3)))[0]] == i // 2
  with pytest.raises(errors.DistillError, match="ipc=11"):
    distillation.initial_synset(net, x, y, final, ipc=11, num_classes=CLASSES, init="real",
                                seed=0)


def test_interrupt_saves_the_last_finished_iteration(tmp_path):
  net, cfg, feat, images, labels, theta0, target = _setup(expert_epochs=1)
  opt = step.OuterOptim(lr_img=1.0, lr_lr=1e-4, lr_y=1.0)
  real = step.make_distill_step(net, cfg, opt, jnp.arange(CLASSES), feat)
  calls = []

  def step_fn(*args):  # Ctrl-C arrives during the 4th iteration
    if len(calls) == 3:
      raise KeyboardInterrupt
    calls.append(1)
    return real(*args)

  ckpt = checkpointing.StepCheckpoints(tmp_path, keep=2)
  state0 = step.init_state(images, labels, 0.01, opt)
  with pytest.raises(KeyboardInterrupt):
    distillation.run_distillation(step_fn, state0, jnp.stack([theta0, target])[None],
                                  iterations=10, seed=0, schedule=lambda it: 1, ckpt=ckpt,
                                  checkpoint_every=5, log_every=5)
  done, restored = ckpt.restore_latest(state0)
  assert done == 3 and int(restored.iteration) == 3
  assert not np.allclose(restored.syn_images, images)


def test_hooks_run_after_each_checkpoint_and_every_k_iterations(tmp_path):
  net, cfg, feat, images, labels, theta0, target = _setup(expert_epochs=1)
  opt = step.OuterOptim(lr_img=1.0, lr_lr=1e-4, lr_y=1.0)
  step_fn = step.make_distill_step(net, cfg, opt, jnp.arange(CLASSES), feat)
  ckpt = checkpointing.StepCheckpoints(tmp_path, keep=2)
  saved, every, logged = [], [], []
  # on_save finds its checkpoint already written: the curves it draws never run ahead of it.
  newest = lambda: max(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
  on_save = lambda done: saved.append((done, newest()))
  distillation.run_distillation(step_fn, step.init_state(images, labels, 0.01, opt),
                                jnp.stack([theta0, target])[None], iterations=5, seed=0,
                                schedule=lambda it: 1, ckpt=ckpt, checkpoint_every=2,
                                log_every=3, log=logged.append, every=3,
                                on_every=lambda done, state: every.append(done),
                                on_save=on_save)
  assert saved == [(2, 2), (4, 4), (5, 5)]
  assert every == [3, 5]
  assert [r["step"] for r in logged] == [3, 5]
