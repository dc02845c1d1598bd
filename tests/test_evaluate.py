"""The evaluation protocol: learning on a synthetic set, BN networks, per-seed data."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from datm_clr_jax import augment, evaluate, losses, models


def _blobs(n_per_class, classes=3, shape=(8, 8, 3), seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, *shape)) * 2
  y = np.repeat(np.arange(classes), n_per_class)
  x = centres[y] + 0.3 * rng.normal(size=(len(y), *shape))
  return x.astype(np.float32), y.astype(np.int32)


CFG = evaluate.EvalConfig(epochs=30, batch_size=4, strategy="flip")


def test_training_on_a_tiny_set_learns():
  x, y = _blobs(2)
  x_test, y_test = _blobs(20, seed=0)
  net = models.make_network("convnet", 3, (8, 8, 3), width=8, depth=1)
  probs = np.eye(3, dtype=np.float32)[y]
  accs = evaluate.evaluate_synset(net, x, probs, 0.01, x_test, y_test, seeds=[0, 1], cfg=CFG)
  assert len(accs) == 2 and min(accs) > 60.0
  # Seeds differ, the same seed repeats exactly.
  hits = evaluate.make_trainer.cache_info().hits
  again = evaluate.evaluate_synset(net, x, probs, 0.01, x_test, y_test, seeds=[0], cfg=CFG)
  assert again[0] == accs[0]
  assert evaluate.make_trainer.cache_info().hits == hits + 1  # no second compile


def test_a_set_smaller_than_a_batch_is_one_batch_of_its_own_size():
  x, y = _blobs(2)  # 6 images: batch_size 128 must train exactly like batch_size 6
  net = models.make_network("convnet", 3, (8, 8, 3), width=4, depth=1)
  keys = jax.numpy.stack([jax.random.PRNGKey(0)])
  probs = np.eye(3, dtype=np.float32)[y]
  out = [evaluate.make_trainer(net, evaluate.EvalConfig(epochs=1, batch_size=b, strategy="flip"),
                               len(x), (8, 8, 3))(keys, x, probs, 0.01) for b in (6, 128)]
  jax.tree_util.tree_map(np.testing.assert_array_equal, *out)


def _reference_training(net, cfg, key, x, probs, lr, after_epoch=lambda e, params: None):
  """The reference's evaluation loop written plainly: epochs + 1 epochs, and at epoch
  epochs // 2 + 1 a new SGD optimiser (no momentum carried over) at a tenth of the rate.
  after_epoch(e, params) is called after each epoch e of 0..epochs."""
  k_init, k_run = jax.random.split(key)
  variables = net.init_variables(k_init, x.shape[1:])
  k1, k2 = jax.random.split(k_run)
  first = cfg.epochs // 2 + 1
  n, batch = len(x), min(cfg.batch_size, len(x))

  @jax.jit
  def grad(params, xb, yb, k):
    xb = augment.dsa(xb, k, cfg.strategy, cfg.dsa_mode)
    return jax.grad(lambda p: losses.soft_cross_entropy(
        net.module.apply({"params": p}, xb, train=True)[0], yb))(params)

  params = variables["params"]
  e = 0
  for phase_key, epochs, phase_lr in ((k1, first, lr), (k2, cfg.epochs + 1 - first, lr * 0.1)):
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(phase_lr, momentum=cfg.momentum))
    opt_state = tx.init(params)
    for k in jax.random.split(phase_key, epochs):
      k_perm, k_aug = jax.random.split(k)
      perm = np.asarray(jax.random.permutation(k_perm, n))
      for idx, kb in zip(np.split(perm, range(batch, n, batch)),
                         jax.random.split(k_aug, -(-n // batch))):
        upd, opt_state = tx.update(grad(params, x[idx], probs[idx], kb), opt_state, params)
        params = optax.apply_updates(params, upd)
      after_epoch(e, params)
      e += 1
  return params


def test_schedule_matches_a_plain_reference_loop():
  x, y = _blobs(2)  # 6 images in batches of 4: a full batch, then a short one
  probs = np.eye(3, dtype=np.float32)[y]
  net = models.make_network("convnet", 3, (8, 8, 3), width=4, depth=1)
  cfg = dataclasses.replace(CFG, epochs=3)
  key = jax.random.PRNGKey(0)
  ours = evaluate.make_trainer(net, cfg, len(x), (8, 8, 3))(key[None], x, probs, 0.01)
  ref = _reference_training(net, cfg, key, x, probs, 0.01)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6),
                         ours["params"], ref)


@pytest.mark.parametrize("loop", ["vmap", "map"])
def test_the_best_epoch_option_keeps_the_best_tested_epoch_of_a_plain_loop(loop):
  x, y = _blobs(2)
  x_test, y_test = _blobs(300, seed=3)  # 900 test images: two chunks, the second padded
  probs = np.eye(3, dtype=np.float32)[y]
  net = models.make_network("convnet", 3, (8, 8, 3), width=4, depth=1)
  cfg = dataclasses.replace(CFG, epochs=7, keep="best", test_every=3, seed_loop=loop)
  seeds = [0, 1]
  got = evaluate.evaluate_synset(net, x, probs, 0.01, x_test, y_test, seeds=seeds, cfg=cfg)
  test = evaluate.make_tester(net, "map")
  for seed, acc in zip(seeds, got):
    tested = {}

    def after_epoch(e, params):
      if e % 3 == 0 or e == 7:  # epochs 0, 3, 6 and the last, 7
        tested[e] = 100 * float(test(jax.tree.map(lambda a: a[None], {"params": params}),
                                     x_test, y_test)[0])

    _reference_training(net, cfg, jax.random.PRNGKey(seed), x, probs, 0.01, after_epoch)
    assert sorted(tested) == [0, 3, 6, 7]
    assert acc == pytest.approx(max(tested.values()), abs=100 / len(x_test) + 1e-9)
  final = evaluate.evaluate_synset(net, x, probs, 0.01, x_test, y_test, seeds=seeds,
                                   cfg=dataclasses.replace(cfg, keep="final"))
  assert all(b >= f - 100 / len(x_test) for b, f in zip(got, final))


@pytest.mark.parametrize("per_seed_data", [False, True])
def test_seeds_in_turn_match_seeds_under_vmap(per_seed_data):
  x, y = _blobs(2)
  probs = np.eye(3, dtype=np.float32)[y]
  if per_seed_data:  # a different set per seed (random real draws one subset per seed)
    x, probs = np.stack([x, x[::-1]]), np.stack([probs, probs[::-1]])
  net = models.make_network("convnet", 3, (8, 8, 3), width=4, depth=1)
  keys = jax.numpy.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
  out = {loop: evaluate.make_trainer(net, dataclasses.replace(CFG, epochs=3, seed_loop=loop),
                                     6, (8, 8, 3), per_seed_data)(keys, x, probs, 0.01)
         for loop in ("vmap", "map")}
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         out["vmap"], out["map"])
  leaves = jax.tree_util.tree_leaves(out["map"])
  assert not np.allclose(leaves[0][0], leaves[0][1])  # the seeds did train differently
  assert evaluate.resolve_seed_loop("auto") == "map"
  assert evaluate.resolve_seed_loop("auto", num_devices=4) == "vmap"
  with pytest.raises(ValueError, match="seed_loop"):
    evaluate.resolve_seed_loop("pmap")


@pytest.mark.parametrize("loop", ["vmap", "map"])
def test_progress_lines_follow_the_epochs_and_change_nothing(loop, monkeypatch):
  lines = []
  monkeypatch.setattr(evaluate.logging, "info", lambda fmt, *args: lines.append(fmt % args))
  x, y = _blobs(2)
  x_test, y_test = _blobs(5, seed=1)
  net = models.make_network("convnet", 3, (8, 8, 3), width=4, depth=1)
  probs = np.eye(3, dtype=np.float32)[y]
  cfg = dataclasses.replace(CFG, epochs=5, seed_loop=loop)  # epochs 0..5: lines at 2, 4, 5
  run = lambda every: evaluate.evaluate_synset(
      net, x, probs, 0.01, x_test, y_test, seeds=[0, 1], label="eval test",
      cfg=dataclasses.replace(cfg, progress_every=every))
  quiet = run(0)
  assert lines == []
  assert run(2) == quiet  # the host callback leaves the training bit for bit the same
  which = (["seed 1/2"] * 3 + ["seed 2/2"] * 3 if loop == "map" else ["2 seed(s) at once"] * 3)
  epochs = [2, 4, 5] * (2 if loop == "map" else 1)
  assert len(lines) == len(epochs) + 1
  assert lines.pop() == "eval test: testing 2 network(s) on 15 images"
  for line, e, w in zip(lines, epochs, which):
    assert line.startswith(f"eval test: epoch {e}/5 of {w}, "), line
  assert ("50%" if loop == "map" else "100%") in lines[2]
  assert "100%" in lines[-1] and "left" in lines[-1]


def test_batch_norm_network_evaluates_with_running_statistics():
  x, y = _blobs(2)
  # A ConvNet with norm='batch' takes the same stateful path as resnet18_bn / vgg11_bn at a
  # fraction of their compile time.
  net = models.make_network("convnet", 3, (8, 8, 3), width=8, depth=1, norm="batch")
  cfg = evaluate.EvalConfig(epochs=1, batch_size=4, strategy="flip")
  train = evaluate.make_trainer(net, cfg, len(x), (8, 8, 3))
  keys = jax.numpy.stack([jax.random.PRNGKey(0)])
  variables = train(keys, x, np.eye(3, dtype=np.float32)[y], 0.01)
  stats = variables["batch_stats"]
  mean0 = jax.tree_util.tree_leaves(stats)[0]
  assert not np.allclose(mean0, 0) and not np.allclose(mean0, 1)  # statistics were updated
  acc = evaluate.make_tester(net)(variables, x, y)
  assert acc.shape == (1,) and 0 <= acc[0] <= 1


@pytest.mark.parametrize("loop", ["vmap", "map"])
def test_tester_counts_like_a_direct_loop(loop):
  """Networks counted one by one with plain argmax; 11 images in chunks that leave one over."""
  x, y = _blobs(4)
  x, y = x[:11], y[:11]
  net = models.make_network("convnet", 3, (8, 8, 3), width=4, depth=1, conv_impl="hybrid")
  variables = [net.init_variables(jax.random.PRNGKey(s), (8, 8, 3)) for s in range(3)]
  # The last image, in the short last chunk, counts: network 0 classifies it "correctly".
  y[-1] = np.argmax(net.module.apply(variables[0], x[-1:], train=False)[0])
  want = [float(np.mean(np.argmax(net.module.apply(v, x, train=False)[0], -1) == y))
          for v in variables]
  assert len(set(want)) > 1  # the networks differ, so a mix-up would show
  stacked = jax.tree_util.tree_map(lambda *a: np.stack(a), *variables)
  got = evaluate.make_tester(net, loop, chunk=7)(stacked, x, y)  # map: 7+4, vmap: 5x2+1
  np.testing.assert_allclose(got, want)


def test_bad_inputs():
  x, y = _blobs(1)
  net = models.make_network("convnet", 3, (8, 8, 3), width=4, depth=1)
  with pytest.raises(ValueError, match="different datasets"):
    evaluate.evaluate_synset(net, x[:, :4], np.eye(3)[y], 0.01, x, y, seeds=[0], cfg=CFG)
  with pytest.raises(ValueError, match="learning rate"):
    evaluate.evaluate_synset(net, x, np.eye(3)[y], -0.1, x, y, seeds=[0], cfg=CFG)


def test_random_real_is_class_major_and_seeded():
  x, y = _blobs(5)
  a, la = evaluate.random_real(x, y, ipc=2, num_classes=3, seed=0)
  b, _ = evaluate.random_real(x, y, ipc=2, num_classes=3, seed=0)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la.argmax(1), [0, 0, 1, 1, 2, 2])


def test_the_time_estimate_extrapolates_a_timed_probe_by_the_steps_of_the_job(monkeypatch):
  x, y = _blobs(20)  # 60 images, batch 4: 15 steps per epoch
  probs = np.eye(3, dtype=np.float32)[y]
  assert evaluate.train_steps(60, CFG, 2) == 15 * 31 * 2
  assert evaluate.train_steps(3, CFG, 1) == 31  # a set under one batch is one step an epoch
  net = models.make_network("convnet", 3, (8, 8, 3), width=4, depth=1)
  clock = iter([10.0, 10.8])  # the probe: 4 steps (16 images, one epoch) in 0.8 s
  monkeypatch.setattr(evaluate, "_clock", lambda: next(clock))
  got = evaluate.estimate_seconds(net, CFG, x, probs, 0.01, num_seeds=2)
  assert got == pytest.approx(0.8 / 4 * 15 * 31 * 2)
  clock = iter([0.0, 0.4])  # the probe trains as 'final' whatever the job keeps
  best = dataclasses.replace(CFG, keep="best")
  assert evaluate.estimate_seconds(net, best, x, probs, 0.01, 1) == pytest.approx(0.1 * 15 * 31)
