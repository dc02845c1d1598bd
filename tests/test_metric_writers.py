"""TensorBoard and wandb mirrors of metrics.jsonl: the scalars they get, and how they get them."""

import re
import struct
import sys
import types
from pathlib import Path

import pytest

from conftest import tiny_config
from datm_clr_jax import errors, metric_writers, pipeline

try:
  from tensorboardX.proto import event_pb2
except ImportError:  # the tensorboard extra is not installed
  event_pb2 = None


def _read_event_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of every event file under logdir, read from the record
  framing itself (length, crc, payload, crc), independently of the writer."""
  out: dict = {}
  for f in sorted(Path(logdir).rglob("events.out.tfevents.*")):
    data, i = f.read_bytes(), 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


read_event_scalars = _read_event_scalars if event_pb2 is not None else None


def test_scalars_of_each_phase():
  assert metric_writers.scalars({"phase": "distill", "step": 7, "l_tm": 0.5, "expert": 3,
                                 "status": "over_threshold", "grad_cosine": -0.1}) == (
      7, {"distill/l_tm": 0.5, "distill/grad_cosine": -0.1, "distill/skipped": 1.0})
  assert metric_writers.scalars({"phase": "experts", "experts": [0, 4], "epoch": 2,
                                 "train_loss": 1.5}) == (2, {"experts/0-4/train_loss": 1.5})
  step, ev = metric_writers.scalars({"phase": "evaluate", "set": "random_real",
                                     "arch": "vgg11", "runs": [10.0, 20.0]})
  assert step == 0 and ev == {"evaluate/random_real/vgg11/mean": 15.0,
                              "evaluate/random_real/vgg11/std": 5.0}
  assert metric_writers.scalars({"phase": "select", "step": 5, "note": "x"}) is None


@pytest.mark.skipif(event_pb2 is None, reason="tensorboardX (the tensorboard extra) missing")
def test_tensorboard_files_hold_what_was_logged(tmp_path):
  log = metric_writers.MetricsLog(tmp_path / "metrics.jsonl",
                            [metric_writers.TensorBoardWriter(tmp_path / "tb")])
  for step in (10, 20):
    log({"phase": "distill", "step": step, "l_tm": 1.0 / step, "status": "accepted"})
  log.close()
  tb = _read_event_scalars(tmp_path / "tb")
  assert tb["distill/l_tm"] == [(10, pytest.approx(0.1)), (20, pytest.approx(0.05))]
  assert tb["distill/skipped"] == [(10, 0.0), (20, 0.0)]
  assert len(log.records()) == 2


def test_wandb_is_checked_before_any_work_and_gets_the_scalars(tmp_path, monkeypatch):
  config = tiny_config()
  config.logging.wandb_project = "datm"
  config.logging.tensorboard = False
  monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
  with pytest.raises(errors.ConfigError, match="needs wandb: pip install wandb"):
    pipeline.Run(config, str(tmp_path / "a"))
  assert not (tmp_path / "a").exists()

  calls = []

  class FakeRun:
    def log(self, values):
      calls.append(("log", values))

    def finish(self):
      calls.append(("finish",))

  def init(**kwargs):
    calls.append(("init", kwargs))
    return FakeRun()

  monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
  run = pipeline.Run(config, str(tmp_path / "b"))
  run.log({"phase": "distill", "step": 3, "l_tm": 0.25, "status": "accepted"})
  run.log.close()
  (_, init_kwargs), (_, logged), (finish,) = calls
  assert init_kwargs["project"] == "datm" and init_kwargs["resume"] == "allow"
  assert init_kwargs["config"]["logging"]["wandb_project"] == "datm"
  assert logged == {"distill/l_tm": 0.25, "distill/skipped": 0.0, "distill/step": 3}


def test_a_real_wandb_run_offline_resumes_the_same_run(tmp_path, monkeypatch):
  """The real library, offline: the run lives in the workdir under a stable id, so a
  resumed workdir continues the same wandb run."""
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  ids = []
  for _ in range(2):
    w = metric_writers.WandbWriter("datm-test", "", "run", {"a": 1}, tmp_path)
    w.write(3, {"distill/l_tm": 0.25})
    w.close()
    ids.append(sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*")))
  stable = metric_writers._wandb_id(tmp_path)  # pylint: disable=protected-access
  # offline-run-<time>-<id>, and a "-1" suffix when both runs start in the same second.
  run_dir = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{stable}(-\d+)?")
  assert len(ids[-1]) == 2 and all(run_dir.fullmatch(name) for name in ids[-1]), (ids, stable)
