"""Checks of a run's config and inputs before any expensive work: one line per problem.

`validate_config` checks every field's value and the combinations that cannot work;
`preflight` adds what a mode needs on disk (data source, experts, a distilled set).
Both raise errors.Error subclasses whose message names the field and what to do.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from datm_clr_jax import augment, data, distributed, evaluate, experts, losses, metric_writers
from datm_clr_jax import sharding, step
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
      (config.experts.loop, sharding.NETWORK_LOOPS, "experts.loop"),
      (config.experts.optimizer, experts.OPTIMIZERS, "experts.optimizer"),
      (d.segment_loop, sharding.NETWORK_LOOPS, "distill.segment_loop"),
      (d.init, INITS, "distill.init"), (d.select, SELECTIONS, "distill.select"),
      (c.view_mode, augment.MODES, "clr.view_mode"),
      (c.strategy, step.CLR_STRATEGIES, "clr.strategy"),
      (c.loss, losses.CONTRASTIVE_KINDS, "clr.loss"), (c.head, step.HEADS, "clr.head"),
      (c.views, step.VIEWS, "clr.views")]:
    _choice(value, allowed, field)
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


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  d, ex = config.distill, config.experts
  positive = {"distill.ipc": d.ipc, "distill.num_inner_steps": d.num_inner_steps,
              "distill.expert_epochs": d.expert_epochs, "experts.epochs": ex.epochs,
              "experts.num_experts": ex.num_experts, "experts.parallel": ex.parallel,
              "eval.num_eval": config.eval.num_eval, "eval.epochs": config.eval.epochs,
              "distill.syn_lr_init": d.syn_lr_init, "clr.temperature": config.clr.temperature,
              "distill.log_every": d.log_every, "distill.checkpoint_every": d.checkpoint_every,
              "distill.scan_unroll": d.scan_unroll, "distill.num_segments": d.num_segments}
  for field, v in positive.items():
    if not v > 0:
      raise ConfigError(f"config.{field} must be positive, got {v}")
  if not config.eval.progress_every >= 0:
    raise ConfigError(f"config.eval.progress_every must be >= 0 (0: no progress lines), got "
                      f"{config.eval.progress_every}")
  if d.batch_syn < 0:
    raise ConfigError(f"config.distill.batch_syn must be >= 0, got {d.batch_syn}")
  if not 0 <= d.student_momentum < 1:
    raise ConfigError(f"config.distill.student_momentum must lie in [0, 1), got "
                      f"{d.student_momentum}")
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


def preflight(config: ml_collections.ConfigDict, workdir, mode: str) -> None:
  """Checks everything a run of `mode` needs that can be checked without data or training:
  every field (validate_config), the data source's path, eval.synset, experts.import_dir and
  experts.dir, and that an evaluation has something to evaluate."""
  _choice(mode, PHASE_MODES, "mode (--mode)")
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
    raise CheckpointError(
        f"no expert trajectories in {experts_dir}; run --mode=experts (or --mode=all) first, "
        "or point config.experts.dir at trained experts")
  if mode in ("evaluate", "export") and not synset and not (workdir / "distill").is_dir():
    raise CheckpointError(
        f"no distilled set in {workdir / 'distill'}; run --mode=distill first, or evaluate an "
        "outside set with --config.eval.synset")
