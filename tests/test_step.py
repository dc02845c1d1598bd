"""The outer step: hypergradients, scan vs Python loop, DATM equivalence, skips, remat."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datm_clr_jax import augment, distillation, errors, losses, models, step

SHAPE = (8, 8, 3)
CLASSES = 4


def _setup(dtype=jnp.float32, depth=1, **overrides):
  net = models.make_network("convnet", CLASSES, SHAPE, width=4, depth=depth)
  # Cheap DSA ops keep XLA compile times low; one scan test runs the full strategy.
  settings = dict(num_inner_steps=2, expert_epochs=1, min_start_epoch=0, batch_syn=4,
                  threshold=10.0, proj_dim=6, strategy="color_crop_flip")
  cfg = step.StepConfig(**{**settings, **overrides})
  feat = models.feature_dim(net, SHAPE)
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  images = jax.random.normal(k[0], (CLASSES, *SHAPE), dtype)
  labels = jax.random.normal(k[1], (CLASSES, CLASSES), dtype)
  theta0 = net.init_flat(k[2], SHAPE).astype(dtype)
  target = theta0 + 0.05 * jax.random.normal(k[3], theta0.shape, dtype)
  return net, cfg, feat, images, labels, theta0, target


@pytest.mark.parametrize("overrides", [
    dict(clr_strategy="fusion", alpha=0.5),
    dict(clr_strategy="update", lam=0.5, contrastive="ntxent"),
    dict(clr_strategy="none", student_momentum=0.5),
    dict(clr_strategy="fusion", alpha=0.5, views="shared", student_momentum=0.5),
])
# through_student=False is left out on purpose: its gradient is not the loss's derivative
# (test_contrast_at_fixed_student_matches_a_direct_reference checks it instead).
def test_hypergradient_matches_finite_differences(overrides):
  with jax.enable_x64(True):
    net, cfg, feat, images, labels, theta0, target = _setup(jnp.float64, **overrides)
    loss_fn = step.make_outer_loss(net, cfg, jnp.arange(CLASSES), feat)
    key, head_key = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    lr = jnp.asarray(0.05, jnp.float64)

    def f(im, lab, r):
      return loss_fn((im, lab, r, {}), theta0, target, key, head_key)[0]

    # One compiled function serves the gradient and the finite differences (compile-bound).
    value_and_grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    f = lambda *args: value_and_grad(*args)[0]
    grads = value_and_grad(images, labels, lr)[1]
    rng = np.random.default_rng(0)
    eps = 1e-5
    for i, arg in enumerate((images, labels, lr)):
      v = jnp.asarray(rng.normal(size=np.shape(arg)))
      args_p = [images, labels, lr]
      args_m = [images, labels, lr]
      args_p[i] = arg + eps * v
      args_m[i] = arg - eps * v
      fd = (f(*args_p) - f(*args_m)) / (2 * eps)
      analytic = jnp.sum(grads[i] * v)
      assert abs(float(analytic)) > 1e-8, f"argument {i}: zero hypergradient"
      np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-4, atol=1e-9)


def _python_loop_thetas(net, cfg, images, labels, lr, theta0, key):
  """DATM's inner loop written as a plain Python loop, independently of the scan code.

  Returns theta_0..theta_N and, per step, the minibatch indices and augmentation key. The
  student's momentum is the paper's (v <- mu v + g, theta <- theta - lr v, v_0 = 0).
  """
  _, _, k_batch, k_aug, _ = step.step_keys(key)
  idx = step.minibatch_indices(k_batch, images.shape[0], cfg.batch_syn, cfg.num_inner_steps)
  keys = jax.random.split(k_aug, cfg.num_inner_steps)
  probs = jax.nn.softmax(labels, axis=-1)
  mode = cfg.view_mode if cfg.views == "shared" else cfg.dsa_mode
  thetas, v = [theta0], 0.0
  for n in range(cfg.num_inner_steps):
    x = augment.dsa(images[idx[n]], keys[n], cfg.strategy, mode)
    y = probs[idx[n]]
    g = jax.grad(lambda th: losses.soft_cross_entropy(net.apply_flat(th, x)[0], y))(thetas[-1])
    v = cfg.student_momentum * v + g
    thetas.append(thetas[-1] - lr * v)
  return thetas, idx, keys


def _python_loop_l_tm(net, cfg, images, labels, lr, theta0, target, key):
  theta_n = _python_loop_thetas(net, cfg, images, labels, lr, theta0, key)[0][-1]
  return losses.trajectory_loss(theta_n, theta0, target)


@pytest.mark.parametrize("remat,unroll,strategy,extra", [
    (True, 1, augment.DEFAULT_STRATEGY, {}), (False, 1, "color_crop_flip", {}),
    (True, 2, "color_crop_flip", {}),
    (True, 1, "color_crop_flip", dict(remat_convs=True, depth=2)),
    (True, 1, "color_crop_flip", dict(student_momentum=0.5)),
    (False, 1, "color_crop_flip", dict(student_momentum=0.9))])
def test_scan_matches_python_loop(remat, unroll, strategy, extra):
  net, cfg, feat, images, labels, theta0, target = _setup(
      clr_strategy="none", remat=remat, unroll=unroll, num_inner_steps=3, batch_syn=2,
      strategy=strategy, **extra)
  loss_fn = step.make_outer_loss(net, cfg, jnp.arange(CLASSES), feat)
  key = jax.random.PRNGKey(3)
  lr = jnp.asarray(0.05)

  def scanned(im, r):
    return loss_fn((im, labels, r, {}), theta0, target, key, key)[1][0]

  def looped(im, r):
    return _python_loop_l_tm(net, cfg, im, labels, r, theta0, target, key)

  v1, g1 = jax.jit(jax.value_and_grad(scanned, argnums=(0, 1)))(images, lr)
  v2, g2 = jax.jit(jax.value_and_grad(looped, argnums=(0, 1)))(images, lr)
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  np.testing.assert_allclose(g1[0], g2[0], rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(g1[1], g2[1], rtol=1e-4)


@pytest.mark.parametrize("remat_convs,momentum,views,strategy", [
    (False, 0.0, 0, "none"), (True, 0.0, 1, "none"), (False, 0.5, 0, "none"),
    (True, 0.0, 2, "fusion"), (False, 0.0, 2, "fusion"), (True, 0.0, 2, "update")])
def test_remat_keeps_what_its_policy_names(remat_convs, momentum, views, strategy):
  """The forward sweep stacks, per inner step: theta, the inner gradient (and the student's
  velocity, with momentum) and the step's output (its L_contrast, or under Fusion with
  remat_convs the contrastive features, which the head and loss take after the scan); with
  remat_convs also each convolution's output and (layer 2) input gradient, each
  'single'-mode DSA view and, when the head runs in the step (Update), its hidden
  pre-activation; nothing else, so plain remat's memory stays flat in N apart from P-sized
  rows. With remat_convs the 'multiple'-mode views (DATM-CLR's) are drawn for all N steps
  before the scan and enter it as inputs. views: DSA views per inner step (0: no
  remat_convs, 2: DATM-CLR with shared views, both 'multiple')."""
  n, b = 3, 2
  clr = dict(clr_strategy=strategy, alpha=0.5, lam=0.5, views="shared" if views == 2 else "extra")
  net, cfg, feat, images, labels, theta0, target = _setup(
      remat=True, remat_convs=remat_convs, num_inner_steps=n, batch_syn=b, depth=2,
      student_momentum=momentum, **clr)
  loss_fn = step.make_outer_loss(net, cfg, jnp.arange(CLASSES), feat)
  key = jax.random.PRNGKey(3)
  f = lambda im, r: loss_fn((im, labels, r, {}), theta0, target, key, key)[0]
  jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(images, jnp.asarray(0.05))
  forward = next(e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan")
  stacked = sorted(v.aval.shape for v in forward.outvars if v.aval.shape[:1] == (n,))
  p = theta0.size
  layer1, layer2 = (n, b, 8, 8, 4), (n, b, 4, 4, 4)  # conv outputs; layer 2's input is 4x4x4
  view = (n, b, *SHAPE)
  feats = (n, 2 * b, feat)  # both contrastive views' features (also the head's hidden width)
  expected = [feats if strategy == "fusion" and remat_convs else (n,), (n, p), (n, p)]
  if remat_convs:
    # The CE view's conv outputs and input gradient; the second view's outputs, and under
    # Update (its contrastive gradient taken inside the step) its input gradient too.
    expected += [layer2, layer2, layer1] + [layer2, layer1] * (views - 1)
    expected += [view] if views == 1 else []
    expected += [layer2, feats] if strategy == "update" else []
  expected += [(n, p)] if momentum else []
  assert stacked == sorted(expected), (stacked, sorted(expected))
  inputs = [v.aval.shape for v in forward.invars].count(view)
  assert inputs == (views if remat_convs and views == 2 else 0)


@pytest.mark.parametrize("views", ["shared", "extra"])
def test_what_remat_keeps_does_not_change_the_gradient(views):
  """DATM-CLR's loss and gradients with remat keeping the conv outputs and DSA views, with
  remat keeping only the inner gradient, and without remat agree: the first and last draw
  the 'multiple'-mode views before the scan, the second inside each step. With extra views
  the first two (views drawn before the scan against inside it) suffice."""
  grads = []
  modes = ((True, True), (True, False), (False, False))
  for remat, remat_convs in modes if views == "shared" else modes[:2]:
    net, cfg, feat, images, labels, theta0, target = _setup(
        clr_strategy="fusion", alpha=0.5, views=views, remat=remat,
        remat_convs=remat_convs, num_inner_steps=2, batch_syn=2)
    loss_fn = step.make_outer_loss(net, cfg, jnp.arange(CLASSES), feat)
    key = jax.random.PRNGKey(5)
    f = lambda im, r: loss_fn((im, labels, r, {}), theta0, target, key, key)[0]
    grads.append(jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(images, jnp.asarray(0.05)))
  for value, (g_im, g_lr) in grads[1:]:
    np.testing.assert_allclose(value, grads[0][0], rtol=1e-6)
    np.testing.assert_allclose(g_im, grads[0][1][0], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g_lr, grads[0][1][1], rtol=1e-4)


def test_fusion_leaves_the_datm_trajectory_untouched():
  """Fusion only adds a term to the outer loss: the student path, hence L_tm, is DATM's."""
  net, cfg, feat, images, labels, theta0, target = _setup(clr_strategy="fusion", alpha=0.3)
  datm_cfg = dataclasses.replace(cfg, clr_strategy="none")
  key = jax.random.PRNGKey(4)
  learned = (images, labels, jnp.asarray(0.05), {})
  fusion = step.make_outer_loss(net, cfg, jnp.arange(CLASSES), feat)
  datm = step.make_outer_loss(net, datm_cfg, jnp.arange(CLASSES), feat)
  total_f, (tm_f, con_f) = jax.jit(fusion)(learned, theta0, target, key, key)
  total_d, (tm_d, con_d) = jax.jit(datm)(learned, theta0, target, key, key)
  np.testing.assert_array_equal(tm_f, tm_d)
  assert float(con_d) == 0 and float(con_f) > 0
  np.testing.assert_allclose(total_f, tm_f + 0.3 * con_f, rtol=1e-6)


@pytest.mark.parametrize("loop", ["map", "vmap"])
def test_segments_average_their_single_matches(loop):
  """k segments: the loss and its gradient are the mean of k single-segment outer losses."""
  net, cfg, feat, images, labels, theta0, target = _setup(
      clr_strategy="none", num_segments=3, segment_loop=loop)
  rng = np.random.default_rng(0)
  # Two experts, three snapshots each, so segments differ in expert and start epoch.
  traj = jnp.stack([theta0 + 0.05 * k * jnp.asarray(rng.normal(size=(3, theta0.size)),
                                                     theta0.dtype) for k in (1, 2)])
  learned = (images, labels, jnp.asarray(0.05), {})
  key, upper = jax.random.PRNGKey(3), jnp.int32(2)
  segments = step.make_segments_loss(net, cfg, jnp.arange(CLASSES), feat)
  (total, (l_tm, _, experts, starts)), grads = jax.jit(jax.value_and_grad(
      segments, has_aux=True))(learned, traj, upper, key)

  single = jax.jit(jax.value_and_grad(
      step.make_outer_loss(net, cfg, jnp.arange(CLASSES), feat), has_aux=True))
  head_key = step.step_keys(key)[4]
  ref_totals, ref_tms, ref_grads, drawn = [], [], [], []
  for k in step.segment_keys(key, 3):
    expert, start, th0, tg = step.sample_segment(k, traj, upper, cfg)
    drawn.append((int(expert), int(start)))
    (t, (tm, _)), g = single(learned, th0, tg, k, head_key)
    ref_totals.append(t), ref_tms.append(tm), ref_grads.append(g)
  assert len(set(drawn)) > 1, "the segments should not all match the same snapshot"
  assert drawn == list(zip(np.asarray(experts).tolist(), np.asarray(starts).tolist()))
  np.testing.assert_allclose(total, np.mean(ref_totals), rtol=1e-5)
  np.testing.assert_allclose(l_tm, np.mean(ref_tms), rtol=1e-5)
  mean_grads = jax.tree_util.tree_map(lambda *g: jnp.mean(jnp.stack(g), 0), *ref_grads)
  for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(mean_grads)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_one_segment_is_the_single_match():
  net, cfg, feat, images, labels, theta0, target = _setup(clr_strategy="none")
  traj = jnp.stack([theta0, target])[None]
  learned = (images, labels, jnp.asarray(0.05), {})
  key = jax.random.PRNGKey(4)
  total = jax.jit(step.make_segments_loss(net, cfg, jnp.arange(CLASSES), feat))(
      learned, traj, jnp.int32(1), key)[0]
  single = jax.jit(step.make_outer_loss(net, cfg, jnp.arange(CLASSES), feat))(
      learned, theta0, target, key, step.step_keys(key)[4])[0]
  assert float(total) == float(single)


@functools.lru_cache(maxsize=None)
def _state_and_step(lr_lr=1e-7, threshold=10.0):
  """Cached: each distinct jitted step costs seconds of XLA compilation."""
  net, cfg, feat, images, labels, theta0, target = _setup(threshold=threshold)
  opt = step.OuterOptim(lr_img=10.0, lr_lr=lr_lr, lr_y=1.0)
  state = step.init_state(images, labels, 0.01, opt)
  traj = jnp.stack([theta0, target])[None]  # one expert, two snapshots
  step_fn = step.make_distill_step(net, cfg, opt, jnp.arange(CLASSES), feat)
  return state, traj, step_fn


def test_step_updates_everything_it_learns():
  state, traj, step_fn = _state_and_step(lr_lr=1e-3)
  new, m = step_fn(state, traj, jnp.int32(1), jax.random.PRNGKey(0))
  assert int(m["status"]) == step.ACCEPTED
  assert not np.allclose(new.syn_images, state.syn_images)
  assert not np.allclose(new.syn_labels, state.syn_labels)
  assert float(new.syn_lr) != float(state.syn_lr)
  assert int(new.iteration) == 1


def test_negative_syn_lr_is_skipped():
  state, traj, step_fn = _state_and_step(lr_lr=1e6)  # a huge lr step drives syn_lr below 0
  new, m = step_fn(state, traj, jnp.int32(1), jax.random.PRNGKey(0))
  assert int(m["status"]) == step.BAD_LR and float(m["proposed_syn_lr"]) <= 0
  np.testing.assert_array_equal(new.syn_images, state.syn_images)
  np.testing.assert_array_equal(new.syn_lr, state.syn_lr)
  assert int(new.iteration) == 1


def test_nan_is_skipped():
  state, traj, step_fn = _state_and_step(lr_lr=1e-3)
  bad = state.replace(syn_images=state.syn_images.at[0, 0, 0, 0].set(jnp.nan))
  new, m = step_fn(bad, traj, jnp.int32(1), jax.random.PRNGKey(0))
  assert int(m["status"]) == step.NON_FINITE
  np.testing.assert_array_equal(np.isnan(new.syn_images), np.isnan(bad.syn_images))
  np.testing.assert_array_equal(new.syn_lr, bad.syn_lr)
  with pytest.raises(errors.DistillError, match="NaN"):
    distillation.check_finite_state(bad)


def test_update_over_threshold_is_skipped():
  state, traj, step_fn = _state_and_step(threshold=1e-9)
  new, m = step_fn(state, traj, jnp.int32(1), jax.random.PRNGKey(0))
  assert int(m["status"]) == step.OVER_THRESHOLD
  np.testing.assert_array_equal(new.syn_images, state.syn_images)


def test_minibatch_indices_are_fresh_permutations():
  idx = np.asarray(step.minibatch_indices(jax.random.PRNGKey(0), 6, 2, 7))
  assert idx.shape == (7, 2)
  np.testing.assert_array_equal(np.sort(idx[:3].ravel()), np.arange(6))
  np.testing.assert_array_equal(np.sort(idx[3:6].ravel()), np.arange(6))


def test_learned_head_is_updated_by_the_outer_optimiser():
  net, cfg, feat, images, labels, theta0, target = _setup(clr_strategy="fusion", alpha=1.0,
                                                          head="learned")
  opt = step.OuterOptim(lr_img=1.0, lr_lr=1e-7, lr_y=1.0, lr_head=0.5)
  head = step.init_head_params(step.make_head(cfg, feat), jax.random.PRNGKey(9), feat)
  state = step.init_state(images, labels, 0.01, opt, head)
  step_fn = step.make_distill_step(net, cfg, opt, jnp.arange(CLASSES), feat)
  new, m = step_fn(state, jnp.stack([theta0, target])[None], jnp.int32(1), jax.random.PRNGKey(0))
  assert int(m["status"]) == step.ACCEPTED and float(m["l_contrast"]) > 0
  changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), new.head, state.head)
  assert all(jax.tree_util.tree_leaves(changed))


def test_contrastive_update_changes_the_student_path():
  """Eq. 4: the contrastive term enters the student step, so L_tm differs from DATM's."""
  net, cfg, feat, images, labels, theta0, target = _setup(clr_strategy="update", lam=1.0)
  learned = (images, labels, jnp.asarray(0.05), {})
  key = jax.random.PRNGKey(4)
  upd = step.make_outer_loss(net, cfg, jnp.arange(CLASSES), feat)
  datm = step.make_outer_loss(net, dataclasses.replace(cfg, clr_strategy="none"),
                                 jnp.arange(CLASSES), feat)
  total_u, (tm_u, con_u) = jax.jit(upd)(learned, theta0, target, key, key)
  _, (tm_d, _) = jax.jit(datm)(learned, theta0, target, key, key)
  assert float(con_u) > 0 and abs(float(tm_u) - float(tm_d)) > 1e-7
  np.testing.assert_allclose(total_u, tm_u)  # the outer loss is L_tm alone


def test_shared_views_without_contrast_are_datm_on_the_view_augmentation():
  """views='shared' with alpha 0 (arm A3 of the study) is DATM whose student sees view_mode
  DSA: bit for bit the 'extra' step with dsa_mode = view_mode."""
  net, cfg, feat, images, labels, theta0, target = _setup(
      clr_strategy="fusion", alpha=0.0, views="shared", view_mode="multiple")
  plain = dataclasses.replace(cfg, views="extra", dsa_mode="multiple")
  learned, key = (images, labels, jnp.asarray(0.05), {}), jax.random.PRNGKey(4)
  f = lambda c: jax.jit(jax.value_and_grad(step.make_outer_loss(
      net, c, jnp.arange(CLASSES), feat), has_aux=True))(learned, theta0, target, key, key)
  (tot_s, (tm_s, _)), g_s = f(cfg)
  (tot_p, (tm_p, _)), g_p = f(plain)
  assert float(tm_s) == float(tm_p)
  np.testing.assert_array_equal(g_s[0], g_p[0])
  np.testing.assert_array_equal(g_s[2], g_p[2])


def _contrast_at_fixed_thetas(net, cfg, feat, images, labels, lr, theta0, key, head_key):
  """Reference of L_contrast with through_student=False: the student's path theta_0..N-1 is
  a constant and only the views depend on the images (shared views: the first is the CE's)."""
  thetas, idx, keys = _python_loop_thetas(net, cfg, jax.lax.stop_gradient(images), labels,
                                          lr, theta0, key)
  head_module = step.make_head(cfg, feat)
  head = step.init_head_params(head_module, head_key, feat)
  total = 0.0
  for n in range(cfg.num_inner_steps):
    x = images[idx[n]]
    k1, k2 = jax.random.split(jax.random.fold_in(keys[n], 1))
    if cfg.views == "shared":
      k1 = keys[n]
    views = jnp.concatenate([augment.dsa(x, k1, cfg.strategy, cfg.view_mode),
                             augment.dsa(x, k2, cfg.strategy, cfg.view_mode)])
    z = head_module.apply({"params": head}, net.apply_flat(thetas[n], views)[1])
    b = x.shape[0]
    total += losses.supcon_loss(z[:b], z[b:], jnp.arange(CLASSES)[idx[n]], cfg.temperature)
  return total / cfg.num_inner_steps


@pytest.mark.parametrize("views", ["extra", "shared"])
def test_contrast_at_fixed_student_matches_a_direct_reference(views):
  """through_student=False: L_contrast and its image gradient are those of a loss in which
  theta_n is a constant; through_student=True differs (its gradient also flows via theta_n)."""
  net, cfg, feat, images, labels, theta0, target = _setup(
      clr_strategy="fusion", alpha=1.0, views=views, through_student=False, num_inner_steps=3,
      batch_syn=2)
  key, head_key, lr = jax.random.PRNGKey(5), jax.random.PRNGKey(6), jnp.asarray(0.05)

  def l_con(c):
    loss = step.make_outer_loss(net, c, jnp.arange(CLASSES), feat)
    return jax.jit(jax.value_and_grad(
        lambda im: loss((im, labels, lr, {}), theta0, target, key, head_key)[1][1]))(images)

  v, g = l_con(cfg)
  v_ref, g_ref = jax.jit(jax.value_and_grad(lambda im: _contrast_at_fixed_thetas(
      net, cfg, feat, im, labels, lr, theta0, key, head_key)))(images)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5)
  np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-6)
  v_through, g_through = l_con(dataclasses.replace(cfg, through_student=True))
  np.testing.assert_allclose(v_through, v, rtol=1e-5)
  assert not np.allclose(g_through, g, rtol=1e-3, atol=1e-6)


def test_head_parameter_names_are_those_of_earlier_runs():
  """Checkpointed 'fixed' and 'learned' heads and the random heads drawn per iteration are
  keyed by these names: TorchDense_0 is the output layer, TorchDense_1 the hidden one."""
  _, cfg, *_ = _setup(proj_hidden=5, proj_dim=3)
  head = step.make_head(cfg, 7)
  params = step.init_head_params(head, jax.random.PRNGKey(0), 7)
  shapes = jax.tree_util.tree_map(jnp.shape, params)
  assert shapes == {"TorchDense_0": {"kernel": (5, 3), "bias": (3,)},
                    "TorchDense_1": {"kernel": (7, 5), "bias": (5,)}}, shapes


def test_fixed_head_is_the_run_s_own_and_never_learned():
  net, cfg, feat, images, labels, theta0, target = _setup(clr_strategy="fusion", alpha=1.0,
                                                          head="fixed")
  opt = step.OuterOptim(lr_img=1.0, lr_lr=1e-7, lr_y=1.0, lr_head=0.5)
  head_module = step.make_head(cfg, feat)
  heads = [step.init_head_params(head_module, jax.random.PRNGKey(s), feat) for s in (7, 8)]
  step_fn = step.make_distill_step(net, cfg, opt, jnp.arange(CLASSES), feat)
  traj, key = jnp.stack([theta0, target])[None], jax.random.PRNGKey(0)
  cons = []
  for head in heads:
    state = step.init_state(images, labels, 0.01, opt, head)
    new, m = step_fn(state, traj, jnp.int32(1), key)
    assert int(m["status"]) == step.ACCEPTED and float(m["l_contrast"]) > 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, new.head, state.head)
    cons.append(float(m["l_contrast"]))
  assert cons[0] != cons[1], "the state's head should be the one the loss uses"


@pytest.mark.parametrize("overrides", [dict(clr_strategy="fusion", alpha=0.7),
                                       dict(clr_strategy="none")])
def test_diagnostics_split_the_step_s_image_gradient(overrides):
  """g_tm + g_con is the step's image gradient, and g_tm is DATM's (Fusion leaves the student
  path alone); a run with diagnostics ends on the very same set as one without."""
  net, cfg, feat, images, labels, theta0, target = _setup(**overrides)
  opt = step.OuterOptim(lr_img=1.0, lr_lr=1e-4, lr_y=1.0)
  traj, upper, key = jnp.stack([theta0, target])[None], jnp.int32(1), jax.random.PRNGKey(2)
  state = step.init_state(images, labels, 0.01, opt)
  step_fn = step.make_distill_step(net, cfg, opt, jnp.arange(CLASSES), feat)
  diag = step.make_diagnostics(net, cfg, jnp.arange(CLASSES), feat)(state, traj, upper, key)
  _, m = step_fn(state, traj, upper, key)
  datm = dataclasses.replace(cfg, clr_strategy="none")
  loss = step.make_segments_loss(net, datm, jnp.arange(CLASSES), feat)
  g_datm = jax.grad(lambda im: loss((im, labels, state.syn_lr, {}), traj, upper, key)[0])(
      images)
  np.testing.assert_allclose(diag["grad_norm_tm"], jnp.linalg.norm(g_datm), rtol=1e-5)
  if cfg.contrast_on:
    n_tm, n_con, cos = (float(diag[k]) for k in ("grad_norm_tm", "grad_norm_contrast",
                                                  "grad_cosine"))
    # |g_tm + g_con|^2 from the parts against the step's own |g|.
    total_sq = n_tm ** 2 + n_con ** 2 + 2 * cos * n_tm * n_con
    np.testing.assert_allclose(np.sqrt(total_sq), float(m["grad_norm_images"]), rtol=1e-4)
    assert n_con > 0 and -1 <= cos <= 1
  else:
    assert set(diag) == {"grad_norm_tm"}
    np.testing.assert_allclose(diag["grad_norm_tm"], m["grad_norm_images"], rtol=1e-5)

  runs = []
  for d in (None, step.make_diagnostics(net, cfg, jnp.arange(CLASSES), feat)):
    logged = []
    end = distillation.run_distillation(step_fn, state, traj, iterations=4, seed=0,
                                   schedule=lambda it: 1, ckpt=None, checkpoint_every=2,
                                   log_every=2, log=logged.append, diagnose=d)
    runs.append(end)
    assert ("grad_norm_tm" in logged[0]) == (d is not None)
  np.testing.assert_array_equal(runs[0].syn_images, runs[1].syn_images)
  assert np.isclose(float(m["image_rms"]), float(jnp.sqrt(jnp.mean(
      jnp.square(step_fn(state, traj, upper, key)[0].syn_images)))))
