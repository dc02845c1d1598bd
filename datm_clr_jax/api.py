"""The library without the command line: arrays in, arrays and metrics out.

Every function takes the run config (an ml_collections ConfigDict, as configs/*.py build it)
for its settings, so a script and a command-line run with the same config compute the same
thing. Nothing here writes files; the command line's pipeline adds checkpoints, resumption
and the workdir. Example (docs/usage.md runs it as a test):

  import datm_clr_jax as dc
  config = dc.load_config("configs/quickstart.py")
  data = dc.load_dataset(config)
  trajectories = dc.train_experts(config, data.x_train, data.y_train)
  syn = dc.distill(config, data.x_train, data.y_train, trajectories)
  scores = dc.evaluate_set(config, syn, data.x_test, data.y_test)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from datm_clr_jax import (checks, config_file, data as data_lib, distillation, evaluate, experts,
                          models, results, step)
from datm_clr_jax.errors import ConfigError


@dataclasses.dataclass
class SyntheticSet:
  """A distilled set.

  Attributes:
    images: (n, H, W, C) synthetic images in the data's normalised (e.g. ZCA) space,
      class-major: ipc images of class 0, then of class 1, ...
    labels: (n, num_classes) label logits (the evaluation trains on their softmax), or
      one-hot rows for hard labels (distill.labels 'hard').
    lr: the learned student learning rate syn_lr.
    metrics: one record per logged iteration (losses, syn_lr, status, ...).
    ema_images: FTD's moving average of the images (distill.ema_decay > 0), else None.
  """

  images: np.ndarray
  labels: np.ndarray
  lr: float
  metrics: list[dict]
  ema_images: np.ndarray | None = None


def load_config(path: str, overrides=()) -> ml_collections.ConfigDict:
  """The config of a config file, `path` or `path:variant` (get_config's argument), with
  `overrides` such as "distill.iterations=50" applied; checked before it is returned."""
  config = config_file.load(path, overrides)
  checks.validate_config(config)
  return config


def load_dataset(config) -> data_lib.Prepared:
  """The config's data (config.data), normalised (ZCA when data.zca).

  Returns data.Prepared: x_train (N, H, W, C), y_train (N,) int, x_test (M, H, W, C),
  y_test (M,), num_classes, image_shape, and to_pixels() to show images.
  """
  cfg = config.data
  ds = data_lib.load_dataset(cfg.source, image_size=cfg.image_size,
                             data_dir=cfg.data_dir or None, cache_dir=cfg.cache_dir or None,
                             seed=config.seed)
  return data_lib.prepare(ds, zca=cfg.zca, zca_eps=cfg.zca_eps, cache_dir=cfg.cache_dir or None)


def _network(config, num_classes: int, image_shape, arch=None) -> models.Network:
  try:
    return models.from_config(config.model, num_classes, tuple(image_shape), arch)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def train_experts(config, x_train, y_train, x_test=None, y_test=None, log=None) -> np.ndarray:
  """Trains config.experts.num_experts experts on (x_train (N,H,W,C), y_train (N,)).

  Returns their trajectories (K, epochs + 1, P): the flat parameters at initialisation and
  after every epoch. With x_test, y_test the experts' test accuracy is logged; `log`, if
  given, receives one record per epoch.
  """
  c = config.experts
  image_shape = tuple(x_train.shape[1:])
  net = _network(config, int(np.max(y_train)) + 1, image_shape)
  train_group = experts.make_group_trainer(
      net, x_train, y_train, lr=c.lr, batch_size=c.batch_size, strategy=config.dsa.strategy,
      dsa_mode=config.dsa.mode, gsam=experts.GSAM.from_config(c), loop=c.loop)
  groups = [list(range(k, min(k + c.parallel, c.num_experts)))
            for k in range(0, c.num_experts, c.parallel)]
  return np.concatenate([train_group(g, epochs=c.epochs, seed=c.seed, image_shape=image_shape,
                                     x_test=x_test, y_test=y_test, progress=None, log=log)
                         for g in groups])


def distill(config, x_train, y_train, trajectories, final_params=None) -> SyntheticSet:
  """Distills (x_train (N,H,W,C), y_train (N,)) against expert trajectories (K, T, P).

  final_params (K, P): the experts' final parameters, which choose the initial images and
  label logits (default: each trajectory's last snapshot). Runs config.distill.iterations
  outer iterations of the config's step from config.seed.
  """
  d = config.distill
  num_classes, image_shape = int(np.max(y_train)) + 1, tuple(x_train.shape[1:])
  net = _network(config, num_classes, image_shape)
  feat = models.feature_dim(net, image_shape)
  step_cfg = step.StepConfig.from_config(config, d.ipc * num_classes)
  opt = step.OuterOptim.from_config(config)
  trajectories = np.asarray(trajectories)
  final = trajectories[:, -1] if final_params is None else np.asarray(final_params)
  images, labels = distillation.initial_synset(
      net, x_train, y_train, final, ipc=d.ipc, num_classes=num_classes, init=d.init,
      seed=config.seed, labels=d.labels)
  state = step.init_state(images, labels, d.syn_lr_init, opt,
                          step.run_head(step_cfg, feat, config.seed), ema=bool(d.ema_decay))
  syn_classes = np.repeat(np.arange(num_classes), d.ipc)
  metrics = []
  state = distillation.run_distillation(
      step.make_distill_step(net, step_cfg, opt, syn_classes, feat), state,
      jnp.asarray(trajectories), iterations=d.iterations, seed=config.seed,
      schedule=distillation.schedule(d), ckpt=None, checkpoint_every=d.checkpoint_every,
      log_every=d.log_every, log=metrics.append)
  ema = np.asarray(state.ema_images) if isinstance(state, step.EMASynState) else None
  return SyntheticSet(np.asarray(state.syn_images), np.asarray(state.syn_labels),
                      float(state.syn_lr), metrics, ema)


def evaluate_set(config, syn: SyntheticSet, x_test, y_test, arch: str | None = None) -> dict:
  """Trains config.eval.num_eval fresh networks (`arch`, default the config's) on the set and
  tests them on (x_test (M,H,W,C), y_test (M,)): {'mean', 'std', 'runs'} in percent."""
  num_classes = syn.labels.shape[1]
  net = _network(config, num_classes, tuple(syn.images.shape[1:]), arch)
  seeds = [10_000 + 100 * config.seed + i for i in range(config.eval.num_eval)]
  runs = evaluate.evaluate_synset(
      net, syn.images, results.label_distribution(config, syn.labels), syn.lr, x_test,
      y_test, seeds=seeds, cfg=evaluate.EvalConfig.from_config(config))
  return evaluate.summarize(runs)
