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
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from datm_clr_jax import distributed
from datm_clr_jax.errors import CheckpointError


class _QuietOrbax(std_logging.Filter):
  """Orbax logs every save at INFO through absl, which drowns a run's progress lines; every
  metadata file it cannot read, which StepCheckpoints reports in one line; and a failed
  write's traceback from its background thread, whose exception reaches the caller anyway."""

  def filter(self, record):
    if "/orbax/" not in record.pathname:
      return True
    return (record.levelno >= std_logging.WARNING and "etadata" not in record.getMessage()
            and not record.exc_info)


std_logging.getLogger("absl").addFilter(_QuietOrbax())


def _drop_closed_loop_callbacks(hook):
  """When a restore fails, orbax closes its event loop while tensorstore's other reads still
  hold callbacks into it; each then raises 'Event loop is closed' where nothing can catch it.
  The failure itself is reported (StepCheckpoints); these echoes are dropped."""

  def unraisable(info):
    if not (isinstance(info.exc_value, RuntimeError)
            and str(info.exc_value) == "Event loop is closed"):
      hook(info)

  return unraisable


sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


def write_text(path: Path, text: str) -> None:
  """Writes text through a temporary file, so a kill never leaves half a file."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  try:
    tmp.write_text(text)
  except OSError as e:  # a write error names no file: name it
    tmp.unlink(missing_ok=True)
    raise OSError(e.errno, e.strerror, str(path)) from e
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


_TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's name for a folder it has not finished writing


class StepCheckpoints:
  """Step-numbered checkpoints of one pytree in `directory`, keeping the newest `keep`.

  Partial writes a kill left behind (orbax's temporary folders) are removed when it opens. A
  step that cannot be read is moved aside, never deleted: restore_latest renames it
  `<step>.unreadable-<time>` with the reason in its reason.txt, and resumes from the newest
  readable one, so the run saves that step again when it gets there. Usable as a context
  manager (closed on exit).
  """

  def __init__(self, directory, keep: int = 2):
    self.directory = _abs(directory)
    remove_partial_writes(self.directory)
    extra = {"create": True}
    if distributed.count() > 1:  # orbax then leaves creating the folder to us
      self.directory.mkdir(parents=True, exist_ok=True)
      extra = {"create": False, "multiprocessing_options": _this_process_only()}
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, **extra))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def save(self, step: int, tree: Any) -> None:
    """Saves `tree` as `step`, whole or not at all: a failed write (a full disk) leaves the
    previous steps as they were and no partial folder."""
    try:
      self._manager.save(step, args=ocp.args.StandardSave(
          jax.tree_util.tree_map(np.asarray, tree)), force=True)
      self._manager.wait_until_finished()
    except BaseException:
      try:  # a write still under way in orbax's threads would refill the folder removed below
        self._manager.wait_until_finished()
      except BaseException:  # noqa: BLE001 -- the first error is the one to report
        pass
      remove_partial_writes(self.directory)
      raise

  def restore(self, step: int, target: Any) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(
          jax.tree_util.tree_map(np.asarray, target)))
    except Exception as e:
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} could not be read "
          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e

  def restore_latest(self, target: Any) -> tuple[int, Any] | None:
    """(step, tree) of the newest readable checkpoint, or None if there is none.

    Raises CheckpointError, moving nothing, when a step is readable but holds other shapes
    than `target` (a run of another config); moves unreadable steps aside (class docstring).
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      stored = self._stored_shapes(step)
      if stored is not None:
        wanted = _shapes(target)
        if stored != wanted:
          diff = ", ".join(f"{k} {stored.get(k, '-')} (this run: {wanted.get(k, '-')})"
                           for k in sorted(set(stored) | set(wanted))
                           if stored.get(k) != wanted.get(k))
          raise CheckpointError(f"checkpoint step {step} in {self.directory} holds another "
                                f"run's state: {diff}; use another --workdir")
      try:
        return step, self.restore(step, target)
      except CheckpointError as e:
        aside = self._move_aside(step, str(e))
        logging.warning("%s; moved aside to %s, resuming from an older one", e, aside.name)
    return None

  def _stored_shapes(self, step: int) -> dict | None:
    """The step's array shapes by path, or None when its metadata cannot be read."""
    try:
      meta = _checkpointer().metadata(self.directory / str(step) / "default")
      meta = getattr(meta, "item_metadata", meta)
    except Exception:  # noqa: BLE001 -- unreadable: the restore that follows says why
      return None
    return None if meta is None else _shapes(meta)

  def _move_aside(self, step: int, reason: str) -> Path:
    aside = self.directory / f"{step}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}"
    os.replace(self.directory / str(step), aside)
    (aside / "reason.txt").write_text(reason + "\n")
    self._manager.reload()
    return aside

  def close(self) -> None:
    self._manager.close()


def _shapes(tree) -> dict[str, tuple]:
  """{'opt_images/0/trace': (10, 8, 8, 1), ...}: a tree's array shapes by path, the same for
  a dataclass and the nested dicts orbax stores it as."""
  return {"/".join(re.findall(r"\w+", jax.tree_util.keystr(path))): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def remove_partial_writes(directory) -> None:
  """Removes the temporary folders orbax writes before renaming, left by a kill mid-save
  (the checkpoint they were becoming never existed; the previous one is intact)."""
  directory = Path(directory)
  if directory.is_dir():
    for tmp in directory.glob(f"*{_TMP_MARK}*"):
      for _ in range(3):  # a file appearing mid-removal leaves the folder: try again
        shutil.rmtree(tmp, ignore_errors=True)
        if not tmp.exists():
          break
      logging.info("removed %s, a checkpoint write a kill interrupted", tmp)

