"""Checks of a run's config and inputs before any expensive work: one line per problem.

`validate_config` checks every field's value and the combinations that cannot work;
`preflight` adds what a mode needs on disk (data source, experts, a distilled set).
Both raise errors.Error subclasses whose message names the field and what to do.
"""

from __future__ import annotations

import functools
import json
import math
import runpy
from pathlib import Path

import ml_collections

from datm_clr_jax import (augment, data, distributed, evaluate, experts, losses, methods,
                          metric_writers, models, scores, sharding, step)
from datm_clr_jax.errors import CheckpointError, ConfigError
from datm_clr_jax.kernels import CONV_IMPLS
from datm_clr_jax.models import ARCHS, NORMS

PHASE_MODES = ("all", "experts", "distill", "evaluate", "export")
INITS = ("samples_predicted_correctly", "real")
SELECTIONS = ("final", "val")


def _choice(value, allowed, field):
  if value not in allowed:
    raise ConfigError(f"config.{field}={value!r} is not one of {list(allowed)}")


def _check_choices(config: ml_collections.ConfigDict) -> None:
  d, c = config.distill, config.clr
  for value, allowed, field in [
      (config.model.norm, NORMS, "model.norm"), (config.model.conv_impl, CONV_IMPLS,
                                                 "model.conv_impl"),
      (config.dsa.mode, augment.MODES, "dsa.mode"),
      (config.eval.seed_loop, evaluate.SEED_LOOPS, "eval.seed_loop"),
      (config.eval.keep, evaluate.KEEP, "eval.keep"),
      (config.experts.loop, sharding.NETWORK_LOOPS, "experts.loop"),
      (config.experts.optimizer, experts.OPTIMIZERS, "experts.optimizer"),
      (d.segment_loop, sharding.NETWORK_LOOPS, "distill.segment_loop"),
      (d.init, INITS, "distill.init"), (d.select, SELECTIONS, "distill.select"),
      (c.view_mode, augment.MODES, "clr.view_mode"),
      (c.strategy, step.CLR_STRATEGIES, "clr.strategy"),
      (c.loss, losses.CONTRASTIVE_KINDS, "clr.loss"), (c.head, step.HEADS, "clr.head"),
      (c.views, step.VIEWS, "clr.views"), (config.method, methods.METHODS, "method"),
      (d.labels, step.LABELS, "distill.labels"),
      (d.gradient, step.GRADIENTS, "distill.gradient")]:
    _choice(value, allowed, field)
  for metric in config.eval.metrics:
    _choice(metric, scores.METRICS, "eval.metrics")
  for arch in config.eval.archs:
    if "," in arch:  # The command line turns a comma-separated string into a one-item tuple.
      raise ConfigError(f"config.eval.archs={arch!r}: give several architectures as a tuple, "
                        "e.g. --config.eval.archs=\"('resnet18','vgg11')\"")
    _choice(arch, ARCHS, "eval.archs")
  try:
    augment.parse_strategy(config.dsa.strategy)
  except ValueError as e:
    raise ConfigError(f"config.dsa.strategy: {e}") from None


def _check_combinations(config: ml_collections.ConfigDict) -> None:
  d, c = config.distill, config.clr
  incompatible = [
      (d.gradient == "tesla" and (step.contrast_on(c.strategy, c.alpha, c.lam)
                                  or d.student_momentum or d.num_segments != 1),
       "distill.gradient='tesla' is TESLA's estimator of plain trajectory matching: it needs "
       "clr.strategy='none' (or alpha 0), distill.student_momentum=0, distill.num_segments=1"),
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
  for bad, message in incompatible:
    if bad:
      raise ConfigError(f"incompatible config: {message}")
  if config.model.norm == "batch":
    raise ConfigError("config.model.norm='batch' has running statistics, which trajectory "
                      "matching's flat parameters cannot carry; use 'instance' or 'none'")
  if d.select == "val" and not (d.val_per_class > 0 and d.select_every > 0
                                and d.select_epochs > 0):
    raise ConfigError("distill.select='val' needs positive distill.val_per_class, "
                      "distill.select_every and distill.select_epochs")
  missing = metric_writers.missing_dependency(config.logging)
  if missing:
    raise ConfigError(missing)


# Numeric fields and their ranges (every float field must also be finite).
POSITIVE = ("distill.ipc", "distill.iterations", "distill.num_inner_steps",
            "distill.expert_epochs", "distill.syn_lr_init", "distill.lr_img", "distill.lr_lr",
            "distill.lr_y", "distill.log_every", "distill.checkpoint_every",
            "distill.scan_unroll", "distill.num_segments", "experts.epochs", "experts.lr",
            "experts.num_experts", "experts.parallel", "experts.batch_size", "eval.num_eval",
            "eval.epochs", "eval.batch_size", "eval.random_real_lr", "clr.temperature",
            "clr.proj_dim", "clr.lr_head", "data.zca_eps", "eval.full_epochs", "eval.full_lr",
            "eval.full_batch_size", "eval.full_seeds", "eval.test_every")
NON_NEGATIVE = ("clr.alpha", "clr.beta", "clr.lam", "eval.weight_decay", "eval.progress_every",
                "distill.batch_syn", "distill.val_per_class", "distill.num_experts",
                "data.image_size", "clr.proj_hidden", "experts.gsam_rho", "experts.gsam_alpha",
                "distill.threshold", "eval.teacher_expert")
MOMENTA = ("distill.momentum_img", "distill.momentum_lr", "distill.momentum_y",
           "distill.student_momentum", "clr.momentum_head", "eval.momentum",
           "distill.ema_decay")  # a decay, in [0, 1) like the momenta


def _check_numbers(config: ml_collections.ConfigDict) -> None:
  values = _flat(config.to_dict())
  for field, v in values.items():
    if isinstance(v, float) and not math.isfinite(v):
      raise ConfigError(f"config.{field} must be a finite number, got {v}")
  for fields, ok, what in ((POSITIVE, lambda v: v > 0, "positive"),
                           (NON_NEGATIVE, lambda v: v >= 0, ">= 0"),
                           (MOMENTA, lambda v: 0 <= v < 1, "in [0, 1)")):
    for field in fields:
      if not ok(values[field]):
        raise ConfigError(f"config.{field} must be {what}, got {values[field]}")


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  d, ex = config.distill, config.experts
  _check_numbers(config)
  if not all(isinstance(lr, (int, float)) and lr > 0 for lr in config.eval.random_lr_grid):
    raise ConfigError(f"config.eval.random_lr_grid={config.eval.random_lr_grid} must hold "
                      "positive learning rates")
  for field in ("lrs_weight", "ars_weight"):
    if not 0 <= config.eval[field] <= 1:
      raise ConfigError(f"config.eval.{field} must lie in [0, 1], got {config.eval[field]}")
  if not 0 <= d.min_start_epoch < d.max_start_epoch:
    raise ConfigError(f"need 0 <= distill.min_start_epoch ({d.min_start_epoch}) < "
                      f"distill.max_start_epoch ({d.max_start_epoch})")
  if d.sequential and not d.min_start_epoch < d.current_max_start_epoch <= d.max_start_epoch:
    raise ConfigError("distill.current_max_start_epoch must lie in (min_start_epoch, "
                      "max_start_epoch] when distill.sequential is on")
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


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks values and combinations before anything expensive runs."""
  _check_choices(config)
  _check_combinations(config)
  _check_ranges(config)


def preflight(config: ml_collections.ConfigDict, workdir, mode: str,
              resume_changed: bool = False) -> None:
  """Checks everything a run of `mode` needs that can be checked without data or training:
  every field (validate_config), the data source's path, eval.synset, experts.import_dir and
  experts.dir, that an evaluation has something to evaluate, that the experts fit the model,
  and that the workdir's distillation was made with this config (check_same_run)."""
  _choice(mode, PHASE_MODES, "mode (--mode)")
  validate_config(config)
  data.check_source(config.data.source)
  if distributed.index() > 0:
    return  # the workdir is process 0's: the others read and write none of it
  _check_paths(config, Path(workdir), mode)
  check_same_run(config, Path(workdir), mode, resume_changed)


def _check_paths(config: ml_collections.ConfigDict, workdir: Path, mode: str) -> None:
  ex = config.experts
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
  teacher = (scores.needed_sets(config.eval.metrics, config.distill.labels in ("hard", "teacher"))
             & {"random"}) and config.distill.labels not in ("hard", "teacher")
  needs_experts = mode == "distill" or (mode == "evaluate" and not synset and (
      config.distill.select == "val" or teacher))
  if needs_experts and not experts.finished_experts(experts_dir):
    raise CheckpointError(
        f"no expert trajectories in {experts_dir}; run --mode=experts (or --mode=all) first, "
        "or point config.experts.dir at trained experts")
  if mode in ("all", "distill", "experts"):
    _check_experts_fit(config, experts_dir)
  if mode in ("evaluate", "export") and not synset and not (workdir / "distill").is_dir():
    raise CheckpointError(
        f"no distilled set in {workdir / 'distill'}; run --mode=distill first, or evaluate an "
        "outside set with --config.eval.synset")


def _check_experts_fit(config: ml_collections.ConfigDict, experts_dir: Path) -> None:
  """Experts already in experts_dir must be of this run's kind (experts.kind: data, model,
  DSA, optimizer and its settings, lr, batch, seed) and have its network's parameter count."""
  meta_file = experts_dir / "meta.json"
  if not meta_file.exists():
    return
  meta = json.loads(meta_file.read_text())
  mismatch = experts.kind_mismatch(meta, experts.kind(config))
  if mismatch:
    raise ConfigError(f"the experts in {experts_dir} were trained with {mismatch}; train "
                      "experts of this kind in another experts.dir, or use theirs")
  try:
    net = models.from_config(config.model, meta["num_classes"], tuple(meta["image_shape"]))
  except (KeyError, ValueError):
    return  # the data phase says what does not fit
  if net.num_params != meta["num_params"]:
    raise ConfigError(f"the experts in {experts_dir} have {meta['num_params']} parameters, "
                      f"config.model ({config.model.arch}, width {config.model.width}, depth "
                      f"{config.model.depth}) has {net.num_params}; use the experts' model or "
                      "another experts.dir")


# Fields that say where or how a run computes, not what, and names (the method's preset name:
# its switches are compared): never a change of the run.
WHERE = ("name", "method", "data.cache_dir", "data.data_dir", "experts.dir", "shard",
         "experts.parallel", "experts.loop")
# Fields that leave the distilled set as it is: a resumed distillation accepts changes to them
# with --resume_changed; an evaluation or export of the set ignores them.
OUTPUT = ("logging.", "eval.", "distill.log_every", "distill.checkpoint_every",
          "distill.diagnostics")
DISTILL_CONFIG = "distill_config.json"  # in the workdir: the config that made distill/


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


# Fields replaced since: a stored value's meaning in today's field.
RENAMED = {"distill.learn_labels": ("distill.labels", {True: "learned", False: "experts"})}


@functools.lru_cache(maxsize=1)
def _defaults() -> dict:
  """configs/default.py's values, flat: a field added to the code keeps the old behaviour at
  its default."""
  path = Path(__file__).resolve().parents[1] / "configs" / "default.py"
  return _flat(json.loads(runpy.run_path(str(path))["get_config"]().to_json()))


def config_changes(stored: dict, config: ml_collections.ConfigDict) -> dict:
  """{field: (stored value, new value)} for every field that differs, but WHERE fields and
  fields the stored config predates that are at their default (or only shape the output)."""
  old, new = _flat(stored), _flat(json.loads(config.to_json()))
  for field, (today, meaning) in RENAMED.items():
    if field in old and field not in new:
      old.setdefault(today, meaning.get(old.pop(field)))
  added = {k for k in set(new) - set(old)
           if k.startswith(OUTPUT) or new[k] == _defaults().get(k, object())}
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not k.startswith(WHERE) and k not in added}


def check_same_run(config: ml_collections.ConfigDict, workdir: Path, mode: str,
                   resume_changed: bool = False) -> None:
  """Refuses, in one line listing the fields, a run that would take the workdir's distilled
  set further, or evaluate it, under settings it was not made with.

  Resuming (modes all, distill) accepts changes to OUTPUT fields and a larger
  distill.iterations only with resume_changed; evaluate and export ignore them. Any other
  difference is refused.
  """
  stored_file = workdir / DISTILL_CONFIG
  if mode == "experts" or not (workdir / "distill").is_dir():
    return
  if not stored_file.exists():  # a workdir made before the file existed
    stored_file = workdir / "config.json"
    if not stored_file.exists():
      return
  changes = config_changes(json.loads(stored_file.read_text()), config)
  iters = changes.get("distill.iterations")
  flexible = {k for k in changes if k.startswith(OUTPUT)}
  if iters is not None and iters[0] is not None and iters[1] > iters[0]:
    flexible.add("distill.iterations")
  if mode in ("evaluate", "export") or resume_changed:
    changes = {k: v for k, v in changes.items() if k not in flexible
               and not (k == "distill.iterations" and mode in ("evaluate", "export"))}
  if changes:
    listed = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
    what = ("rerun with --resume_changed to accept them"
            if set(changes) <= flexible else "use another --workdir")
    raise ConfigError(f"{workdir} holds a distillation made with other settings ({listed}): "
                      f"{what}")
