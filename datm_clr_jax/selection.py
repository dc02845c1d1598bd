"""Choosing an iteration without the test set (distill.select='val').

A validation split of `val_per_class` training images per class is held out of every phase;
every `select_every` iterations a short evaluation on it scores the current set, and the best
state is kept in <workdir>/best/ for the final evaluation.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from absl import logging

from datm_clr_jax import checkpointing, evaluate
from datm_clr_jax.data import Prepared
from datm_clr_jax.errors import CheckpointError, ConfigError

NUM_SEEDS = 2  # short evaluations per check


def hold_out_validation(prepared: Prepared, per_class: int
                        ) -> tuple[Prepared, np.ndarray, np.ndarray]:
  """(the prepared data without the split, x_val (m,H,W,C), y_val (m,)).

  The split depends only on the data (seed 0), so every distillation seed, the experts and
  the random-real baseline see the same reduced training set; the test set is untouched.
  """
  y = prepared.dataset.y_train
  counts = np.bincount(y)
  if per_class >= counts.min():
    raise ConfigError(f"config.distill.val_per_class={per_class} leaves no training images "
                      f"in the smallest class ({counts.min()} images)")
  rng = np.random.default_rng(0)
  val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class]
                        for c in range(len(counts))])
  keep = np.setdiff1d(np.arange(len(y)), val)
  reduced = dataclasses.replace(
      prepared, x_train=prepared.x_train[keep],
      dataset=dataclasses.replace(prepared.dataset, x_train=prepared.dataset.x_train[keep],
                                  y_train=y[keep]))
  return reduced, prepared.x_train[val], y[val]


def make_selector(network, cfg: evaluate.EvalConfig, x_val, y_val, *, seed: int, best_dir: Path,
                  log, mesh=None):
  """on_every(done, state) for the outer loop: scores the set on the validation split and
  keeps the best state in best_dir (best.json says which iteration and its accuracy)."""
  seeds = [20_000 + 100 * seed + i for i in range(NUM_SEEDS)]
  best_file = best_dir / "best.json"

  def select(done, state):
    runs = evaluate.evaluate_synset(
        network, state.syn_images, jax.nn.softmax(state.syn_labels, axis=-1),
        float(state.syn_lr), x_val, y_val, seeds=seeds, cfg=cfg, mesh=mesh)
    acc = float(np.mean(runs))
    best = json.loads(best_file.read_text()) if best_file.exists() else None
    improved = best is None or acc > best["val_acc"]
    log({"phase": "select", "step": done, "val_acc": acc, "improved": improved})
    logging.info("select: iteration %d, validation accuracy %.2f%s", done, acc,
                 " (best so far)" if improved else "")
    if improved:
      checkpointing.save_tree(best_dir / "state", state)
      checkpointing.write_json(best_file, {"iteration": done, "val_acc": acc})

  return select


def load_best(best_dir: Path, template):
  """(the selected state, best.json's record) from best_dir; template fixes the shapes."""
  best_file = best_dir / "best.json"
  if not best_file.exists():
    raise CheckpointError(f"distill.select='val' but {best_dir} holds no selected state; run "
                          "--mode=distill with this config first")
  state = checkpointing.restore_tree(best_dir / "state", template)
  return state, json.loads(best_file.read_text())
