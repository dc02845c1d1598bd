"""A run's metrics: metrics.jsonl (`MetricsLog`), mirrored to TensorBoard and Weights & Biases.

metrics.jsonl stays the record a run resumes from and the report reads; the writers only
mirror its scalars for the dashboards people already use. Both are optional dependencies:
TensorBoard files need tensorboardX (the `tensorboard` extra; no TensorFlow), wandb needs
`pip install wandb` and `config.logging.wandb_project`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from absl import logging

from datm_clr_jax import checkpointing

# Distillation record fields drawn as scalars (the rest are bookkeeping: expert id, ...).
DISTILL_SCALARS = ("loss", "l_tm", "l_contrast", "syn_lr", "grad_norm_images", "grad_norm_tm",
                   "grad_norm_contrast", "grad_cosine", "image_rms")


def scalars(record: dict) -> tuple[int, dict[str, float]] | None:
  """(step, {tag: value}) of one metrics.jsonl record, or None if it has no scalar to show."""
  phase = record.get("phase")
  if phase == "distill":
    out = {f"distill/{k}": record[k] for k in DISTILL_SCALARS if k in record}
    out["distill/skipped"] = float(record.get("status", "accepted") != "accepted")
    return int(record["step"]), out
  if phase == "select" and "val_acc" in record:
    return int(record["step"]), {"select/val_acc": record["val_acc"]}
  if phase == "experts":
    ids = record.get("experts") or []
    group = f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0]) if ids else "all"
    out = {f"experts/{group}/{k}": record[k] for k in ("train_loss", "test_acc") if k in record}
    return int(record["epoch"]), out
  if phase == "evaluate" and record.get("runs"):
    runs = record["runs"]
    mean = sum(runs) / len(runs)
    std = math.sqrt(sum((r - mean) ** 2 for r in runs) / len(runs))
    tag = f"evaluate/{record['set']}/{record['arch']}"
    return 0, {f"{tag}/mean": mean, f"{tag}/std": std}
  return None


class TensorBoardWriter:
  """Scalars into TensorBoard event files under `logdir` (tensorboardX)."""

  def __init__(self, logdir):
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._writer = SummaryWriter(logdir=str(logdir), flush_secs=30)

  def write(self, step: int, values: dict[str, float]) -> None:
    for tag, v in values.items():
      self._writer.add_scalar(tag, float(v), step)

  def close(self) -> None:
    try:
      self._writer.close()
    except OSError:
      # A full disk: tensorboardX would try the same flush again at exit and print its
      # traceback there; what was written stays readable.
      for writer in self._writer.all_writers.values():
        writer.event_writer._closed = True  # pylint: disable=protected-access
      raise


class WandbWriter:
  """Scalars into a Weights & Biases run (offline too: WANDB_MODE=offline)."""

  def __init__(self, project: str, entity: str, name: str, config: dict, workdir: Path):
    import wandb  # pylint: disable=import-outside-toplevel
    self._wandb = wandb
    # resume="allow" with a stable id: a resumed workdir continues the same wandb run.
    self._run = wandb.init(project=project, entity=entity or None, name=name, config=config,
                           dir=str(workdir), id=_wandb_id(workdir), resume="allow")

  def write(self, step: int, values: dict[str, float]) -> None:
    # Phases count steps differently (epochs, iterations): each gets its own x-axis field.
    phase = next(iter(values)).split("/", 1)[0] if values else "run"
    self._run.log({**values, f"{phase}/step": step})

  def close(self) -> None:
    self._run.finish()


def _wandb_id(workdir: Path) -> str:
  import hashlib  # pylint: disable=import-outside-toplevel
  return hashlib.sha1(str(Path(workdir).resolve()).encode()).hexdigest()[:16]


def missing_dependency(cfg) -> str | None:
  """What a config's logging asks for that is not installed (checked before any work)."""
  if cfg.wandb_project:
    try:
      import wandb  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      return (f"config.logging.wandb_project={cfg.wandb_project!r} needs wandb: pip install "
              "wandb, or leave wandb_project empty")
  return None


def make_writers(cfg, workdir: Path, run_config: dict) -> list:
  """The writers config.logging asks for; TensorBoard is skipped (with a note) if absent."""
  writers = []
  if cfg.tensorboard:
    try:
      writers.append(TensorBoardWriter(Path(workdir) / "tensorboard"))
    except ImportError:
      logging.info("TensorBoard files off: pip install -e '.[tensorboard]' to write them")
  if cfg.wandb_project:
    writers.append(WandbWriter(cfg.wandb_project, cfg.wandb_entity, Path(workdir).name,
                               run_config, Path(workdir)))
  return writers


class MetricsLog:
  """Appends JSON records to metrics.jsonl, and their scalars to each writer."""

  def __init__(self, path: Path, writers=()):
    self.path = Path(path)
    self.writers = list(writers)

  def __call__(self, record: dict) -> None:
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:  # a write error names no file: name it
      raise OSError(e.errno, e.strerror, str(self.path)) from e
    got = scalars(record) if self.writers else None
    for w in self.writers if got else ():
      w.write(*got)

  def close(self) -> None:
    """Closes every writer; one that cannot close (a full disk) is reported, not raised, so
    the run's own error stays the one the user sees."""
    for w in self.writers:
      try:
        w.close()
      except Exception as e:  # noqa: BLE001
        logging.warning("%s did not close cleanly: %s", type(w).__name__, e)
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
