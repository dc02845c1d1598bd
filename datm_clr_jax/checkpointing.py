"""All orbax use lives here: pytree save/restore and a step-indexed manager for resumable runs.

Writes are atomic (orbax writes to a temporary directory and renames), so a kill mid-save leaves
the previous checkpoint intact. Unreadable checkpoints raise `CheckpointError` with the path.
The small JSON files beside the checkpoints (results, selection, expert metadata) are written
the same way, through `write_json`; `read_jsonl` reads metrics.jsonl, which is appended to.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from datm_clr_jax import distributed
from datm_clr_jax.errors import CheckpointError


class _QuietOrbax(std_logging.Filter):
  """Orbax logs every save at INFO through absl; that drowns a run's progress lines."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


std_logging.getLogger("absl").addFilter(_QuietOrbax())


def write_text(path: Path, text: str) -> None:
  """Writes text through a temporary file, so a kill never leaves half a file."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
  """Writes obj as JSON, whole or not at all (write_text)."""
  write_text(path, json.dumps(obj, indent=1))


def read_jsonl(path: Path) -> list[dict]:
  """The records of a JSON-lines file such as metrics.jsonl; [] when there is no file.

  A line that is not JSON (the half-written last line of a killed run) is skipped with a
  warning, so the run that resumes after the kill can still read and rewrite the file.
  """
  path = Path(path)
  if not path.exists():
    return []
  records = []
  for i, line in enumerate(path.read_text().splitlines()):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      logging.warning("%s line %d is not JSON (a run killed while writing it?); skipped",
                      path, i + 1)
  return records


def _abs(path) -> Path:
  return Path(path).expanduser().resolve()


def _this_process_only() -> ocp.options.MultiprocessingOptions:
  """Every file here is written by one process for itself (experts are split between the
  processes of a distributed run, distillation runs alone), so orbax must not wait for the
  others: this process is its own primary host."""
  me = distributed.index()
  return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                            barrier_sync_key_prefix=f"process{me}")


def _checkpointer() -> ocp.StandardCheckpointer:
  if distributed.count() == 1:
    return ocp.StandardCheckpointer()
  return ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())


def save_tree(path, tree: Any) -> None:
  """Saves a pytree of arrays to `path` (a directory), replacing what is there."""
  ckpt = _checkpointer()
  ckpt.save(_abs(path), jax.tree_util.tree_map(np.asarray, tree), force=True)
  ckpt.wait_until_finished()


def restore_tree(path, target: Any | None = None) -> Any:
  """Restores the pytree saved at `path`; `target` (arrays or ShapeDtypeStructs) fixes shapes."""
  p = _abs(path)
  if not p.exists():
    raise CheckpointError(f"no checkpoint at {p}")
  try:
    ckpt = _checkpointer()
    if target is None:
      return ckpt.restore(p)
    return ckpt.restore(p, jax.tree_util.tree_map(np.asarray, target))
  except Exception as e:
    raise CheckpointError(f"checkpoint {p} could not be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); delete it to start over") from e


class StepCheckpoints:
  """Step-numbered checkpoints of one pytree in `directory`, keeping the newest `keep`."""

  def __init__(self, directory, keep: int = 2):
    self.directory = _abs(directory)
    extra = {"create": True}
    if distributed.count() > 1:  # orbax then leaves creating the folder to us
      self.directory.mkdir(parents=True, exist_ok=True)
      extra = {"create": False, "multiprocessing_options": _this_process_only()}
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, **extra))

  def save(self, step: int, tree: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(
        jax.tree_util.tree_map(np.asarray, tree)), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, target: Any) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(
          jax.tree_util.tree_map(np.asarray, target)))
    except Exception as e:
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} could not be read "
          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); delete that step's folder "
          "to resume from an earlier one, or the whole folder to start over") from e

  def restore_latest(self, target: Any) -> tuple[int, Any] | None:
    """(step, tree) of the newest readable checkpoint, or None if there is none."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        return step, self.restore(step, target)
      except CheckpointError as e:
        logging.warning("%s; trying an older one", e)
    if steps:
      raise CheckpointError(f"none of the checkpoints {steps} in {self.directory} is readable; "
                            "delete the folder to start over")
    return None

  def close(self) -> None:
    self._manager.close()
