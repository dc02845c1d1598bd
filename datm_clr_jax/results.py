"""What a run leaves behind: results.json, the distilled set's files and the export folder.

results.json holds, per evaluation network, the accuracy of the distilled set and of the
random-real baseline, with the protocol that produced them; `merge_archs` lets a later
evaluation of the same set on other networks add to it instead of replacing it.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from datm_clr_jax import step, torch_io, visualize
from datm_clr_jax.data import Prepared
from datm_clr_jax.errors import TorchIOError


# The sets results.json may hold, each {arch: summary}: the distilled images, FTD's moving
# average of them, and the random real baseline.
SETS = ("distilled", "distilled_ema", "random_real", "distilled_hard", "distilled_noaug",
        "random_real_noaug", "random_teacher", "random_teacher_noaug", "scores", "full_data")


def full_data_key(config: ml_collections.ConfigDict, arch: str) -> str:
  """What a full-data accuracy depends on: data, ZCA, network, DSA and the training recipe."""
  from datm_clr_jax import experts  # pylint: disable=import-outside-toplevel
  m, e = config.model, config.eval
  parts = (experts.kind(config)["data.source"], config.data.image_size, config.data.zca,
           config.data.zca_eps, arch, m.width, m.depth, m.norm, config.dsa.strategy,
           config.dsa.mode, e.full_epochs, e.full_lr, e.full_batch_size, e.full_seeds,
           e.momentum, e.weight_decay)
  if e.keep != "final":  # keys written before the option existed stay the same
    parts += (e.keep, e.test_every)
  return "|".join(str(p) for p in parts)


def method_name(config: ml_collections.ConfigDict) -> str:
  """config.method for MTT, TESLA and FTD; for DATM's family 'datm_clr' when the contrastive
  term is on, else 'datm' (what the switches make, whatever the preset's name)."""
  if config.method not in ("datm", "datm_clr"):
    return config.method
  c = config.clr
  return "datm_clr" if step.contrast_on(c.strategy, c.alpha, c.lam) else "datm"


def class_one_hot(n: int, num_classes: int) -> np.ndarray:
  """(n, num_classes) one-hot rows of a class-major set of n images."""
  return np.eye(num_classes, dtype=np.float32)[np.arange(n) * num_classes // n]


def label_distribution(config: ml_collections.ConfigDict, syn_labels: np.ndarray
                       ) -> np.ndarray:
  """(n, C) the labels an evaluation trains on: one-hot classes (class-major) for sets
  distilled with hard or teacher labels (TESLA's teacher labels are per iteration, not
  kept), else the softmax of the label logits."""
  if config.distill.labels in ("hard", "teacher"):
    return class_one_hot(*syn_labels.shape)
  return np.asarray(jax.nn.softmax(jnp.asarray(syn_labels, jnp.float32), axis=-1))


def header(config: ml_collections.ConfigDict, *, num_classes: int, ipc: int, syn_lr: float,
           seeds: list[int], iteration: int | None, selection: str, external: dict | None
           ) -> dict:
  """results.json without its numbers: the set, the seeds and the protocol."""
  d, e = config.distill, config.eval
  results = {"dataset": config.data.source, "ipc": ipc,
             "method": "external" if external else method_name(config),
             "distilled": {}, "syn_lr": syn_lr, "eval_seeds": seeds,
             "protocol": {"eval_epochs": e.epochs, "num_inner_steps": d.num_inner_steps,
                          "distill_iterations": iteration,
                          "distill_iterations_configured": d.iterations,
                          "num_experts": config.experts.num_experts,
                          "expert_epochs_trained": config.experts.epochs,
                          "model": config.model.to_dict(), "clr": config.clr.to_dict(),
                          "config_name": config.name, "num_classes": num_classes,
                          "selection": selection}}
  # Written only when not the reference's value, so results written before these settings
  # existed still count as the same protocol and merge.
  if d.num_segments != 1:
    results["protocol"]["num_segments"] = d.num_segments
  if d.student_momentum:
    results["protocol"]["student_momentum"] = d.student_momentum
  for field, reference in (("labels", "learned"), ("gradient", "unrolled"), ("ema_decay", 0.0),
                           ("init", "samples_predicted_correctly")):
    if d[field] != reference:
      results["protocol"][field] = d[field]
  if config.experts.optimizer != "sgd":
    results["protocol"]["experts_optimizer"] = config.experts.optimizer
  if e.keep != "final":
    results["protocol"]["eval_keep"] = f"best test epoch of every {e.test_every}"
  if d.ema_decay and not external:
    results["distilled_ema"] = {}
  if external:
    results["external"] = external
  if e.random_real:
    results["random_real"] = {}
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
  for block in SETS:
    merged = {**old.get(block, {}), **results.get(block, {})}
    if merged:
      results[block] = merged
  return results


def format_table(results: dict) -> str:
  """A short text table of results.json."""
  rows = [("set", "arch", "accuracy % (mean +- std)", "runs")]
  for key, label in (("distilled", f"distilled ({results['method']})"),
                     ("distilled_ema", "distilled, EMA of the images"),
                     ("random_real", "random real")):
    for arch, r in results.get(key, {}).items():
      rows.append((label, arch, f"{r['mean']:.2f} +- {r['std']:.2f}",
                   " ".join(f"{x:.1f}" for x in r["runs"])))
  for arch, block in results.get("scores", {}).items():
    for name, r in block.items():
      rows.append((f"score {name.upper()}", arch, f"{r['mean']:.2f} +- {r['std']:.2f}",
                   " ".join(f"{x:.1f}" for x in r["runs"])))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return (f"{results['dataset']}, IPC {results['ipc']}, syn_lr {results['syn_lr']:.5f}\n"
          + "\n".join(lines))


def save_synset(workdir: Path, prepared: Prepared, state: step.SynState, ipc: int) -> None:
  """syn_set.npz (whitened and pixel images, label logits, syn_lr) and syn_images.png."""
  pixels = prepared.to_pixels(np.asarray(state.syn_images))
  names = prepared.dataset.class_names
  ema = {}
  if isinstance(state, step.EMASynState):
    ema = {"ema_images": np.asarray(state.ema_images),
           "ema_images_pixels": prepared.to_pixels(np.asarray(state.ema_images))}
  np.savez(Path(workdir) / "syn_set.npz", syn_images=np.asarray(state.syn_images),
           syn_images_pixels=pixels, syn_labels=np.asarray(state.syn_labels),
           syn_lr=np.asarray(state.syn_lr), class_names=np.asarray(names), **ema)
  visualize.save_grid(pixels, ipc, names, Path(workdir) / "syn_images.png")


def export(out: Path, prepared: Prepared, state: step.SynState, *, ipc: int,
           source: str) -> Path:
  """Writes `out`: syn_set.npz with the normalisation transform, the image grid, and the
  reference's images/labels/lr_best.pt under torch/ (when torch is installed)."""
  out.mkdir(parents=True, exist_ok=True)
  p = prepared
  images, labels = np.asarray(state.syn_images), np.asarray(state.syn_labels)
  norm = ({"normalisation": "zca", "zca_mean": p.zca.mean, "zca_whiten": p.zca.whiten,
           "zca_unwhiten": p.zca.unwhiten} if p.zca is not None else
          {"normalisation": "mean_std", "norm_mean": p.mean, "norm_std": p.std})
  np.savez(out / "syn_set.npz", syn_images=images, syn_images_pixels=p.to_pixels(images),
           syn_labels=labels, syn_lr=np.asarray(state.syn_lr),
           iteration=np.asarray(state.iteration), ipc=ipc,
           class_names=np.asarray(p.dataset.class_names), source=source, **norm)
  visualize.save_grid(p.to_pixels(images), ipc, p.dataset.class_names, out / "syn_images.png")
  try:
    torch_io.save_reference_synset(out / "torch", images, labels, float(state.syn_lr))
  except TorchIOError as e:
    logging.warning("export: no PyTorch files (%s)", e)
  logging.info("export: iteration %d written to %s", int(state.iteration), out)
  return out
