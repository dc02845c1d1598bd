"""The run: data -> experts -> distillation -> evaluation, in one workdir.

Workdir layout:
  config.json       the resolved config
  cache/            decoded data and the fitted ZCA (reused across runs)
  experts/          expert trajectories (orbax), unless config.experts.dir points elsewhere
  distill/          distillation checkpoints (orbax), resumed automatically
  best/             (distill.select='val') the state chosen on the validation split
  metrics.jsonl     one JSON object per logged step (phase: experts | distill | select | evaluate)
  curves.png        the curves of metrics.jsonl, redrawn after the experts, at distillation
                    checkpoints (at most every CURVES_EVERY_S seconds) and at the end
  syn_images.png    the distilled images in pixel space, one row per class
  syn_set.npz       syn_images (whitened and pixel space), syn_labels, syn_lr
  results.json      accuracies of the distilled set and the random-real baseline
  export/           (--mode=export) the set with its normalisation and in the reference's format
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from datm_clr_jax import (checkpointing, checks, data, distillation, distributed, evaluate,
                          experts, locking, metric_writers, models, outside, preemption,
                          results as results_lib, scores, selection, sharding, step,
                          visualize)
from datm_clr_jax.errors import CheckpointError, ConfigError
from datm_clr_jax.models import feature_dim

# A figure takes most of a second and a GPU run checkpoints often, so checkpoints redraw the
# curves at most this often (seconds).
CURVES_EVERY_S = 300


class Run:
  """One workdir's run; methods are the phases. Cheap to construct (data loads lazily)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    checks.validate_config(config)
    self.config = config
    self.workdir = Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    if distributed.index() == 0:  # the workdir is process 0's
      checkpointing.write_text(self.workdir / "config.json", config.to_json(indent=1))
    if distributed.index() == 0:
      self.log = metric_writers.MetricsLog(
          self.workdir / "metrics.jsonl",
          metric_writers.make_writers(config.logging, self.workdir, config.to_dict()))
    else:  # the other processes of a distributed run keep their own records
      self.log = metric_writers.MetricsLog(
          self.workdir / f"metrics.process{distributed.index()}.jsonl")
    self.cache_dir = config.data.cache_dir or str(self.workdir / "cache")
    self.experts_dir = Path(config.experts.dir or self.workdir / "experts")
    self.best_dir = self.workdir / "best"
    self.mesh = sharding.device_mesh(config.shard)
    self._prepared = None
    self._ema_images = None  # FTD's moving average of the set being evaluated
    self._curves_drawn_at = -float("inf")

  # --------------------------------------------------------------------------- data, networks
  @property
  def prepared(self) -> data.Prepared:
    if self._prepared is None:
      cfg, d = self.config.data, self.config.distill
      t0 = time.time()
      ds = data.load_dataset(cfg.source, image_size=cfg.image_size,
                             data_dir=cfg.data_dir or None, cache_dir=self.cache_dir,
                             seed=self.config.seed)
      prepared = data.prepare(ds, zca=cfg.zca, zca_eps=cfg.zca_eps, cache_dir=self.cache_dir)
      if d.select == "val":
        prepared, self.x_val, self.y_val = selection.hold_out_validation(
            prepared, d.val_per_class)
      self._prepared = prepared
      logging.info("data %s: train %s, test %s, %d classes, ZCA %s (%.1fs)", cfg.source,
                   ds.x_train.shape, ds.x_test.shape, ds.num_classes, cfg.zca, time.time() - t0)
      smallest = np.bincount(ds.y_train).min()
      if d.ipc > smallest:
        raise ConfigError(f"config.distill.ipc={d.ipc} exceeds the {smallest} images of the "
                          "smallest class")
    return self._prepared

  @property
  def num_classes(self) -> int:
    return self.prepared.num_classes

  @property
  def image_shape(self):
    return self.prepared.image_shape

  def network(self, arch: str | None = None):
    """The distillation network, or evaluation network `arch` (same ConvNet settings)."""
    try:
      return models.from_config(self.config.model, self.num_classes, self.image_shape, arch)
    except ValueError as e:
      raise ConfigError(str(e)) from None

  # --------------------------------------------------------------------------- experts
  def experts(self) -> None:
    c, p = self.config.experts, self.prepared
    t0 = time.time()
    if c.import_dir:
      n = experts.import_buffers(self.network(), c.import_dir, self.experts_dir,
                                 image_shape=self.image_shape)
      logging.info("experts: %d imported from %s in %.1fs", n, c.import_dir, time.time() - t0)
      return
    d = self.config.distill
    experts.train_experts(
        self.network(), p.x_train, p.y_train, p.x_test, p.y_test,
        root=self.experts_dir, num_experts=c.num_experts, epochs=c.epochs, lr=c.lr,
        batch_size=c.batch_size, parallel=c.parallel, strategy=self.config.dsa.strategy,
        dsa_mode=self.config.dsa.mode, seed=c.seed, image_shape=self.image_shape,
        gsam=experts.GSAM.from_config(c), save_epochs=c.save_epochs, mesh=self.mesh,
        meta_extra=({"held_out_val_per_class": d.val_per_class} if d.select == "val"
                    else None), log=self.log,
        loop=c.loop, process_index=distributed.index(), process_count=distributed.count(),
        kind=experts.kind(self.config))
    distributed.barrier("experts trained")  # the next phase reads every process's experts
    logging.info("experts: done in %.1fs", time.time() - t0)
    self.save_curves()

  # --------------------------------------------------------------------------- distill
  @functools.cached_property
  def step_parts(self):
    """(network, StepConfig, OuterOptim, feature width) of this run's distillation."""
    net = self.network()
    num_syn = self.config.distill.ipc * self.num_classes
    step_cfg = step.StepConfig.from_config(self.config, num_syn, sharding.num_devices(self.mesh))
    return net, step_cfg, step.OuterOptim.from_config(self.config), feature_dim(
        net, self.image_shape)

  def state_template(self) -> step.SynState:
    """A SynState of this run's shapes (and its fixed or learned head), to restore into."""
    _, step_cfg, opt, feat = self.step_parts
    n = self.config.distill.ipc * self.num_classes
    return step.init_state(np.zeros((n, *self.image_shape), np.float32),
                           np.zeros((n, self.num_classes), np.float32),
                           self.config.distill.syn_lr_init, opt,
                           step.run_head(step_cfg, feat, self.config.seed),
                           ema=bool(step_cfg.ema_decay))

  def load_state(self) -> step.SynState | None:
    """The newest distillation checkpoint, or None."""
    with checkpointing.StepCheckpoints(self.workdir / "distill", keep=2) as ckpt:
      got = ckpt.restore_latest(self.state_template())
    if got is None:
      return None
    distillation.check_finite_state(got[1])
    return got[1]

  def require_state(self) -> step.SynState:
    state = self.load_state()
    if state is None:
      raise CheckpointError(f"no distilled set in {self.workdir / 'distill'}; run "
                            "--mode=distill first")
    return state

  def _initial_state(self, net, final_params) -> step.SynState:
    d, p = self.config.distill, self.prepared
    images, labels = distillation.initial_synset(
        net, p.x_train, p.y_train, final_params, ipc=d.ipc,
        num_classes=self.num_classes, init=d.init, seed=self.config.seed, labels=d.labels)
    return step.with_images(self.state_template().replace(syn_labels=labels), images)

  def distill(self) -> step.SynState:
    d = self.config.distill
    net, step_cfg, opt, feat = self.step_parts
    trajectories, final_params = experts.load_trajectories(
        self.experts_dir, num_params=net.num_params, num_experts=d.num_experts or None,
        min_length=d.max_start_epoch + d.expert_epochs, return_final=True)
    # What made the checkpoints, for checks.check_same_run (preflight accepted this config).
    checkpointing.write_text(self.workdir / checks.DISTILL_CONFIG, self.config.to_json(indent=1))
    with checkpointing.StepCheckpoints(self.workdir / "distill", keep=2) as ckpt:
      state = self._resume_or_start(ckpt, net, final_params)
      return self._distill_from(state, ckpt, net, step_cfg, opt, feat, trajectories)

  def _resume_or_start(self, ckpt, net, final_params) -> step.SynState:
    """The newest checkpoint's state, or the initial set; metrics past it are dropped."""
    got = ckpt.restore_latest(self.state_template())
    if got is not None:
      distillation.check_finite_state(got[1])
      logging.info("distill: resuming from iteration %d", got[0])
    self.log.drop_after("distill", got[0] if got is not None else 0)
    return got[1] if got is not None else self._initial_state(net, final_params)

  def _distill_from(self, state, ckpt, net, step_cfg, opt, feat, trajectories):
    d = self.config.distill
    syn_classes = np.repeat(np.arange(self.num_classes), d.ipc)
    logging.info("distill: %d synthetic images, N=%d, %d experts, clr=%s (alpha %g), "
                 "%d iterations%s", len(syn_classes), d.num_inner_steps, len(trajectories),
                 step_cfg.clr_strategy if step_cfg.contrast_on else "off", step_cfg.alpha,
                 d.iterations, "" if d.num_segments == 1 else
                 f", {d.num_segments} trajectory segments per iteration "
                 f"({step_cfg.segment_loop})")
    t0 = time.time()
    state = distillation.run_distillation(
        step.make_distill_step(net, step_cfg, opt, syn_classes, feat, self.mesh),
        sharding.shard_leading(state, self.mesh),
        sharding.replicate(jnp.asarray(trajectories), self.mesh),
        iterations=d.iterations, seed=self.config.seed, schedule=distillation.schedule(d),
        ckpt=ckpt, checkpoint_every=d.checkpoint_every, log_every=d.log_every, log=self.log,
        every=d.select_every, on_every=self._selector(net) if d.select == "val" else None,
        on_save=lambda done: self.save_curves(at_most_every=CURVES_EVERY_S),
        diagnose=(step.make_diagnostics(net, step_cfg, syn_classes, feat, self.mesh)
                  if d.diagnostics else None))
    logging.info("distill: done in %.1fs, syn_lr %.5f", time.time() - t0, float(state.syn_lr))
    self.save_curves()  # again: the last selection comes after the last checkpoint
    results_lib.save_synset(self.workdir, self.prepared, state, d.ipc)
    return state

  def _selector(self, net):
    self.prepared  # the validation split exists once the data is loaded
    cfg = evaluate.EvalConfig.from_config(self.config, epochs=self.config.distill.select_epochs,
                                          progress=False)
    cfg = dataclasses.replace(cfg, keep="final")  # a candidate's score is its final epoch's
    return selection.make_selector(net, cfg, self.x_val, self.y_val, seed=self.config.seed,
                                   best_dir=self.best_dir, log=self.log, mesh=self.mesh)

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

  # --------------------------------------------------------------------------- evaluate
  def _set_to_evaluate(self, state):
    """(syn_images, label logits, syn_lr, iteration, selection, outside provenance)."""
    e, d = self.config.eval, self.config.distill
    if e.synset:
      images, labels, lr, info = outside.load_outside_set(
          e.synset, num_classes=self.num_classes, image_shape=self.image_shape,
          zca=self.config.data.zca, source=self.config.data.source)
      return images, labels, lr, None, "external set", info
    selected = "final iteration (no test-set selection)"
    loaded_here = state is None or d.select == "val"
    if d.select == "val":
      state, best = selection.load_best(self.best_dir, self.state_template())
      selected = (f"best validation accuracy ({best['val_acc']:.2f}%, {d.val_per_class} "
                  f"training images per class held out), iteration {best['iteration']}")
    elif state is None:
      state = self.require_state()
    if loaded_here:  # distill() already wrote the files of the state it returned
      results_lib.save_synset(self.workdir, self.prepared, state, d.ipc)
    self._ema_images = (np.asarray(state.ema_images)
                        if isinstance(state, step.EMASynState) else None)
    return (np.asarray(state.syn_images), np.asarray(state.syn_labels), float(state.syn_lr),
            int(state.iteration), selected, None)

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

  def _random_real(self, ipc: int, seeds: list[int]):
    """One random real subset per evaluation seed: (S, n, H, W, C) images, (S, n, C) one-hot."""
    p = self.prepared
    subsets = [evaluate.random_real(p.x_train, p.y_train, ipc=ipc,
                                    num_classes=self.num_classes, seed=s) for s in seeds]
    return np.stack([s[0] for s in subsets]), np.stack([s[1] for s in subsets])

  def evaluate(self, state: step.SynState | None = None) -> dict:
    """Trains eval.num_eval fresh networks of each eval.archs on the distilled set (and on
    random real subsets) and writes results.json after each (network, set)."""
    e = self.config.eval
    images, labels, lr, iteration, selected, external = self._shared_set(state)
    seeds = [10_000 + 100 * self.config.seed + i for i in range(e.num_eval)]
    results = results_lib.header(
        self.config, num_classes=self.num_classes, ipc=len(images) // self.num_classes,
        syn_lr=lr, seeds=seeds, iteration=iteration, selection=selected, external=external)
    # An outside set's labels are read as this config's kind (logits unless it says hard).
    probs = results_lib.label_distribution(self.config, labels)
    sets = [("distilled", images, probs, lr)]
    if "distilled_ema" in results:
      # FTD evaluates its moving average on the network the raw set trained; here each set
      # trains its own fresh networks (docs/methods.md).
      if distributed.count() > 1:
        logging.warning("the EMA set is evaluated in single-process runs only")
      elif self._ema_images is not None:
        sets.append(("distilled_ema", self._ema_images, probs, lr))
    if e.random_real:
      sets.append(("random_real", *self._random_real(results["ipc"], seeds), e.random_real_lr))
    need = scores.needed_sets(e.metrics, hard_labels=self._hard_labels())
    sets += self._score_sets(need, images, lr, seeds, results["ipc"], have=sets)
    for name, *_ in sets:
      results.setdefault(name, {})
    # An outside set's numbers must not overwrite this workdir's own results. The file is
    # rewritten after every (network, set), so a kill loses one evaluation at most, and with
    # eval.resume a second call keeps what the file holds for this same set.
    path = self.workdir / ("results_external.json" if external else "results.json")
    earlier = results_lib.merge_archs(path, {**results, **{name: {} for name, *_ in sets}})
    for arch in e.archs:
      net = self.network(arch)
      for name, x, y, set_lr, *noaug in sets:
        kept = earlier[name].get(arch) if e.resume else None
        with preemption.deferred():  # a signal waits for this evaluation and its record
          lrs = e.random_lr_grid if name.startswith("random") and e.random_lr_grid else ()
          got = (self._evaluate_best_lr(net, arch, name, x, y, lrs, seeds, kept, path,
                                        augment=not noaug) if lrs else
                 self._evaluate_one(net, arch, name, x, y, set_lr, seeds, kept, path,
                                    augment=not noaug))
          if got is not None:
            results[name][arch] = got
          if distributed.index() == 0:
            checkpointing.write_json(path, results_lib.merge_archs(path, results))
      if need:
        self._add_scores(results, arch, net, need)
        if distributed.index() == 0:
          checkpointing.write_json(path, results_lib.merge_archs(path, results))
    results = results_lib.merge_archs(path, results)
    if distributed.index() == 0:
      checkpointing.write_json(path, results)
    return results

  # ------------------------------------------------------------- label- and augmentation-robust
  def _hard_labels(self) -> bool:
    """Whether the set's own evaluation trains on one-hot labels (MTT, FTD, TESLA)."""
    return self.config.distill.labels in ("hard", "teacher")

  def _score_sets(self, need, images, lr, seeds, ipc, have) -> list[tuple]:
    """The extra evaluations the scores need, as (name, x, y, lr[, 'noaug']) (scores.py):
    the set on one-hot labels, random subsets with the set's kind of labels (one-hot, or the
    teacher's soft labels), each also trained without augmentation for ARS."""
    out, e = [], self.config.eval
    onehot = results_lib.class_one_hot(len(images), self.num_classes)
    distilled = next(s for s in have if s[0] == "distilled")
    if "distilled_hard" in need:
      out.append(("distilled_hard", images, onehot, lr))
    if "distilled_noaug" in need:
      out.append(("distilled_noaug", *distilled[1:4], "noaug"))
    if "random" in need:
      x_rand, y_rand = self._random_real(ipc, seeds)
      name = "random_real" if self._hard_labels() else "random_teacher"
      if name == "random_teacher":
        y_rand = self._teacher_labels(x_rand)
      if name not in (s[0] for s in have):
        out.append((name, x_rand, y_rand, e.random_real_lr))
      if "random_noaug" in need:
        out.append((f"{name}_noaug", x_rand, y_rand, e.random_real_lr, "noaug"))
    return out

  def _teacher_labels(self, x) -> np.ndarray:
    """(S, n, C) softmax of the teacher's logits on the un-augmented images x (S, n, H, W, C):
    the final checkpoint of expert eval.teacher_expert (DD-Ranking's static soft labels)."""
    net = self.network()
    k = self.config.eval.teacher_expert
    _, final = experts.load_trajectories(self.experts_dir, num_params=net.num_params,
                                         num_experts=k + 1, return_final=True)
    logits = distillation.expert_logits(net, final[k:k + 1], x.reshape(-1, *x.shape[2:]))[0]
    return np.asarray(jax.nn.softmax(logits, axis=-1)).reshape(*x.shape[:2], -1)

  def _add_scores(self, results: dict, arch: str, net, need) -> None:
    """results['scores'][arch] and results['full_data'][arch] from the evaluations done."""
    e = self.config.eval
    random = "random_real" if self._hard_labels() else "random_teacher"
    names = {"distilled": "distilled", "distilled_hard": "distilled_hard", "random": random,
             "distilled_noaug": "distilled_noaug", "random_noaug": f"{random}_noaug"}
    acc = {k: results[v][arch]["runs"] for k, v in names.items() if arch in results.get(v, {})}
    full = self._full_accuracy(arch, net) if "full" in need else None
    if full is not None:
      results.setdefault("full_data", {})[arch] = full
    values = scores.per_seed_scores(e.metrics, acc, full["mean"] if full else 0.0,
                                    lrs_weight=e.lrs_weight, ars_weight=e.ars_weight)
    results.setdefault("scores", {})[arch] = {k: evaluate.summarize(v) for k, v in values.items()}
    for k, v in values.items():
      self.log({"phase": "evaluate", "set": f"score_{k}", "arch": arch, "runs": v})
      logging.info("score %s (%s): %.2f +- %.2f", k.upper(), arch, np.mean(v), np.std(v))

  def _full_accuracy(self, arch: str, net) -> dict:
    """The full real training set's hard-label accuracy for `arch`: trained once per
    protocol and cached in eval.full_cache (default <workdir>/full_data.json)."""
    e, p = self.config.eval, self.prepared
    cache = Path(e.full_cache) if e.full_cache else self.workdir / "full_data.json"
    key = results_lib.full_data_key(self.config, arch)
    stored = json.loads(cache.read_text()) if cache.exists() else {}
    if key in stored:
      return stored[key]
    cfg = dataclasses.replace(evaluate.EvalConfig.from_config(self.config),
                              epochs=e.full_epochs, batch_size=e.full_batch_size,
                              progress_every=1)
    onehot = np.eye(self.num_classes, dtype=np.float32)[p.y_train]
    eta = evaluate.estimate_seconds(net, cfg, p.x_train, onehot, e.full_lr, e.full_seeds)
    logging.info("full-data accuracy (%s) is not in %s: training %d network(s) on %d images "
                 "for %d epochs, about %.0f minutes on this machine", arch, cache,
                 e.full_seeds, len(p.x_train), e.full_epochs, eta / 60)
    runs = evaluate.evaluate_synset(net, p.x_train, onehot, e.full_lr, p.x_test, p.y_test,
                                    seeds=[20_000 + i for i in range(e.full_seeds)], cfg=cfg,
                                    mesh=self.mesh, label=f"full data ({arch})")
    got = {**evaluate.summarize(runs), "key": key}
    if distributed.index() == 0:
      stored = json.loads(cache.read_text()) if cache.exists() else {}
      checkpointing.write_json(cache, {**stored, key: got})
    return got

  def _evaluate_best_lr(self, net, arch, name, images, labels, lrs, seeds, kept, path,
                        augment: bool) -> dict | None:
    """DD-Ranking's choice for a set without a learned lr: each of `lrs`, keeping the best
    mean test accuracy (a choice made on the test set, recorded as such)."""
    if kept is not None:
      return self._evaluate_one(net, arch, name, images, labels, lrs[0], seeds, kept, path)
    best = None
    for lr in lrs:
      got = self._evaluate_one(net, arch, name, images, labels, lr, seeds, None, path,
                               augment=augment)
      if got is not None and (best is None or got["mean"] > best["mean"]):
        best = {**got, "lr": lr, "lr_chosen_on": "test accuracy (eval.random_lr_grid)"}
    return best

  def _evaluate_one(self, net, arch, name, images, labels, lr, seeds, kept, path,
                    augment: bool = True) -> dict | None:
    """The summary of one (network, set): `kept` (eval.resume) or trained now over the seeds
    (several processes split the seeds). None where process 0 keeps a result this one lacks."""
    label = f"evaluate {name.replace('_', ' ')} ({arch})"
    # Process 0's results.json decides what is kept: every process must train the same.
    if distributed.from_process_0(np.asarray(kept is not None, np.int32)):
      if kept is not None:
        logging.info("%s: %.2f +- %.2f, kept from %s (eval.resume)", label, kept["mean"],
                     kept["std"], path)
      return kept
    t0 = time.time()
    p = self.prepared
    mine = distributed.my_share(list(range(len(seeds))))
    if np.ndim(images) == 5:  # one set per seed (random real)
      images, labels = images[mine], labels[mine]
    runs = evaluate.evaluate_synset(
        net, images, labels, lr, p.x_test, p.y_test, seeds=[seeds[i] for i in mine],
        cfg=dataclasses.replace(evaluate.EvalConfig.from_config(self.config), augment=augment),
        mesh=self.mesh,
        label=label) if mine else []
    runs = distributed.gather_shares(runs, len(seeds))
    self.log({"phase": "evaluate", "set": name, "arch": arch, "runs": runs,
              "seconds": round(time.time() - t0, 2)})
    logging.info("%s: %.2f +- %.2f (%.1fs)", label, np.mean(runs), np.std(runs),
                 time.time() - t0)
    return evaluate.summarize(runs)

  # --------------------------------------------------------------------------- export
  def export(self) -> Path:
    return results_lib.export(self.workdir / "export", self.prepared, self.require_state(),
                              ipc=self.config.distill.ipc, source=self.config.data.source)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "all",
        resume_changed: bool = False) -> dict | None:
  """Runs the phases that `mode` names; returns results for 'all' and 'evaluate'.

  resume_changed: accept a workdir's distillation although the config changes its output
  fields or extends distill.iterations (checks.check_same_run).
  """
  checks.preflight(config, workdir, mode, resume_changed)
  # One writer per workdir; the other processes of a distributed run write none of it.
  with (locking.WorkdirLock(workdir) if distributed.index() == 0
        else contextlib.nullcontext()):
    logging.info("workdir %s, mode %s", workdir, mode)
    t0 = time.time()
    r = Run(config, workdir)
    state, results = None, None
    try:
      if mode in ("all", "experts"):
        r.experts()
      if mode in ("all", "distill"):
        state = r.distill()
      if mode in ("all", "evaluate"):
        results = r.evaluate(state)
        print(results_lib.format_table(results), flush=True)
      if mode == "export":
        print(f"exported to {r.export()}", flush=True)
    finally:
      r.log.close()
    logging.info("run finished in %.1fs; outputs in %s", time.time() - t0, r.workdir)
  return results
