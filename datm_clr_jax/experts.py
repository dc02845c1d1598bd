"""Expert trajectories: train K networks on the real set at once and store their parameters.

A trajectory is an array of shape (epochs + 1, P): the flat parameters at initialisation and
after every epoch. Experts are independent, so one compiled epoch updates every
expert of a group: all at once under `jax.vmap` (loop 'vmap', the default across devices) or
one after another under `lax.map` ('map', the default on one device, where batched
convolutions were slower than the experts in turn on a CPU and on a GPU: docs/performance.md).

On disk (orbax, through `checkpointing`):
  experts/meta.json              num_params, epochs, and what the experts were trained on
  experts/expert_00000/          {'trajectory': (epochs + 1, P)} per finished expert
  experts/in_progress/           the group being trained, saved after every epoch, so a kill
                                 loses at most one epoch
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from datm_clr_jax import augment, checkpointing, evaluate, losses, preemption, sharding
from datm_clr_jax.models import Network


OPTIMIZERS = ("sgd", "gsam")


@dataclasses.dataclass(frozen=True)
class GSAM:
  """GSAM (Zhuang et al. 2022) as FTD/DATM train their experts: on top of plain SGD."""

  rho: float = 0.01  # Perturbation radius (FTD keeps it constant: the lr is constant).
  alpha: float = 0.3  # Weight of the surrogate-gap (vertical) component.
  adaptive: bool = True  # ASAM-style perturbation scaled by |w|.

  @classmethod
  def from_config(cls, experts_config) -> GSAM | None:
    """The config's GSAM settings when experts.optimizer is 'gsam', else None (plain SGD)."""
    c = experts_config
    if c.optimizer != "gsam":
      return None
    return cls(rho=c.gsam_rho, alpha=c.gsam_alpha, adaptive=c.gsam_adaptive)


def gsam_gradient(loss_fn, params: jax.Array, g: jax.Array, cfg: GSAM) -> jax.Array:
  """The GSAM update direction for flat params (P,), given g = grad loss_fn(params).

  Perturb to w + e (e = rho g / ||g||, or rho w^2 g / ||w g|| when adaptive), take the
  gradient g_p there, and subtract alpha times the part of g orthogonal to g_p:
  g_p - alpha * (g - (g . g_p / ||g_p||^2) g_p). With rho = 0 this is g; with alpha = 0, SAM.
  """
  eps = 1e-12
  if cfg.adaptive:
    e = cfg.rho * params**2 * g / (jnp.linalg.norm(params * g) + eps)
  else:
    e = cfg.rho * g / (jnp.linalg.norm(g) + eps)
  g_p = jax.grad(loss_fn)(params + e)
  g_norm, gp_norm = jnp.linalg.norm(g), jnp.linalg.norm(g_p)
  cosine = jnp.vdot(g, g_p) / (g_norm * gp_norm + eps)
  vertical = g - cosine * g_norm * g_p / (gp_norm + eps)
  return g_p - cfg.alpha * vertical


def make_train_epoch(network: Network, *, lr: float, batch_size: int, num_train: int,
                     strategy: str, dsa_mode: str, gsam: GSAM | None = None,
                     loop: str = "vmap"):
  """Builds a jitted function training a group of experts for one epoch with SGD or GSAM.

  The returned `epoch(params, keys, x, y)` takes params (K, P), keys (K, 2), images
  (N, H, W, C) and labels (N,) and returns (new params (K, P), mean train loss (K,)).
  Each expert draws its own shuffling and augmentation from its key. The last partial
  batch is dropped, so every step sees `batch_size` images. `gsam` None is plain SGD (MTT);
  a GSAM config trains as FTD/DATM do (one augmented batch serves both GSAM passes).
  `loop` 'vmap' trains the K experts at once, 'map' one after another (same numbers up to
  float rounding).
  """
  if loop == "vmap":
    network = network.for_vmap()
  steps = num_train // batch_size
  if steps == 0:
    raise ValueError(f"expert batch_size {batch_size} exceeds the {num_train} training images")

  def one_expert(params, key, x, y):
    k_perm, k_aug = jax.random.split(key)
    order = jax.random.permutation(k_perm, num_train)[:steps * batch_size]
    order = order.reshape(steps, batch_size)
    num_classes = network.module.num_classes

    def step(p, xs):
      idx, k = xs
      xb = augment.dsa(x[idx], k, strategy, dsa_mode)
      yb = jax.nn.one_hot(y[idx], num_classes, dtype=xb.dtype)
      loss_fn = lambda q: losses.soft_cross_entropy(network.apply_flat(q, xb)[0], yb)
      loss, g = jax.value_and_grad(loss_fn)(p)
      if gsam is not None:
        g = gsam_gradient(loss_fn, p, g, gsam)
      return p - lr * g, loss

    params, step_losses = jax.lax.scan(step, params, (order, jax.random.split(k_aug, steps)))
    return params, jnp.mean(step_losses)

  return jax.jit(sharding.over_networks(one_expert, loop, (0, 0, None, None)))


# What makes experts of one kind: the config fields whose values produced them. meta.json
# records them and a run pointed at experts of another kind is refused (check_kind).
KIND_FIELDS = ("data.source", "data.image_size", "data.zca", "data.zca_eps", "model.arch",
               "model.width", "model.depth", "model.norm", "dsa.strategy", "dsa.mode",
               "experts.optimizer", "experts.gsam_rho", "experts.gsam_alpha",
               "experts.gsam_adaptive", "experts.lr", "experts.batch_size", "experts.seed")


def _source_name(source: str) -> str:
  """A data source as its kind and file or folder name, so one copy of the data moved to
  another path (a clone elsewhere) names the same experts."""
  kind, _, where = source.partition(":")
  return f"{kind}:{Path(where).name}" if where and kind != "tfds" else source


def kind(config) -> dict:
  """{field: value} of KIND_FIELDS for a run config (GSAM's fields only for GSAM experts)."""
  out = {}
  for field in KIND_FIELDS:
    section, name = field.split(".")
    if name.startswith("gsam_") and config.experts.optimizer != "gsam":
      continue
    value = config[section][name]
    out[field] = _source_name(value) if field == "data.source" else value
  return out


def stored_kind(meta: dict) -> dict:
  """The kind of the experts a meta.json describes. Older folders record only the optimizer
  (absent: plain SGD), lr, batch size and seed; the other fields are then not checked."""
  out = dict(meta.get("kind", {}))
  if "imported_from" in meta and not out:
    return out  # the reference's buffers: what made them is not recorded
  opt = meta.get("optimizer")
  out.setdefault("experts.optimizer", opt["name"] if opt else "sgd")
  if opt:
    for name in ("rho", "alpha", "adaptive"):
      out.setdefault(f"experts.gsam_{name}", opt[name])
  for name in ("lr", "batch_size", "seed"):
    if name in meta:
      out.setdefault(f"experts.{name}", meta[name])
  return out


def kind_mismatch(meta: dict, wanted: dict) -> str | None:
  """'field: stored -> wanted' for the first field where stored experts differ, or None."""
  have = stored_kind(meta)
  for field in KIND_FIELDS:
    if field in have and field in wanted and have[field] != wanted[field]:
      return f"{field}={have[field]!r} (this run: {wanted[field]!r})"
  return None


def expert_path(root, k: int) -> Path:
  return Path(root) / f"expert_{k:05d}"


def _write_meta(root: Path, meta: dict) -> None:
  path = root / "meta.json"
  if path.exists():
    old = json.loads(path.read_text())
    same = {k: v for k, v in old.items() if k != "kind"} == {
        k: v for k, v in meta.items() if k != "kind"}
    if not same or kind_mismatch(old, meta.get("kind", {})):
      raise checkpointing.CheckpointError(
          f"{root} holds experts trained with {old}, but this run asks for {meta}; use another "
          "workdir or delete the experts folder")
  else:
    root.mkdir(parents=True, exist_ok=True)
    checkpointing.write_json(path, meta)


def finished_experts(root) -> list[int]:
  """Indices of the experts whose trajectories are saved in `root`."""
  root = Path(root)
  if not root.exists():
    return []
  return sorted(int(p.name.split("_")[1]) for p in root.glob("expert_*") if p.is_dir()
                and not p.name.endswith(".tmp") and p.name.split("_")[1].isdigit())


def train_experts(network: Network, x_train, y_train, x_test, y_test, *, root, num_experts: int,
                  epochs: int, lr: float, batch_size: int, parallel: int, strategy: str,
                  dsa_mode: str, seed: int, image_shape, gsam: GSAM | None = None,
                  save_epochs: int = 0, mesh=None, meta_extra=None, log=None,
                  loop: str = "auto", process_index: int = 0, process_count: int = 1,
                  kind: dict | None = None) -> None:
  """Trains `num_experts` experts (in groups of `parallel`) and saves their trajectories.

  Already finished experts are skipped and an interrupted group resumes from its last epoch,
  so calling this again after a kill continues the same run. Expert k's initialisation and
  data order depend only on (seed, k), not on the grouping.

  Args:
    network: a stateless Network.
    x_train, y_train: (N, H, W, C) normalised images and (N,) labels.
    x_test, y_test: held-out set used only to report expert accuracy.
    root: the experts directory.
    gsam: None for plain SGD (MTT), else GSAM's settings (FTD/DATM).
    save_epochs: store snapshots 0..save_epochs only (0: all epochs + 1); distillation never
      reads past max_start_epoch + expert_epochs, so the rest need not be kept.
    mesh: a `sharding.device_mesh()`: each device trains its share of a group's experts.
    log: optional callable(dict) receiving one record per epoch.
    kind: what produced the experts (experts.kind(config)), recorded in meta.json.
    loop: how a group trains: 'vmap', 'map' or 'auto' (sharding.resolve_network_loop).
    process_index, process_count: with several processes (distributed.py) the groups are
      shared out in rounds and gathered to process 0, which alone writes `root`.
  """
  root = Path(root)
  meta = {"num_params": network.num_params, "epochs": epochs, "lr": lr,
          "batch_size": batch_size, "seed": seed, "image_shape": list(image_shape),
          "num_classes": network.module.num_classes}
  if gsam is not None:  # only then, so plain-SGD experts made before GSAM existed still load
    meta["optimizer"] = {"name": "gsam", **dataclasses.asdict(gsam)}
  if save_epochs:
    meta["save_epochs"] = save_epochs
  meta.update(meta_extra or {})
  if kind:
    meta["kind"] = kind
  if process_index == 0:
    _write_meta(root, meta)
    checkpointing.remove_partial_writes(root)
  done = set(finished_experts(root)) if process_index == 0 else set()
  trainer = lambda: make_group_trainer(network, x_train, y_train, lr=lr, batch_size=batch_size,
                                       strategy=strategy, dsa_mode=dsa_mode, gsam=gsam,
                                       loop=loop, mesh=mesh)
  if process_count > 1:
    _train_in_rounds(network, x_test, y_test, root=root, done=done, num_experts=num_experts,
                     epochs=epochs, parallel=parallel, seed=seed, image_shape=image_shape,
                     save_epochs=save_epochs, log=log, process_index=process_index,
                     process_count=process_count, trainer=trainer)
    return
  todo = [k for k in range(num_experts) if k not in done]
  if not todo:
    logging.info("experts: all %d already trained in %s", num_experts, root)
    return
  train_group = trainer()
  for g in range(0, len(todo), parallel):
    group = todo[g:g + parallel]
    progress = checkpointing.StepCheckpoints(root / "in_progress", keep=1)
    traj = train_group(group, epochs=epochs, seed=seed, image_shape=image_shape,
                       x_test=x_test, y_test=y_test, progress=progress, log=log)
    with preemption.deferred():
      _save_group(root, group, traj, save_epochs or epochs)
      progress.close()
      shutil.rmtree(progress.directory, ignore_errors=True)


def _save_group(root: Path, group, traj: np.ndarray, last_epoch: int) -> None:
  for i, k in enumerate(group):
    # The final parameters are kept apart: they choose the initial synthetic set.
    checkpointing.save_tree(expert_path(root, k), {"trajectory": traj[i, :last_epoch + 1],
                                                   "final": traj[i, -1]})


def make_group_trainer(network: Network, x_train, y_train, *, lr, batch_size, strategy,
                       dsa_mode, gsam=None, loop="auto", mesh=None):
  """Returns train_group(group, *, epochs, seed, image_shape, x_test, y_test, progress, log)
  -> the group's (len(group), epochs + 1, P) trajectories; with `progress` (StepCheckpoints)
  it saves every epoch and resumes from the last one saved."""
  loop = sharding.resolve_network_loop(loop, sharding.num_devices(mesh), "experts.loop")
  epoch_fn = make_train_epoch(network, lr=lr, batch_size=batch_size, num_train=len(x_train),
                              strategy=strategy, dsa_mode=dsa_mode, gsam=gsam, loop=loop)
  tester = evaluate.make_tester(network, loop)

  def acc_fn(params, x, y):  # flat (K, P) -> the variables pytree the tester expects
    return tester(jax.vmap(lambda p: {"params": network.unravel(p)})(params), x, y)

  x_dev, y_dev = sharding.replicate((jnp.asarray(x_train), jnp.asarray(y_train)), mesh)

  def train_group(group, *, epochs, seed, image_shape, x_test, y_test, progress, log):
    base = jax.random.PRNGKey(seed)
    ids = np.asarray(group)
    traj = np.zeros((len(group), epochs + 1, network.num_params), np.float32)
    start_epoch = 0
    resumed = None
    if progress is not None:
      try:
        resumed = progress.restore_latest({"ids": ids, "trajectory": traj})
      except checkpointing.CheckpointError as e:
        logging.warning("experts: ignoring unusable in-progress group (%s)", e)
    if resumed is not None and np.array_equal(resumed[1]["ids"], ids):
      start_epoch, traj = resumed[0], np.array(resumed[1]["trajectory"])
      logging.info("experts %s: resuming at epoch %d", group, start_epoch)
    else:
      traj[:, 0] = np.stack([network.init_flat(jax.random.fold_in(jax.random.fold_in(base, k), 0),
                                               image_shape) for k in group])
    params = sharding.shard_leading(jnp.asarray(traj[:, start_epoch]), mesh)
    for ep in range(start_epoch, epochs):
      t0 = time.time()
      keys = sharding.shard_leading(jnp.stack(
          [jax.random.fold_in(jax.random.fold_in(base, k), ep + 1) for k in group]), mesh)
      with preemption.deferred():  # a signal waits for this epoch and its save
        params, train_loss = epoch_fn(params, keys, x_dev, y_dev)
        traj[:, ep + 1] = np.asarray(params)
        if progress is not None:
          progress.save(ep + 1, {"ids": ids, "trajectory": traj})
      record = {"phase": "experts", "experts": list(group), "epoch": ep + 1,
                "train_loss": float(np.mean(train_loss)), "seconds": round(time.time() - t0, 2)}
      if x_test is not None and (ep + 1 == epochs or (ep + 1) % max(1, epochs // 5) == 0):
        record["test_acc"] = float(np.mean(acc_fn(params, x_test, y_test)))
      logging.info("experts %d-%d epoch %d/%d: loss %.4f%s (%.1fs)", group[0], group[-1],
                   ep + 1, epochs, record["train_loss"],
                   f", test acc {100 * record['test_acc']:.2f}%" if "test_acc" in record else "",
                   record["seconds"])
      if log:
        log(record)
    return traj

  return train_group


def _train_in_rounds(network, x_test, y_test, *, root, done, num_experts, epochs, parallel, seed,
                     image_shape, save_epochs, log, process_index, process_count, trainer):
  """Several processes: in round r process i trains the (r P + i)-th missing group, then
  every group of the round is gathered to process 0, which saves it (orbax writes numpy
  trees from process 0 only). Process 0's `done` decides what is missing, for everyone."""
  from datm_clr_jax import distributed  # pylint: disable=import-outside-toplevel
  done_mask = distributed.from_process_0(
      np.asarray([k in done for k in range(num_experts)], np.int32))
  missing = [k for k in range(num_experts) if not done_mask[k]]
  groups = [missing[g:g + parallel] for g in range(0, len(missing), parallel)]
  if not groups:
    logging.info("experts: all %d already trained in %s", num_experts, root)
    return
  train_group = trainer()
  for r in range(0, len(groups), process_count):
    mine = groups[r + process_index] if r + process_index < len(groups) else []
    # Only process 0 keeps in-progress checkpoints: a kill costs the others their group.
    progress = (checkpointing.StepCheckpoints(root / "in_progress", keep=1)
                if process_index == 0 and mine else None)
    traj = np.zeros((parallel, epochs + 1, network.num_params), np.float32)
    ids = np.full((parallel,), -1, np.int32)
    if mine:
      traj[:len(mine)] = train_group(mine, epochs=epochs, seed=seed, image_shape=image_shape,
                                     x_test=x_test, y_test=y_test, progress=progress, log=log)
      ids[:len(mine)] = mine
    all_traj, all_ids = distributed.gather(traj), distributed.gather(ids)
    if process_index == 0:
      for t, i in zip(all_traj, all_ids):
        group = [int(k) for k in i if k >= 0]
        _save_group(root, group, t, save_epochs or epochs)
      if progress is not None:
        progress.close()
        shutil.rmtree(progress.directory, ignore_errors=True)


def import_buffers(network: Network, source, root, *, image_shape) -> int:
  """Converts the reference's `replay_buffer_<k>.pt` files in `source` into experts in `root`.

  Buffers are read in order of k; their trajectories become experts 0, 1, ... with the
  PyTorch layouts converted (torch_io). Returns the number of experts written. Needs torch.
  """
  from datm_clr_jax import torch_io  # pylint: disable=import-outside-toplevel

  source, root = Path(source), Path(root)
  files = sorted(source.glob("replay_buffer_*.pt"), key=lambda p: int(p.stem.split("_")[-1]))
  if not files:
    raise checkpointing.CheckpointError(f"no replay_buffer_<k>.pt files in {source}")
  _write_meta(root, {"num_params": network.num_params, "image_shape": list(image_shape),
                     "num_classes": network.module.num_classes,
                     "imported_from": str(source.resolve())})
  k = 0
  for f in files:
    for traj in torch_io.load_replay_buffer(f, network):
      if not expert_path(root, k).exists():
        checkpointing.save_tree(expert_path(root, k), {"trajectory": traj})
      k += 1
    logging.info("experts: imported %s (%d experts so far)", f.name, k)
  return k


def load_trajectories(root, *, num_params: int, num_experts: int | None = None,
                      min_length: int = 0, return_final: bool = False):
  """Loads saved trajectories as one array (K, T, P).

  Args:
    root: experts directory.
    num_params: expected P (guards against experts of another model or dataset).
    num_experts: how many to load (default: all finished).
    min_length: the smallest T the caller will index (max_start_epoch + expert_epochs + 1).
    return_final: also return the final-epoch parameters (K, P) (the last snapshot when a
      trajectory was stored without them, e.g. one imported from PyTorch).
  """
  root = Path(root)
  ids = finished_experts(root)
  if not ids:
    raise checkpointing.CheckpointError(
        f"no expert trajectories in {root}; run --mode=experts first")
  if num_experts is not None:
    if len(ids) < num_experts:
      raise checkpointing.CheckpointError(
          f"{root} has {len(ids)} finished experts, {num_experts} requested; run --mode=experts")
    ids = ids[:num_experts]
  trees = [checkpointing.restore_tree(expert_path(root, k)) for k in ids]
  shapes = {np.shape(t["trajectory"]) for t in trees}
  if len(shapes) > 1:
    raise checkpointing.CheckpointError(
        f"trajectories in {root} differ in shape ({sorted(shapes)}): experts of different runs "
        "or buffers were mixed in one folder")
  out = np.stack([np.asarray(t["trajectory"]) for t in trees])
  if out.shape[2] != num_params:
    raise checkpointing.CheckpointError(
        f"experts in {root} have {out.shape[2]} parameters, the configured model has "
        f"{num_params}: they belong to another model or dataset")
  if out.shape[1] < min_length:
    raise checkpointing.CheckpointError(
        f"trajectories in {root} have {out.shape[1]} snapshots, but distillation reads up to "
        f"index {min_length - 1} (max_start_epoch + expert_epochs); train longer experts or "
        "lower distill.max_start_epoch")
  if return_final:
    return out, np.stack([np.asarray(t.get("final", t["trajectory"][-1])) for t in trees])
  return out
