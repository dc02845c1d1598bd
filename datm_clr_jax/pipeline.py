"""The run: data -> experts -> distillation -> evaluation -> results, in one workdir.

Workdir layout:
  config.json       the resolved config
  cache/            decoded data and the fitted ZCA (reused across runs)
  experts/          expert trajectories (orbax), unless config.experts.dir points elsewhere
  distill/          distillation checkpoints (orbax), resumed automatically
  metrics.jsonl     one JSON object per logged step (phase: experts | distill | evaluate)
  curves.png        the curves of metrics.jsonl (losses, syn_lr, experts' accuracy), redrawn
                    after the experts, at distillation checkpoints (at most every 5 minutes)
                    and at the end
  syn_images.png    the distilled images in pixel space, one row per class
  syn_set.npz       syn_images (whitened and pixel space), syn_labels, syn_lr
  results.json      accuracies of the distilled set and the random-real baseline
  export/           (--mode=export) syn_set.npz with the normalisation transform, the image
                    grid, and torch/{images,labels,lr}_best.pt in the reference's format
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from datm_clr_jax import (augment, checkpointing, data, distill, distributed, evaluate,
                          experts, losses, metric_writers, sharding, torch_io, visualize)
from datm_clr_jax.models import ARCHS, CONV_IMPLS, NORMS, make_network

MODES = ("all", "experts", "distill", "evaluate", "export")
# A figure takes most of a second; a GPU run checkpoints often (CIFAR-10 IPC 1 on an H200: 100
# iterations of 161 ms, launch/results/benchmark_gpu.md), so a redraw at every checkpoint
# would cost it several percent. Checkpoints redraw at most this often (seconds).
CURVES_EVERY_S = 300


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


def _choice(value, allowed, field):
  if value not in allowed:
    raise ConfigError(f"config.{field}={value!r} is not one of {list(allowed)}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks values and combinations before anything expensive runs."""
  d, c = config.distill, config.clr
  _choice(config.model.norm, NORMS, "model.norm")
  _choice(config.model.conv_impl, CONV_IMPLS, "model.conv_impl")
  for arch in config.eval.archs:
    if "," in arch:  # The command line turns a comma-separated string into a one-item tuple.
      raise ConfigError(f"config.eval.archs={arch!r}: give several architectures as a tuple, "
                        "e.g. --config.eval.archs=\"('resnet18','vgg11')\"")
    _choice(arch, ARCHS, "eval.archs")
  _choice(config.dsa.mode, augment.MODES, "dsa.mode")
  _choice(config.eval.seed_loop, evaluate.SEED_LOOPS, "eval.seed_loop")
  _choice(config.experts.loop, sharding.NETWORK_LOOPS, "experts.loop")
  _choice(d.segment_loop, sharding.NETWORK_LOOPS, "distill.segment_loop")
  _choice(c.view_mode, augment.MODES, "clr.view_mode")
  _choice(c.strategy, ("fusion", "update", "none"), "clr.strategy")
  _choice(c.loss, losses.CONTRASTIVE_KINDS, "clr.loss")
  _choice(c.head, distill.HEADS, "clr.head")
  _choice(c.views, distill.VIEWS, "clr.views")
  _choice(d.init, ("samples_predicted_correctly", "real"), "distill.init")
  _choice(d.select, ("final", "val"), "distill.select")
  incompatible = [
      (config.experts.import_dir and config.experts.optimizer != "sgd",
       "experts.import_dir imports trained buffers; experts.optimizer applies only to "
       "training: leave experts.optimizer='sgd'"),
      (d.select == "val" and config.eval.synset,
       "distill.select='val' selects among this workdir's iterations; eval.synset evaluates "
       "an outside set: use one of them"),
      (c.head == "learned" and c.strategy == "none",
       "clr.head='learned' has nothing to learn with clr.strategy='none'"),
      (not c.through_student and c.strategy != "fusion",
       "clr.through_student=False stops the contrastive gradient at theta_n, which only "
       "Contrastive Fusion has: use clr.strategy='fusion'"),
      (d.remat_convs and not d.remat,
       "distill.remat_convs chooses what distill.remat keeps: it needs distill.remat=True"),
  ]
  missing = metric_writers.missing_dependency(config.logging)
  if missing:
    raise ConfigError(missing)
  for bad, message in incompatible:
    if bad:
      raise ConfigError(f"incompatible config: {message}")
  if d.select == "val" and not (d.val_per_class > 0 and d.select_every > 0
                                and d.select_epochs > 0):
    raise ConfigError("distill.select='val' needs positive distill.val_per_class, "
                      "distill.select_every and distill.select_epochs")
  try:
    augment.parse_strategy(config.dsa.strategy)
  except ValueError as e:
    raise ConfigError(f"config.dsa.strategy: {e}") from None
  if config.model.norm == "batch":
    raise ConfigError("config.model.norm='batch' has running statistics, which trajectory "
                      "matching's flat parameters cannot carry; use 'instance' or 'none'")
  positive = {"distill.ipc": d.ipc, "distill.num_inner_steps": d.num_inner_steps,
              "distill.expert_epochs": d.expert_epochs, "experts.epochs": config.experts.epochs,
              "experts.num_experts": config.experts.num_experts,
              "experts.parallel": config.experts.parallel, "eval.num_eval": config.eval.num_eval,
              "eval.epochs": config.eval.epochs, "distill.syn_lr_init": d.syn_lr_init,
              "clr.temperature": c.temperature, "distill.log_every": d.log_every,
              "distill.checkpoint_every": d.checkpoint_every, "distill.scan_unroll": d.scan_unroll,
              "distill.num_segments": d.num_segments}
  for field, v in positive.items():
    if not v > 0:
      raise ConfigError(f"config.{field} must be positive, got {v}")
  if not config.eval.progress_every >= 0:
    raise ConfigError(f"config.eval.progress_every must be >= 0 (0: no progress lines), got "
                      f"{config.eval.progress_every}")
  if not 0 <= d.min_start_epoch < d.max_start_epoch:
    raise ConfigError(f"need 0 <= distill.min_start_epoch ({d.min_start_epoch}) < "
                      f"distill.max_start_epoch ({d.max_start_epoch})")
  if d.sequential and not d.min_start_epoch < d.current_max_start_epoch <= d.max_start_epoch:
    raise ConfigError("distill.current_max_start_epoch must lie in (min_start_epoch, "
                      "max_start_epoch] when distill.sequential is on")
  _choice(config.experts.optimizer, experts.OPTIMIZERS, "experts.optimizer")
  ex = config.experts
  if not 0 <= ex.save_epochs <= ex.epochs:
    raise ConfigError(f"config.experts.save_epochs={ex.save_epochs} must lie in [0, "
                      f"experts.epochs={ex.epochs}] (0 stores every epoch)")
  stored = ex.save_epochs or ex.epochs
  if d.max_start_epoch + d.expert_epochs > stored + 1:
    raise ConfigError(
        f"distill.max_start_epoch ({d.max_start_epoch}) + distill.expert_epochs "
        f"({d.expert_epochs}) reads snapshot {d.max_start_epoch - 1 + d.expert_epochs}, but "
        f"experts.epochs={ex.epochs} (save_epochs={ex.save_epochs}) stores snapshots "
        f"0..{stored}")
  if d.batch_syn < 0:
    raise ConfigError(f"config.distill.batch_syn must be >= 0, got {d.batch_syn}")
  if not 0 <= d.student_momentum < 1:
    raise ConfigError(f"config.distill.student_momentum must lie in [0, 1), got "
                      f"{d.student_momentum}")


def preflight(config: ml_collections.ConfigDict, workdir, mode: str) -> None:
  """Checks everything a run of `mode` needs that can be checked without data or training:
  every field (validate_config), the data source's path, eval.synset, experts.import_dir and
  experts.dir, and that an evaluation has something to evaluate. Raises ConfigError,
  data.DataError or checkpointing.CheckpointError with a message that says what to do."""
  _choice(mode, MODES, "mode (--mode)")
  validate_config(config)
  data.check_source(config.data.source)
  if distributed.index() > 0:
    return  # the workdir is process 0's: the others read and write none of it
  workdir, ex = Path(workdir), config.experts
  synset = config.eval.synset
  if synset and mode in ("all", "evaluate") and not Path(synset).exists():
    raise ConfigError(f"config.eval.synset={synset}: no such file or folder; give an exported "
                      "syn_set.npz or a folder of the reference's images_best.pt/labels_best.pt")
  if ex.import_dir and mode in ("all", "experts"):
    if not Path(ex.import_dir).is_dir():
      raise ConfigError(f"config.experts.import_dir={ex.import_dir}: no such folder")
    if not any(Path(ex.import_dir).glob("replay_buffer_*.pt")):
      raise ConfigError(f"config.experts.import_dir={ex.import_dir} holds no "
                        "replay_buffer_<k>.pt files (the reference's buffers)")
  experts_dir = Path(ex.dir) if ex.dir else workdir / "experts"
  if experts_dir.exists() and not experts_dir.is_dir():
    raise ConfigError(f"config.experts.dir={experts_dir} is a file, not a folder")
  needs_experts = mode == "distill" or (mode == "evaluate" and config.distill.select == "val"
                                        and not synset)
  if needs_experts and not experts.finished_experts(experts_dir):
    raise checkpointing.CheckpointError(
        f"no expert trajectories in {experts_dir}; run --mode=experts (or --mode=all) first, "
        "or point config.experts.dir at trained experts")
  if mode in ("evaluate", "export") and not synset and not (workdir / "distill").is_dir():
    raise checkpointing.CheckpointError(
        f"no distilled set in {workdir / 'distill'}; run --mode=distill first, or evaluate an "
        "outside set with --config.eval.synset")


def resolve_batch_syn(config, num_syn: int) -> int:
  b = config.distill.batch_syn or num_syn
  if b > num_syn or num_syn % b:
    raise ConfigError(f"config.distill.batch_syn={b} must divide the {num_syn} synthetic images")
  return b


class MetricsLog:
  """Appends JSON records to metrics.jsonl, and their scalars to each writer (TensorBoard,
  wandb: metric_writers)."""

  def __init__(self, path: Path, writers=()):
    self.path = path
    self.writers = list(writers)

  def __call__(self, record: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    got = metric_writers.scalars(record) if self.writers else None
    for w in self.writers if got else ():
      w.write(*got)

  def close(self) -> None:
    for w in self.writers:
      w.close()
    self.writers = []

  def records(self) -> list[dict]:
    return checkpointing.read_jsonl(self.path)

  def drop_after(self, phase: str, step: int) -> None:
    """Removes records of `phase` past `step` (written after the checkpoint a run resumes)."""
    if not self.path.exists():
      return
    keep = [r for r in self.records()
            if not (r.get("phase") == phase and r.get("step", 0) > step)]
    checkpointing.write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))


class Run:
  """One workdir's run; methods are the phases. Cheap to construct (data loads lazily)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    validate_config(config)
    self.config = config
    self.workdir = Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    (self.workdir / "config.json").write_text(config.to_json(indent=1))
    if distributed.index() == 0:
      self.log = MetricsLog(self.workdir / "metrics.jsonl", metric_writers.make_writers(
          config.logging, self.workdir, config.to_dict()))
    else:  # the other processes of a distributed run keep their own records
      self.log = MetricsLog(self.workdir / f"metrics.process{distributed.index()}.jsonl")
    self.cache_dir = config.data.cache_dir or str(self.workdir / "cache")
    self.experts_dir = Path(config.experts.dir or self.workdir / "experts")
    self.mesh = sharding.device_mesh(config.shard)
    self._prepared = None
    self._curves_drawn_at = -float("inf")

  @property
  def prepared(self) -> data.Prepared:
    if self._prepared is None:
      cfg = self.config.data
      t0 = time.time()
      ds = data.load_dataset(cfg.source, image_size=cfg.image_size,
                             data_dir=cfg.data_dir or None, cache_dir=self.cache_dir,
                             seed=self.config.seed)
      self._prepared = data.prepare(ds, zca=cfg.zca, zca_eps=cfg.zca_eps,
                                    cache_dir=self.cache_dir)
      if self.config.distill.select == "val":
        self._hold_out_validation()
      logging.info("data %s: train %s, test %s, %d classes, ZCA %s (%.1fs)", cfg.source,
                   ds.x_train.shape, ds.x_test.shape, ds.num_classes, cfg.zca, time.time() - t0)
      if self.config.distill.ipc > np.bincount(ds.y_train).min():
        raise ConfigError(f"config.distill.ipc={self.config.distill.ipc} exceeds the "
                          f"{np.bincount(ds.y_train).min()} images of the smallest class")
    return self._prepared

  def _hold_out_validation(self) -> None:
    """Moves val_per_class training images per class into a validation split.

    The split depends only on the data (seed 0), so every distillation seed, the experts and
    the random-real baseline see the same reduced training set; the test set is untouched.
    """
    p, n = self._prepared, self.config.distill.val_per_class
    y = p.dataset.y_train
    rng = np.random.default_rng(0)
    counts = np.bincount(y)
    if n >= counts.min():
      raise ConfigError(f"config.distill.val_per_class={n} leaves no training images in the "
                        f"smallest class ({counts.min()} images)")
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n]
                          for c in range(len(counts))])
    keep = np.setdiff1d(np.arange(len(y)), val)
    self.x_val, self.y_val = p.x_train[val], y[val]
    self._prepared = dataclasses.replace(
        p, x_train=p.x_train[keep],
        dataset=dataclasses.replace(p.dataset, x_train=p.dataset.x_train[keep], y_train=y[keep]))

  @property
  def num_classes(self) -> int:
    return self.prepared.dataset.num_classes

  @property
  def image_shape(self):
    return self.prepared.dataset.image_shape

  def network(self, arch: str | None = None):
    """The distillation network, or evaluation network `arch` (same ConvNet settings)."""
    m = self.config.model
    arch = arch or m.arch
    try:
      net = make_network(arch, self.num_classes, self.image_shape, width=m.width,
                         depth=m.depth, norm=m.norm, conv_impl=m.conv_impl)
      ok = distill.feature_dim(net, self.image_shape) > 0
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ConfigError(f"architecture {arch!r} does not fit {self.image_shape} images (its "
                        "pooling stages shrink them to nothing); use larger data.image_size")
    return net

  # --------------------------------------------------------------------------- experts
  def experts(self) -> None:
    c, p = self.config.experts, self.prepared
    t0 = time.time()
    if c.import_dir:
      n = experts.import_buffers(self.network(), c.import_dir, self.experts_dir,
                                 image_shape=self.image_shape)
      logging.info("experts: %d imported from %s in %.1fs", n, c.import_dir, time.time() - t0)
      return
    experts.train_experts(
        self.network(), p.x_train, p.dataset.y_train, p.x_test, p.dataset.y_test,
        root=self.experts_dir, num_experts=c.num_experts, epochs=c.epochs, lr=c.lr,
        batch_size=c.batch_size, parallel=c.parallel, strategy=self.config.dsa.strategy,
        dsa_mode=self.config.dsa.mode, seed=c.seed, image_shape=self.image_shape,
        gsam=(experts.GSAM(rho=c.gsam_rho, alpha=c.gsam_alpha, adaptive=c.gsam_adaptive)
              if c.optimizer == "gsam" else None), save_epochs=c.save_epochs, mesh=self.mesh,
        meta_extra=({"held_out_val_per_class": self.config.distill.val_per_class}
                    if self.config.distill.select == "val" else None), log=self.log,
        loop=c.loop, process_index=distributed.index(), process_count=distributed.count())
    distributed.barrier("experts trained")  # the next phase reads every process's experts
    logging.info("experts: done in %.1fs", time.time() - t0)
    self.save_curves()

  # --------------------------------------------------------------------------- distill
  def _step_setup(self):
    d, c = self.config.distill, self.config.clr
    net = self.network()
    num_syn = d.ipc * self.num_classes
    step_cfg = distill.StepConfig(
        num_inner_steps=d.num_inner_steps, expert_epochs=d.expert_epochs,
        min_start_epoch=d.min_start_epoch, batch_syn=resolve_batch_syn(self.config, num_syn),
        threshold=d.threshold, strategy=self.config.dsa.strategy, dsa_mode=self.config.dsa.mode,
        clr_strategy=c.strategy, alpha=c.alpha, beta=c.beta, lam=c.lam, contrastive=c.loss,
        temperature=c.temperature, view_mode=c.view_mode, head=c.head, views=c.views,
        through_student=c.through_student, student_momentum=d.student_momentum,
        proj_hidden=c.proj_hidden, proj_dim=c.proj_dim, learn_labels=d.learn_labels,
        remat=d.remat, remat_convs=d.remat_convs, unroll=d.scan_unroll,
        num_segments=d.num_segments, segment_loop=sharding.resolve_network_loop(
            d.segment_loop, sharding.num_devices(self.mesh), "distill.segment_loop"))
    opt = distill.OuterOptim(lr_img=d.lr_img, lr_lr=d.lr_lr, lr_y=d.lr_y, lr_head=c.lr_head,
                             momentum_img=d.momentum_img, momentum_lr=d.momentum_lr,
                             momentum_y=d.momentum_y, momentum_head=c.momentum_head)
    feat = distill.feature_dim(net, self.image_shape)
    return net, step_cfg, opt, feat

  def _state_template(self, net, step_cfg, opt, feat):
    n, h = self.config.distill.ipc * self.num_classes, None
    if step_cfg.head in ("learned", "fixed") and step_cfg.contrast_on:
      h = distill.init_head_params(distill.make_head(step_cfg, feat),
                                   jax.random.PRNGKey(self.config.seed), feat)
    return distill.init_state(np.zeros((n, *self.image_shape), np.float32),
                              np.zeros((n, self.num_classes), np.float32),
                              self.config.distill.syn_lr_init, opt, h)

  def _ckpts(self):
    return checkpointing.StepCheckpoints(self.workdir / "distill", keep=2)

  def load_state(self) -> distill.SynState | None:
    """The newest distillation checkpoint, or None."""
    net, step_cfg, opt, feat = self._step_setup()
    ckpt = self._ckpts()
    got = ckpt.restore_latest(self._state_template(net, step_cfg, opt, feat))
    ckpt.close()
    if got is None:
      return None
    distill.check_finite_state(got[1])
    return got[1]

  def distill(self) -> distill.SynState:
    d = self.config.distill
    net, step_cfg, opt, feat = self._step_setup()
    trajectories, final_params = experts.load_trajectories(
        self.experts_dir, num_params=net.num_params, num_experts=d.num_experts or None,
        min_length=d.max_start_epoch + d.expert_epochs, return_final=True)
    ckpt = self._ckpts()
    template = self._state_template(net, step_cfg, opt, feat)
    got = ckpt.restore_latest(template)
    if got is not None:
      step, state = got
      distill.check_finite_state(state)
      logging.info("distill: resuming from iteration %d", step)
      self.log.drop_after("distill", step)
    else:
      p = self.prepared
      images, labels = distill.initial_synset(
          net, p.x_train, p.dataset.y_train, final_params, ipc=d.ipc,
          num_classes=self.num_classes, init=d.init, seed=self.config.seed)
      state = template.replace(syn_images=images, syn_labels=labels)
      self.log.drop_after("distill", 0)
    syn_classes = np.repeat(np.arange(self.num_classes), d.ipc)
    step = distill.make_distill_step(net, step_cfg, opt, syn_classes, feat, self.mesh)
    diagnose = (distill.make_diagnostics(net, step_cfg, syn_classes, feat, self.mesh)
                if d.diagnostics else None)
    state = sharding.shard_leading(state, self.mesh)
    trajectories = sharding.replicate(jnp.asarray(trajectories), self.mesh)
    schedule = lambda it: distill.start_epoch_upper(
        it, max_start_epoch=d.max_start_epoch, sequential=d.sequential,
        current_max_start_epoch=d.current_max_start_epoch, expansion_end=d.expansion_end)
    logging.info("distill: %d synthetic images, N=%d, %d experts, clr=%s (alpha %g), "
                 "%d iterations%s", len(syn_classes), d.num_inner_steps, len(trajectories),
                 step_cfg.clr_strategy if step_cfg.contrast_on else "off", step_cfg.alpha,
                 d.iterations, "" if d.num_segments == 1 else
                 f", {d.num_segments} trajectory segments per iteration "
                 f"({step_cfg.segment_loop})")
    t0 = time.time()
    select = self._make_selector(net) if d.select == "val" else None
    try:
      state = distill.run_distillation(
          step, state, trajectories, iterations=d.iterations, seed=self.config.seed,
          schedule=schedule, ckpt=ckpt, checkpoint_every=d.checkpoint_every,
          log_every=d.log_every, log=self.log, every=d.select_every, on_every=select,
          on_save=lambda done: self.save_curves(at_most_every=CURVES_EVERY_S),
          diagnose=diagnose)
    finally:
      ckpt.close()
    logging.info("distill: done in %.1fs, syn_lr %.5f", time.time() - t0, float(state.syn_lr))
    self.save_curves()  # again: the last selection comes after the last checkpoint
    self.save_synset(state)
    return state

  def save_curves(self, at_most_every: float = 0.0) -> None:
    """Redraws curves.png from metrics.jsonl, unless it was drawn under `at_most_every` s ago."""
    if distributed.index() > 0:
      return  # process 0 draws the run's curves
    if time.time() - self._curves_drawn_at < at_most_every:
      return
    try:
      visualize.save_curves({"": self.log.records()}, self.workdir / "curves.png")
    except Exception as e:  # noqa: BLE001 -- a figure must never cost a run its work
      logging.warning("curves.png not drawn: %s", e)
    self._curves_drawn_at = time.time()

  # --------------------------------------------------------------------------- selection
  @property
  def best_dir(self) -> Path:
    return self.workdir / "best"

  def _make_selector(self, net):
    """on_every callback: a short evaluation on the validation split; keeps the best state."""
    d, e = self.config.distill, self.config.eval
    cfg = evaluate.EvalConfig(epochs=d.select_epochs, batch_size=e.batch_size,
                              momentum=e.momentum, weight_decay=e.weight_decay,
                              strategy=self.config.dsa.strategy, dsa_mode=self.config.dsa.mode,
                              seed_loop=e.seed_loop)
    seeds = [20_000 + 100 * self.config.seed + i for i in range(2)]

    def select(done, state):
      self.prepared  # the validation split exists once the data is loaded
      runs = evaluate.evaluate_synset(
          net, state.syn_images, jax.nn.softmax(state.syn_labels, axis=-1), float(state.syn_lr),
          self.x_val, self.y_val, seeds=seeds, cfg=cfg, mesh=self.mesh)
      acc = float(np.mean(runs))
      best_file = self.best_dir / "best.json"
      best = json.loads(best_file.read_text()) if best_file.exists() else None
      improved = best is None or acc > best["val_acc"]
      self.log({"phase": "select", "step": done, "val_acc": acc, "improved": improved})
      logging.info("select: iteration %d, validation accuracy %.2f%s", done, acc,
                   " (best so far)" if improved else "")
      if improved:
        checkpointing.save_tree(self.best_dir / "state", state)
        checkpointing.write_json(best_file, {"iteration": done, "val_acc": acc})

    return select

  def load_best(self) -> tuple[distill.SynState, dict]:
    best_file = self.best_dir / "best.json"
    if not best_file.exists():
      raise checkpointing.CheckpointError(
          f"distill.select='val' but {self.best_dir} holds no selected state; run "
          "--mode=distill with this config first")
    net, step_cfg, opt, feat = self._step_setup()
    state = checkpointing.restore_tree(self.best_dir / "state",
                                       self._state_template(net, step_cfg, opt, feat))
    return state, json.loads(best_file.read_text())

  def save_synset(self, state: distill.SynState) -> None:
    p = self.prepared
    pixels = p.to_pixels(np.asarray(state.syn_images))
    np.savez(self.workdir / "syn_set.npz", syn_images=np.asarray(state.syn_images),
             syn_images_pixels=pixels, syn_labels=np.asarray(state.syn_labels),
             syn_lr=np.asarray(state.syn_lr), class_names=np.asarray(p.dataset.class_names))
    visualize.save_grid(pixels, self.config.distill.ipc, p.dataset.class_names,
                        self.workdir / "syn_images.png")

  def require_state(self) -> distill.SynState:
    state = self.load_state()
    if state is None:
      raise checkpointing.CheckpointError(
          f"no distilled set in {self.workdir / 'distill'}; run --mode=distill first")
    return state

  # --------------------------------------------------------------------------- export
  def export(self) -> Path:
    """Writes export/: syn_set.npz (+ normalisation), the image grid, the reference format."""
    state, p = self.require_state(), self.prepared
    out = self.workdir / "export"
    out.mkdir(exist_ok=True)
    images, labels = np.asarray(state.syn_images), np.asarray(state.syn_labels)
    norm = ({"normalisation": "zca", "zca_mean": p.zca.mean, "zca_whiten": p.zca.whiten,
             "zca_unwhiten": p.zca.unwhiten} if p.zca is not None else
            {"normalisation": "mean_std", "norm_mean": p.mean, "norm_std": p.std})
    np.savez(out / "syn_set.npz", syn_images=images, syn_images_pixels=p.to_pixels(images),
             syn_labels=labels, syn_lr=np.asarray(state.syn_lr),
             iteration=np.asarray(state.iteration), ipc=self.config.distill.ipc,
             class_names=np.asarray(p.dataset.class_names), source=self.config.data.source,
             **norm)
    visualize.save_grid(p.to_pixels(images), self.config.distill.ipc, p.dataset.class_names,
                        out / "syn_images.png")
    try:
      torch_io.save_reference_synset(out / "torch", images, labels, float(state.syn_lr))
    except torch_io.TorchIOError as e:
      logging.warning("export: no PyTorch files (%s)", e)
    logging.info("export: iteration %d written to %s", int(state.iteration), out)
    return out

  def external_synset(self, path: str) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """(syn_images (n,H,W,C), label logits (n,classes), lr, provenance) from eval.synset."""
    src = Path(path)
    if src.is_dir():
      got = torch_io.load_reference_synset(src, num_classes=self.num_classes)
      info = {"synset": str(src), "format": "pytorch reference", "labels": got["label_format"]}
      images, labels, lr = got["syn_images"], got["syn_labels"], got["syn_lr"]
    elif src.suffix == ".npz" and src.exists():
      with np.load(src) as f:
        images, labels, lr = f["syn_images"], f["syn_labels"], float(f["syn_lr"])
        norm = str(f["normalisation"]) if "normalisation" in f else "unknown"
      want = "zca" if self.config.data.zca else "mean_std"
      if norm not in (want, "unknown"):
        raise ConfigError(f"config.eval.synset {src} holds {norm}-normalised images, but "
                          f"config.data.zca={self.config.data.zca} normalises with {want}")
      info = {"synset": str(src), "format": "npz", "labels": "logits"}
    else:
      raise ConfigError(f"config.eval.synset={path!r}: expected an exported .npz or a folder "
                        "with images_best.pt, labels_best.pt, lr_best.pt")
    if images.shape[1:] != tuple(self.image_shape):
      raise ConfigError(f"config.eval.synset images are {images.shape[1:]}, but "
                        f"{self.config.data.source} gives {tuple(self.image_shape)}: another "
                        "dataset or data.image_size")
    if labels.shape != (images.shape[0], self.num_classes):
      raise ConfigError(f"config.eval.synset labels are {labels.shape}; expected "
                        f"({images.shape[0]}, {self.num_classes}) for this dataset")
    if not (np.isfinite(images).all() and np.isfinite(labels).all() and lr > 0):
      raise ConfigError(f"config.eval.synset {src} holds NaN/inf or a non-positive lr ({lr})")
    return images, labels, lr, info

  # --------------------------------------------------------------------------- evaluate
  def _set_to_evaluate(self, state):
    """(syn_images, label logits, syn_lr, iteration, selection, external provenance)."""
    e, d = self.config.eval, self.config.distill
    if e.synset:
      syn_images, syn_labels, syn_lr, external = self.external_synset(e.synset)
      return syn_images, syn_labels, syn_lr, None, "external set", external
    selection = "final iteration (no test-set selection)"
    loaded_here = state is None or d.select == "val"
    if d.select == "val":
      state, best = self.load_best()
      selection = (f"best validation accuracy ({best['val_acc']:.2f}%, {d.val_per_class} "
                   f"training images per class held out), iteration {best['iteration']}")
    elif state is None:
      state = self.require_state()
    if loaded_here:  # distill() already wrote the files of the state it returned
      self.save_synset(state)
    return (np.asarray(state.syn_images), np.asarray(state.syn_labels), float(state.syn_lr),
            int(state.iteration), selection, None)

  def _shared_set(self, state):
    """_set_to_evaluate on process 0, sent to the other processes of a distributed run."""
    if distributed.count() == 1:
      return self._set_to_evaluate(state)
    got = self._set_to_evaluate(state) if distributed.index() == 0 else None
    n = int(distributed.from_process_0(np.asarray(len(got[0]) if got else 0, np.int32)))
    arrays = ((np.asarray(got[0], np.float32), np.asarray(got[1], np.float32),
               np.asarray(got[2], np.float32), np.asarray(-1 if got[3] is None else got[3],
                                                          np.int32)) if got else
              (np.zeros((n, *self.image_shape), np.float32),
               np.zeros((n, self.num_classes), np.float32), np.zeros((), np.float32),
               np.zeros((), np.int32)))
    images, labels, lr, it = distributed.from_process_0(arrays)
    meta = got[4:] if got else ("", None)
    return images, labels, float(lr), (None if int(it) < 0 else int(it)), *meta

  def evaluate(self, state: distill.SynState | None = None) -> dict:
    e, d = self.config.eval, self.config.distill
    syn_images, syn_labels, syn_lr, iteration, selection, external = self._shared_set(state)
    p = self.prepared
    cfg = evaluate.EvalConfig(epochs=e.epochs, batch_size=e.batch_size, momentum=e.momentum,
                              weight_decay=e.weight_decay, strategy=self.config.dsa.strategy,
                              dsa_mode=self.config.dsa.mode, seed_loop=e.seed_loop,
                              progress_every=e.progress_every)
    seeds = [10_000 + 100 * self.config.seed + i for i in range(e.num_eval)]
    probs = jax.nn.softmax(syn_labels, axis=-1)
    method = "datm_clr" if self._step_setup()[1].contrast_on else "datm"
    results = {"dataset": self.config.data.source, "ipc": len(syn_images) // self.num_classes,
               "method": "external" if external else method,
               "distilled": {}, "syn_lr": syn_lr, "eval_seeds": seeds,
               "protocol": {"eval_epochs": e.epochs, "num_inner_steps": d.num_inner_steps,
                            "distill_iterations": iteration,
                            "distill_iterations_configured": d.iterations,
                            "num_experts": self.config.experts.num_experts,
                            "expert_epochs_trained": self.config.experts.epochs,
                            "model": self.config.model.to_dict(),
                            "clr": self.config.clr.to_dict(), "config_name": self.config.name,
                            "num_classes": self.num_classes,
                            "selection": selection}}
    if d.num_segments != 1:
      # Only when not the reference's 1, so results written before segments existed still
      # count as the same protocol and merge.
      results["protocol"]["num_segments"] = d.num_segments
    if d.student_momentum:  # likewise: only when not DATM's plain-SGD student
      results["protocol"]["student_momentum"] = d.student_momentum
    if external:
      results["external"] = external
    if e.random_real:
      results["random_real"] = {}
      subsets = [evaluate.random_real(p.x_train, p.dataset.y_train, ipc=results["ipc"],
                                      num_classes=self.num_classes, seed=s) for s in seeds]
      rr_images = np.stack([s[0] for s in subsets])
      rr_labels = np.stack([s[1] for s in subsets])
    # An outside set's numbers must not overwrite this workdir's own results.
    path = self.workdir / ("results_external.json" if external else "results.json")
    # The file is rewritten after every (network, set), so a kill loses one evaluation at
    # most, and with eval.resume a second call keeps what the file holds for this same set.
    earlier = merge_archs(path, {**results, "distilled": {}, "random_real": {}})
    for arch in e.archs:
      net = self.network(arch)
      sets = [("distilled", syn_images, probs, syn_lr)]
      if e.random_real:
        sets.append(("random_real", rr_images, rr_labels, e.random_real_lr))
      for name, images, labels, lr in sets:
        label = f"evaluate {name.replace('_', ' ')} ({arch})"
        kept = earlier[name].get(arch) if e.resume else None
        # Process 0's results.json decides what is kept: every process must train the same.
        if distributed.from_process_0(np.asarray(kept is not None, np.int32)):
          if kept is not None:
            results[name][arch] = kept
            logging.info("%s: %.2f +- %.2f, kept from %s (eval.resume)", label, kept["mean"],
                         kept["std"], path)
          continue
        t0 = time.time()
        # With several processes each trains every P-th seed; all of them get every number.
        mine = distributed.my_share(list(range(len(seeds))))
        if np.ndim(images) == 5:  # one set per seed (random real)
          images, labels = images[mine], labels[mine]
        runs = evaluate.evaluate_synset(
            net, images, labels, lr, p.x_test, p.dataset.y_test, seeds=[seeds[i] for i in mine],
            cfg=cfg, mesh=self.mesh, label=label) if mine else []
        runs = distributed.gather_shares(runs, len(seeds))
        results[name][arch] = evaluate.summarize(runs)
        self.log({"phase": "evaluate", "set": name, "arch": arch, "runs": runs,
                  "seconds": round(time.time() - t0, 2)})
        logging.info("%s: %.2f +- %.2f (%.1fs)", label, np.mean(runs), np.std(runs),
                     time.time() - t0)
        if distributed.index() == 0:
          checkpointing.write_json(path, merge_archs(path, results))
    results = merge_archs(path, results)
    if distributed.index() == 0:
      checkpointing.write_json(path, results)
    return results


def merge_archs(path: Path, results: dict) -> dict:
  """`results` plus the other architectures' numbers of an earlier results.json of the same set.

  Cross-architecture evaluation can then run as a second command (`--config.eval.archs=...`)
  without losing the ConvNet numbers. 'Same set' means the same synthetic set (syn_lr, iteration,
  selection) evaluated with the same seeds and protocol; anything else is replaced, not mixed.
  """
  if not path.exists():
    return results
  try:
    old = json.loads(path.read_text())
  except json.JSONDecodeError:
    logging.warning("%s is not valid JSON; replacing it", path)
    return results
  keys = ("method", "syn_lr", "eval_seeds", "ipc", "protocol", "external")
  # Compared as JSON, where the tuples of the new results are lists like the file's.
  same = json.loads(json.dumps([results.get(k) for k in keys])) == [old.get(k) for k in keys]
  if not same:
    logging.info("%s held results of another set or protocol; replacing them", path)
    return results
  for block in ("distilled", "random_real"):
    merged = {**old.get(block, {}), **results.get(block, {})}
    if merged:
      results[block] = merged
  return results


def format_table(results: dict) -> str:
  """A short text table of results.json."""
  rows = [("set", "arch", "accuracy % (mean +- std)", "runs")]
  for key, label in (("distilled", f"distilled ({results['method']})"),
                     ("random_real", "random real")):
    for arch, r in results.get(key, {}).items():
      rows.append((label, arch, f"{r['mean']:.2f} +- {r['std']:.2f}",
                   " ".join(f"{x:.1f}" for x in r["runs"])))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return (f"{results['dataset']}, IPC {results['ipc']}, syn_lr {results['syn_lr']:.5f}\n"
          + "\n".join(lines))


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "all") -> dict | None:
  """Runs the phases that `mode` names; returns results for 'all' and 'evaluate'."""
  preflight(config, workdir, mode)
  t0 = time.time()
  r = Run(config, workdir)
  state = None
  try:
    if mode in ("all", "experts"):
      r.experts()
    if mode in ("all", "distill"):
      state = r.distill()
    results = None
    if mode in ("all", "evaluate"):
      results = r.evaluate(state)
      print(format_table(results), flush=True)
    if mode == "export":
      print(f"exported to {r.export()}", flush=True)
  finally:
    r.log.close()
  logging.info("run finished in %.1fs; outputs in %s", time.time() - t0, r.workdir)
  return results
