"""The evaluation protocol: train fresh networks on a synthetic set, test them on real data.

For each seed a randomly initialised network is trained only on the synthetic set: SGD with
momentum 0.9 and weight decay 5e-4 (PyTorch-style, added to the gradient), learning rate = the
learned syn_lr for the first `epochs // 2 + 1` epochs and a tenth of it (with fresh momentum,
as the reference re-creates its optimiser) for the remaining `epochs - epochs // 2`, so
`epochs + 1` epochs in all like the reference loop. Every minibatch is augmented with DSA and
the loss is cross-entropy against the label distribution. All seeds train in one compiled
function: under `jax.vmap` (seed_loop 'vmap', the default across devices) or one after
another under `lax.map` ('map', the default on one device, where batching the seeds'
convolutions made training slower than running them in turn, on a CPU and on a GPU:
docs/performance.md). With `progress_every` the compiled
loop reports its epoch to the host (jax.debug.callback), so a long evaluation logs progress and
an estimate of the time left; the trained networks are the same bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from datm_clr_jax import augment, losses, sharding
from datm_clr_jax.models import Network


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  epochs: int = 1000
  batch_size: int = 128
  momentum: float = 0.9
  weight_decay: float = 5e-4
  strategy: str = augment.DEFAULT_STRATEGY
  dsa_mode: str = "single"
  seed_loop: str = "auto"  # 'vmap' | 'map' | 'auto' (resolve_seed_loop)
  progress_every: int = 0  # log every this many epochs of each seed (0: no progress lines)
  augment: bool = True  # DSA on every batch; False for the no-augmentation runs of ARS
  # 'final': the last epoch's test accuracy. 'best': DD-Ranking's, the best test accuracy
  # seen every test_every epochs and at the last (an accuracy chosen on the test set).
  keep: str = "final"
  test_every: int = 20

  @classmethod
  def from_config(cls, config, epochs: int | None = None, progress: bool = True) -> EvalConfig:
    """The run config's evaluation settings (its eval and dsa sections); `epochs` replaces
    eval.epochs (the shortened evaluations of selection), `progress` False drops the lines."""
    e = config.eval
    return cls(epochs=e.epochs if epochs is None else epochs, batch_size=e.batch_size,
               momentum=e.momentum, weight_decay=e.weight_decay, strategy=config.dsa.strategy,
               dsa_mode=config.dsa.mode, seed_loop=e.seed_loop,
               progress_every=e.progress_every if progress else 0, keep=e.keep,
               test_every=e.test_every)


SEED_LOOPS = sharding.NETWORK_LOOPS
KEEP = ("final", "best")


def resolve_seed_loop(seed_loop: str, num_devices: int = 1) -> str:
  """'auto' -> 'map' on a single device, else 'vmap' (seeds sharded over devices need it)."""
  return sharding.resolve_network_loop(seed_loop, num_devices, "eval seed_loop")


class _Progress:
  """Host side of the trainers' progress lines; `start` is called before each evaluation.

  One instance serves every compiled trainer (the callback is fixed when a trainer compiles,
  and trainers are cached), so the label and clock of the evaluation now running live here.
  """

  def __init__(self):
    self.start("evaluate", num_seeds=1, in_turn=False)

  def start(self, label: str, num_seeds: int, in_turn: bool):
    self.label, self.num_seeds, self.in_turn = label, num_seeds, in_turn
    self.seed, self.last_epoch, self.first = 0, None, None
    self.t0 = time.time()

  def __call__(self, epoch, epochs):
    """epoch: the 0-based index of the epoch just trained, of 0..epochs (the reference's loop)."""
    epoch, epochs = int(epoch), int(epochs)
    # Under lax.map the seeds run in turn: the epoch count starting again means the next seed.
    if self.in_turn and self.last_epoch is not None and epoch <= self.last_epoch:
      self.seed += 1
    self.last_epoch = epoch
    seeds = self.num_seeds if self.in_turn else 1
    done = (min(self.seed, seeds - 1) * (epochs + 1) + epoch + 1) / (seeds * (epochs + 1))
    now = time.time()
    # The time left is extrapolated from the first line on, so compilation does not count.
    left = ""
    if self.first is None:
      self.first = (now, done)
    elif done > self.first[1]:
      rate = (now - self.first[0]) / (done - self.first[1])
      left = f", about {rate * (1 - done):.0f}s left"
    which = (f"seed {self.seed + 1}/{self.num_seeds}" if self.in_turn
             else f"{self.num_seeds} seed(s) at once")
    logging.info("%s: epoch %d/%d of %s, %.0f%% (%.0fs%s)", self.label, epoch, epochs,
                 which, 100 * done, now - self.t0, left)


_progress = _Progress()


def _loss_fn(network: Network, variables, x, y, w):
  if network.stateful:
    (logits, _), new_vars = network.module.apply(variables, x, train=True,
                                                 mutable=["batch_stats"])
    variables = {**variables, **new_vars}
  else:
    logits, _ = network.module.apply(variables, x, train=True)
  return losses.soft_cross_entropy(logits, y, w), variables


# Cached: repeated evaluations of one shape (validation selection every few hundred
# iterations, several sets per run) reuse one compiled trainer instead of recompiling.
@functools.lru_cache(maxsize=16)
def make_trainer(network: Network, cfg: EvalConfig, num_syn: int, image_shape,
                 per_seed_data: bool = False):
  """Returns jitted train(keys (S,2), x, y, lr ()) -> variables (S, ...).

  x (n,H,W,C) and y (n,C) are shared by all seeds, or (S,n,H,W,C), (S,n,C) with per_seed_data.
  With cfg.keep 'best': train(keys, x, y, lr, x_test (M,H,W,C), y_test (M,)) ->
  (variables, best test accuracy (S,) in [0, 1] over the tested epochs).
  """
  # A set smaller than one batch is one batch of its own size (as a PyTorch DataLoader gives),
  # not a padded batch_size: at IPC 1 padding to 128 would train on 12.8x the images needed.
  batch = min(cfg.batch_size, num_syn)
  steps = -(-num_syn // batch)
  pad = steps * batch
  vmapped = resolve_seed_loop(cfg.seed_loop) == "vmap"
  if vmapped:
    network = network.for_vmap()

  # One scan over all epochs, with the schedule (a tenth of the learning rate and fresh momentum
  # from epoch `first`) as per-epoch inputs: one compiled epoch body instead of one per phase
  # compiles about a fifth faster and gives the same numbers bit for bit.
  first = cfg.epochs // 2 + 1
  num_epochs = cfg.epochs + 1
  tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.trace(cfg.momentum))

  best = cfg.keep == "best"
  count = _make_counter(network)

  def train_one(key, x, y, lr, x_test=None, y_test=None):
    k_init, k_run = jax.random.split(key)
    variables = network.init_variables(k_init, image_shape)
    k1, k2 = jax.random.split(k_run)
    epoch_keys = jnp.concatenate([jax.random.split(k1, first),
                                  jax.random.split(k2, num_epochs - first)])
    second = jnp.arange(num_epochs) >= first
    epoch_lrs = jnp.where(second, lr * 0.1, lr)
    reset = jnp.arange(num_epochs) == first

    def epoch(carry, xs):
      variables, opt_state, best_acc = carry
      k, lr_e, fresh, e = xs
      opt_state = jax.tree.map(lambda s: jnp.where(fresh, jnp.zeros_like(s), s), opt_state)
      k_perm, k_aug = jax.random.split(k)
      perm = jax.random.permutation(k_perm, num_syn)
      order = jnp.concatenate([perm, jnp.zeros(pad - num_syn, perm.dtype)])
      mask = (jnp.arange(pad) < num_syn).astype(x.dtype)

      def step(carry, xs):
        variables, opt_state = carry
        idx, m, k = xs
        xb = augment.dsa(x[idx], k, cfg.strategy, cfg.dsa_mode) if cfg.augment else x[idx]

        def f(params):
          return _loss_fn(network, {**variables, "params": params}, xb, y[idx], m)

        (_, new_vars), g = jax.value_and_grad(f, has_aux=True)(variables["params"])
        trace, opt_state = tx.update(g, opt_state, variables["params"])
        upd = jax.tree.map(lambda t: t * -lr_e, trace)  # what optax.sgd(lr_e) would apply
        new_vars = {**new_vars, "params": optax.apply_updates(variables["params"], upd)}
        return (new_vars, opt_state), None

      xs = (order.reshape(steps, batch), mask.reshape(steps, batch),
            jax.random.split(k_aug, steps))
      variables, opt_state = jax.lax.scan(step, (variables, opt_state), xs)[0]
      if best:
        tested = (e % cfg.test_every == 0) | (e == cfg.epochs)
        acc = jax.lax.cond(tested, lambda: _test_accuracy(count, variables, x_test, y_test),
                           lambda: jnp.float32(-1.0))
        best_acc = jnp.maximum(best_acc, acc)
      if cfg.progress_every:
        # The epoch index is the same for every seed, so under vmap the predicate stays
        # unbatched and this remains a real branch: one host call per report, not per epoch.
        report = ((e % cfg.progress_every == 0) & (e > 0)) | (e == cfg.epochs)
        jax.lax.cond(report, lambda: jax.debug.callback(_progress, e, cfg.epochs), lambda: None)
      return (variables, opt_state, best_acc), None

    carry = (variables, tx.init(variables["params"]), jnp.float32(-1.0))
    xs = (epoch_keys, epoch_lrs, reset, jnp.arange(num_epochs))
    (variables, _, best_acc), _ = jax.lax.scan(epoch, carry, xs)
    return (variables, best_acc) if best else variables

  data_axis = 0 if per_seed_data else None
  axes = (0, data_axis, data_axis, None) + ((None, None) if best else ())
  return jax.jit(sharding.over_networks(train_one, "vmap" if vmapped else "map", axes))


def _make_counter(network: Network):
  """count(variables, x (B,H,W,C), y (B,), mask (B,)) -> correct predictions among the mask."""
  def count(variables, xb, yb, mask):
    logits, _ = network.module.apply(variables, xb, train=False)
    return jnp.sum((jnp.argmax(logits, -1) == yb) * mask)
  return count


def _test_accuracy(count, variables, x_test, y_test, chunk: int = 500):
  """The test accuracy inside a trainer, in chunks of `chunk` images (memory stays flat)."""
  m = len(x_test)
  pad = -(-m // chunk) * chunk - m
  xs = jnp.concatenate([x_test, jnp.zeros((pad, *x_test.shape[1:]), x_test.dtype)])
  ys = jnp.concatenate([y_test, jnp.zeros((pad,), y_test.dtype)])
  mask = (jnp.arange(m + pad) < m).astype(jnp.float32)
  shape = lambda a: a.reshape(-1, chunk, *a.shape[1:])
  correct = jax.lax.map(lambda c: count(variables, *c), (shape(xs), shape(ys), shape(mask)))
  return jnp.sum(correct) / m


@functools.lru_cache(maxsize=16)
def make_tester(network: Network, loop: str = "vmap", chunk: int = 1000):
  """Returns test(variables (S,...), x (M,H,W,C), y (M,)) -> accuracy (S,) in [0, 1].

  `loop` ('vmap' or 'map', resolved) runs the S networks side by side or in turn, as they
  were trained. On one CPU device 'map' keeps the network's own convolutions, which tested
  faster than vmap's im2col (launch/results/cross_arch_cpu.md). Under 'vmap' each call takes
  chunk // S images per network, so memory does not grow with S (AlexNet's im2col patches
  for a full chunk per network outgrow a CPU machine's memory).
  """
  if loop == "vmap":
    network = network.for_vmap()

  def count(variables, xb, yb):
    logits, _ = network.module.apply(variables, xb, train=False)
    return jnp.sum(jnp.argmax(logits, -1) == yb)

  correct = jax.jit(sharding.over_networks(count, loop, (0, None, None)))

  def test(variables, x, y):
    num_networks = jax.tree_util.tree_leaves(variables)[0].shape[0]
    step = max(1, chunk // num_networks) if loop == "vmap" else chunk
    total = 0
    for i in range(0, len(x), step):
      total = total + correct(variables, jnp.asarray(x[i:i + step]), jnp.asarray(y[i:i + step]))
    return np.asarray(total) / len(x)

  return test


def evaluate_synset(network: Network, syn_images, label_probs, lr: float, x_test, y_test, *,
                    seeds: list[int], cfg: EvalConfig, mesh=None,
                    label: str = "evaluate") -> list[float]:
  """Trains one network per seed on the synthetic set and returns test accuracies in percent.

  Args:
    syn_images: (n, H, W, C) normalised images, or (S, n, H, W, C): one set per seed.
    label_probs: (n, C) target distributions (softmax of learned logits, or one-hot), or
      (S, n, C) with per-seed images.
    lr: the learning rate (the learned syn_lr).
    x_test, y_test: (M, H, W, C), (M,).
    seeds: one evaluation run per seed.
    mesh: a `sharding.device_mesh()`: the seeds' networks are spread over its devices.
    label: what the progress lines (cfg.progress_every) begin with.
  """
  syn_images = jnp.asarray(syn_images, jnp.float32)
  per_seed = syn_images.ndim == 5
  if syn_images.shape[-3:] != tuple(x_test.shape[1:]):
    raise ValueError(f"synthetic images have shape {syn_images.shape[-3:]}, the test set "
                     f"{tuple(x_test.shape[1:])}; they come from different datasets")
  if not np.isfinite(lr) or lr <= 0:
    raise ValueError(f"evaluation learning rate must be positive and finite, got {lr}")
  cfg = dataclasses.replace(
      cfg, seed_loop=resolve_seed_loop(cfg.seed_loop, sharding.num_devices(mesh)))
  train = make_trainer(network, cfg, syn_images.shape[-4], tuple(syn_images.shape[-3:]),
                       per_seed)
  keys = sharding.shard_leading(jnp.stack([jax.random.PRNGKey(s) for s in seeds]), mesh)
  data = (syn_images, jnp.asarray(label_probs, jnp.float32))
  data = sharding.shard_leading(data, mesh) if per_seed else sharding.replicate(data, mesh)
  _progress.start(label, len(seeds), in_turn=cfg.seed_loop == "map")
  lr = jnp.asarray(lr, jnp.float32)
  if cfg.keep == "best":
    _, best = train(keys, *data, lr, jnp.asarray(x_test, jnp.float32), jnp.asarray(y_test))
    return [float(100 * a) for a in np.asarray(best)]
  variables = train(keys, *data, lr)
  if cfg.progress_every:  # the test pass has no epochs to report; say that it has begun
    jax.block_until_ready(variables)
    logging.info("%s: testing %d network(s) on %d images", label, len(seeds), len(x_test))
  acc = make_tester(network, cfg.seed_loop)(variables, x_test, y_test)
  return [float(100 * a) for a in acc]


_clock = time.perf_counter  # the probe's timer (a test replaces it)


def train_steps(num_images: int, cfg: EvalConfig, num_seeds: int) -> int:
  """Minibatch steps that evaluate_synset takes to train num_seeds networks on num_images."""
  return -(-num_images // min(cfg.batch_size, num_images)) * (cfg.epochs + 1) * num_seeds


def estimate_seconds(network: Network, cfg: EvalConfig, images, label_probs, lr: float,
                     num_seeds: int, probe_steps: int = 4) -> float:
  """Seconds evaluate_synset(images, ...) will spend training num_seeds networks, from timing
  probe_steps of its minibatch steps on a prefix of the set (the probe's compilation is not
  counted; the seeds are taken as running in turn, as on one device).

  images: (n, H, W, C); label_probs: (n, C).
  """
  batch = min(cfg.batch_size, len(images))
  n = min(len(images), probe_steps * batch)
  probe = dataclasses.replace(cfg, epochs=0, progress_every=0, seed_loop="map", keep="final")
  train = make_trainer(network, probe, n, tuple(images.shape[1:]))
  args = (jnp.stack([jax.random.PRNGKey(0)]), jnp.asarray(images[:n], jnp.float32),
          jnp.asarray(label_probs[:n], jnp.float32), jnp.asarray(lr, jnp.float32))
  jax.block_until_ready(train(*args))  # compiles
  start = _clock()
  jax.block_until_ready(train(*args))
  per_step = (_clock() - start) / train_steps(n, probe, 1)
  return per_step * train_steps(len(images), cfg, num_seeds)


def random_real(x_train, y_train, *, ipc: int, num_classes: int, seed: int):
  """ipc random real images per class, class-major: (C*ipc, H, W, C) and one-hot (C*ipc, C).

  The random-real baseline draws one such subset per evaluation seed.
  """
  rng = np.random.default_rng(seed)
  idx = []
  for c in range(num_classes):
    pool = np.flatnonzero(y_train == c)
    if len(pool) < ipc:
      raise ValueError(f"ipc={ipc} but class {c} has only {len(pool)} training images")
    idx.append(rng.choice(pool, ipc, replace=False))
  idx = np.concatenate(idx)
  return x_train[idx], np.eye(num_classes, dtype=np.float32)[y_train[idx]]


def summarize(runs: list[float]) -> dict:
  """{'mean', 'std', 'runs'} in percent (population std, as numpy's default)."""
  return {"mean": float(np.mean(runs)), "std": float(np.std(runs)), "runs": list(runs)}
