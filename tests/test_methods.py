"""Table 1's other methods: TESLA's gradient, FTD's image EMA, MTT's labels and init, the
presets of every (method, setting), and experts keyed by what produced them."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datm_clr_jax import (augment, checks, config_file, distillation, errors, experts, losses, methods,
                          models, step, tesla)

SHAPE = (8, 8, 3)
CLASSES = 4
ROOT = Path(__file__).resolve().parents[1]


def _setup(num_inner_steps, **overrides):
  net = models.make_network("convnet", CLASSES, SHAPE, width=4, depth=1)
  settings = dict(num_inner_steps=num_inner_steps, expert_epochs=1, min_start_epoch=0,
                  batch_syn=2, threshold=0.0, strategy="color_crop_flip",
                  clr_strategy="none", labels="learned")
  cfg = step.StepConfig(**{**settings, **overrides})
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  images = jax.random.normal(k[0], (CLASSES, *SHAPE), jnp.float64)
  labels = jax.random.normal(k[1], (CLASSES, CLASSES), jnp.float64)
  theta0 = net.init_flat(k[2], SHAPE).astype(jnp.float64)
  target = theta0 + 0.05 * jax.random.normal(k[3], theta0.shape, jnp.float64)
  traj = jnp.stack([theta0, target])[None]  # one expert, snapshots t = 0 and t + M = 1
  return net, cfg, images, labels, theta0, target, traj


def _tesla_by_hand(net, cfg, images, labels, lr, theta0, target, key):
  """TESLA's estimator as a Python loop of per-step VJPs, independently of tesla.py."""
  _, _, k_batch, k_aug, _ = step.step_keys(key)
  idx = step.minibatch_indices(k_batch, CLASSES, cfg.batch_syn, cfg.num_inner_steps)
  keys = jax.random.split(k_aug, cfg.num_inner_steps)

  def g(theta, imgs, logits, n):
    """The student's CE gradient at theta on step n's minibatch and DSA draw."""
    view = augment.dsa(imgs[idx[n]], keys[n], cfg.strategy, cfg.dsa_mode)
    probs = jax.nn.softmax(logits, axis=-1)[idx[n]]
    return jax.grad(lambda th: losses.soft_cross_entropy(net.apply_flat(th, view)[0],
                                                         probs))(theta)

  thetas, theta = [], theta0
  for n in range(cfg.num_inner_steps):
    thetas.append(theta)
    theta = theta - lr * g(theta, images, labels, n)
  big_g = (theta0 - theta) / lr
  d = float(jnp.sum((theta0 - target) ** 2))
  c = 2 * (lr * (target - theta0) + lr ** 2 * big_g) / d
  g_img, g_lab = jnp.zeros_like(images), jnp.zeros_like(labels)
  for n, th in enumerate(thetas):
    _, vjp = jax.vjp(lambda im, lab: g(th, im, lab, n), images, labels)
    gi, gl = vjp(c)
    g_img, g_lab = g_img + gi, g_lab + gl
  g_lr = 2 * jnp.vdot(theta - target, -big_g) / d
  return g_img, g_lab, g_lr


@pytest.mark.parametrize("num_inner_steps", [1, 3])
def test_tesla_gradient_matches_a_per_step_reference_and_the_unrolled_one_only_at_n1(
    num_inner_steps):
  with jax.enable_x64(True):
    net, cfg, images, labels, theta0, target, traj = _setup(num_inner_steps)
    lr = jnp.asarray(0.05, jnp.float64)
    key = jax.random.PRNGKey(3)
    learned = (images, labels, lr, {})
    (l_tm, _), grads = jax.jit(tesla.make_value_and_grad(net, cfg, jnp.arange(CLASSES)))(
        learned, traj, jnp.int32(1), key)
    ref = _tesla_by_hand(net, cfg, images, labels, lr, theta0, target, key)
    for got, want in zip(grads[:3], ref):
      assert float(jnp.linalg.norm(want)) > 0
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-7, atol=1e-12)
    # Against the exact gradient through the unrolled scan, from the same key.
    loss = step.make_segments_loss(net, cfg, jnp.arange(CLASSES), 4)
    (l_exact, _), exact = jax.value_and_grad(loss, has_aux=True)(learned, traj, jnp.int32(1),
                                                                  key)
    np.testing.assert_allclose(float(l_tm), float(l_exact), rtol=1e-10)
    dist = float(jnp.linalg.norm(grads[0] - exact[0]) / jnp.linalg.norm(exact[0]))
    if num_inner_steps == 1:
      assert dist < 1e-9
      np.testing.assert_allclose(float(grads[2]), float(exact[2]), rtol=1e-9)
    else:  # the terms through later students' weights are dropped
      assert dist > 1e-4


def test_tesla_refuses_what_it_does_not_estimate():
  with pytest.raises(errors.ConfigError, match="tesla"):
    tesla.check(step.StepConfig(num_inner_steps=2, expert_epochs=1, min_start_epoch=0,
                                batch_syn=2, threshold=0.0, clr_strategy="fusion", alpha=0.1))


def test_ema_follows_its_recursion_over_iterations_and_a_resume(tmp_path):
  from datm_clr_jax import checkpointing  # pylint: disable=import-outside-toplevel
  net = models.make_network("convnet", CLASSES, SHAPE, width=4, depth=1)
  cfg = step.StepConfig(num_inner_steps=2, expert_epochs=1, min_start_epoch=0, batch_syn=2,
                        threshold=0.0, clr_strategy="none", labels="hard", ema_decay=0.7,
                        strategy="color_crop_flip")
  opt = step.OuterOptim(lr_img=10.0, lr_lr=1e-5, lr_y=1.0)
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  images = jax.random.normal(k[0], (CLASSES, *SHAPE))
  theta0 = net.init_flat(k[1], SHAPE)
  traj = jnp.stack([theta0, theta0 + 0.05 * jax.random.normal(k[2], theta0.shape)])[None]
  state = step.init_state(images, jnp.eye(CLASSES), 0.01, opt, ema=True)
  fn = step.make_distill_step(net, cfg, opt, jnp.arange(CLASSES), 4)
  run = lambda s, its, ckpt=None: distillation.run_distillation(
      fn, s, traj, iterations=its, seed=0, schedule=lambda it: 1, ckpt=ckpt,
      checkpoint_every=2, log_every=1)
  shadow, s = np.asarray(images), state
  for _ in range(4):  # the recursion, one iteration at a time
    s = run(s, int(s.iteration) + 1)
    shadow = 0.7 * shadow + 0.3 * np.asarray(s.syn_images)
    np.testing.assert_allclose(np.asarray(s.ema_images), shadow, rtol=1e-5, atol=1e-6)
  assert not np.allclose(shadow, np.asarray(s.syn_images))
  with checkpointing.StepCheckpoints(tmp_path / "d") as ckpt:  # 2 iterations, saved
    run(state, 2, ckpt)
  with checkpointing.StepCheckpoints(tmp_path / "d") as ckpt:
    _, restored = ckpt.restore_latest(step.init_state(images * 0, jnp.eye(CLASSES), 0.01, opt,
                                                      ema=True))
  resumed = run(restored, 4)
  np.testing.assert_array_equal(np.asarray(resumed.ema_images), np.asarray(s.ema_images))


def test_hard_labels_are_one_hot_cross_entropy_and_teacher_labels_the_target_softmax():
  net = models.make_network("convnet", CLASSES, SHAPE, width=4, depth=1)
  cfg = step.StepConfig(num_inner_steps=1, expert_epochs=1, min_start_epoch=0, batch_syn=4,
                        threshold=0.0, labels="hard")
  x = jax.random.normal(jax.random.PRNGKey(0), (CLASSES, *SHAPE))
  theta = net.init_flat(jax.random.PRNGKey(1), SHAPE)
  logits = jax.random.normal(jax.random.PRNGKey(2), (CLASSES, CLASSES))
  classes = jnp.array([0, 1, 2, 3])
  hard = step.label_targets(cfg, net, logits, classes, x, theta)
  out = net.apply_flat(theta, x)[0]
  direct = -jnp.mean(jax.nn.log_softmax(out)[jnp.arange(CLASSES), classes])
  np.testing.assert_allclose(float(losses.soft_cross_entropy(out, hard)), float(direct),
                             rtol=1e-6)
  teacher = step.label_targets(cfg.__class__(**{**cfg.__dict__, "labels": "teacher"}), net,
                               logits, classes, x, theta)
  np.testing.assert_allclose(np.asarray(teacher), np.asarray(jax.nn.softmax(out)), rtol=1e-6)


def test_mtt_init_takes_random_real_images_with_one_hot_labels():
  net = models.make_network("convnet", CLASSES, SHAPE, width=4, depth=1)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, *SHAPE)).astype(np.float32)
  y = np.repeat(np.arange(CLASSES), 10)
  final = np.stack([np.asarray(net.init_flat(jax.random.PRNGKey(i), SHAPE)) for i in range(2)])
  images, labels = distillation.initial_synset(net, x, y, final, ipc=2, num_classes=CLASSES,
                                               init="real", seed=0, labels="hard")
  np.testing.assert_array_equal(labels, np.eye(CLASSES)[np.repeat(np.arange(CLASSES), 2)])
  for i, img in enumerate(images):  # real training images of the row's class
    match = np.flatnonzero((x == img).all(axis=(1, 2, 3)))
    assert len(match) == 1 and y[match[0]] == i // 2


SETTING_FILES = [f"configs/{s}.py" for s in methods.SETTINGS]


@pytest.mark.parametrize("path", SETTING_FILES + ["configs/cifar10_r1.py"])
def test_every_method_preset_loads_and_validates(path):
  for method in methods.METHODS:
    config = config_file.load(f"{path}:{method}", [])
    checks.validate_config(config)
    assert config.method == method
  mtt = config_file.load(f"{path}:mtt", [])
  assert (mtt.distill.labels, mtt.distill.init, mtt.distill.threshold,
          mtt.experts.optimizer) == ("hard", "real", 0.0, "sgd")
  ftd = config_file.load(f"{path}:ftd", [])
  assert ftd.distill.ema_decay > 0 and ftd.experts.optimizer == "gsam"
  assert config_file.load(f"{path}:tesla", []).distill.gradient == "tesla"
  datm = config_file.load(f"{path}:datm", [])
  assert datm.experts.optimizer == "gsam" and datm.clr.strategy == "none"


def test_setting_values_are_the_methods_tables():
  mtt = config_file.load("configs/cifar100_ipc1.py:mtt", [])
  assert (mtt.distill.num_inner_steps, mtt.distill.expert_epochs, mtt.distill.max_start_epoch,
          mtt.distill.lr_img, mtt.distill.iterations, mtt.experts.epochs) == (20, 3, 20, 1000,
                                                                             5000, 50)
  ftd = config_file.load("configs/cifar10_ipc50.py:ftd", [])
  assert (ftd.experts.gsam_alpha, ftd.distill.ema_decay, ftd.data.zca) == (1.0, 0.999, False)
  tesla_c10 = config_file.load("configs/cifar10_ipc1.py:tesla", [])
  assert (tesla_c10.distill.max_start_epoch, tesla_c10.distill.lr_img) == (5, 1000)
  for setting in methods.SETTINGS:  # the docstring names every published number
    doc = (ROOT / "configs" / f"{setting}.py").read_text()
    for method in methods.METHODS:
      assert methods.published(setting)[method] in doc


def test_experts_of_another_kind_are_refused_in_one_line_and_old_folders_still_load(tmp_path):
  config = config_file.load("configs/cifar10_r1.py:ftd", [])
  old = json.loads((ROOT / "launch/results/clr_study/experts/meta.json").read_text())
  assert "kind" not in old  # a folder from before kinds were recorded
  assert experts.kind_mismatch(old, experts.kind(config_file.load(
      "configs/cifar10_r1.py:mtt", []))) is None
  mismatch = experts.kind_mismatch(old, experts.kind(config))
  assert mismatch == "experts.optimizer='sgd' (this run: 'gsam')"
  folder = tmp_path / "experts"
  folder.mkdir()
  (folder / "meta.json").write_text(json.dumps(
      {**old, "kind": experts.kind(config_file.load("configs/cifar10_r1.py:mtt", []))}))
  config.experts.dir = str(folder)
  config.experts.optimizer = "sgd"
  config.model.width = 16
  copy = tmp_path / "elsewhere" / "cifar10-jpeg.zip"  # the refusal comes before any reading
  copy.parent.mkdir()
  copy.touch()
  config.data.source = f"image_folder:{copy}"
  with pytest.raises(errors.ConfigError, match=r"^the experts in .* model.width=32 \(this "
                     r"run: 16\)[^\n]*$"):
    checks.preflight(config, str(tmp_path / "run"), "experts")
  # A copy of the same data elsewhere names the same experts.
  assert experts.kind(config)["data.source"] == "image_folder:cifar10-jpeg.zip"
  assert not math.isnan(old["lr"])
