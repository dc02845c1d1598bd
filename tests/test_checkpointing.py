"""Orbax round trips, corrupt checkpoints, expert trajectories and resumed distillation."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from datm_clr_jax import checkpointing, experts, models, pipeline, step


def test_json_is_replaced_whole(tmp_path):
  path = tmp_path / "results.json"
  checkpointing.write_json(path, {"a": [1, 2]})
  checkpointing.write_json(path, {"b": 3.5})
  assert json.loads(path.read_text()) == {"b": 3.5}
  assert [f.name for f in tmp_path.iterdir()] == ["results.json"]  # no temporary file left


def test_jsonl_skips_a_half_written_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  assert checkpointing.read_jsonl(path) == []
  path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "l_t')  # killed mid-line
  assert checkpointing.read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_tree_round_trip(tmp_path):
  tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.int32(7)}}
  checkpointing.save_tree(tmp_path / "t", tree)
  got = checkpointing.restore_tree(tmp_path / "t")
  np.testing.assert_array_equal(got["a"], tree["a"])
  assert int(got["b"]["c"]) == 7


def test_missing_and_corrupt_checkpoints(tmp_path):
  with pytest.raises(checkpointing.CheckpointError, match="no checkpoint"):
    checkpointing.restore_tree(tmp_path / "nothing")
  checkpointing.save_tree(tmp_path / "t", {"a": np.ones(3, np.float32)})
  for f in (tmp_path / "t").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with pytest.raises(checkpointing.CheckpointError, match="could not be read"):
    checkpointing.restore_tree(tmp_path / "t")


def test_distill_state_round_trip(tmp_path):
  opt = step.OuterOptim(lr_img=1.0, lr_lr=1e-5, lr_y=2.0)
  rng = np.random.default_rng(0)
  state = step.init_state(rng.normal(size=(4, 8, 8, 3)), rng.normal(size=(4, 4)), 0.02, opt)
  state = state.replace(iteration=jnp.int32(5))
  ckpt = checkpointing.StepCheckpoints(tmp_path / "d", keep=2)
  ckpt.save(5, state)
  template = step.init_state(np.zeros((4, 8, 8, 3)), np.zeros((4, 4)), 0.01, opt)
  done, got = ckpt.restore_latest(template)
  assert done == 5
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(got)):
    np.testing.assert_array_equal(a, b)
  # A corrupt newest step falls back, loudly, to the previous one.
  ckpt.save(6, state.replace(iteration=jnp.int32(6)))
  for f in (tmp_path / "d" / "6").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"x")
  done, _ = ckpt.restore_latest(template)
  assert done == 5
  ckpt.close()


def test_expert_trajectories_round_trip_and_resume(tmp_path):
  net = models.make_network("convnet", 3, (8, 8, 1), width=4, depth=1)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 8, 8, 1)).astype(np.float32)
  y = np.repeat(np.arange(3), 10).astype(np.int32)
  kw = dict(root=tmp_path / "experts", epochs=2, lr=0.01, batch_size=10, parallel=2,
            strategy="flip", dsa_mode="single", seed=0, image_shape=(8, 8, 1))
  experts.train_experts(net, x, y, x, y, num_experts=2, **kw)
  traj = experts.load_trajectories(tmp_path / "experts", num_params=net.num_params)
  assert traj.shape == (2, 3, net.num_params)
  assert not np.allclose(traj[0, 0], traj[0, 2]) and not np.allclose(traj[0], traj[1])
  # A third expert resumes from the first two; expert 0 and 1 are not retrained.
  experts.train_experts(net, x, y, x, y, num_experts=3, **kw)
  traj3 = experts.load_trajectories(tmp_path / "experts", num_params=net.num_params)
  np.testing.assert_array_equal(traj3[:2], traj)
  with pytest.raises(checkpointing.CheckpointError, match="parameters"):
    experts.load_trajectories(tmp_path / "experts", num_params=5)
  with pytest.raises(checkpointing.CheckpointError, match="snapshots"):
    experts.load_trajectories(tmp_path / "experts", num_params=net.num_params, min_length=9)
  with pytest.raises(checkpointing.CheckpointError, match="trained with"):
    experts.train_experts(net, x, y, x, y, num_experts=3, **{**kw, "lr": 0.5})


def test_resumed_distillation_continues_the_same_run(tmp_path, monkeypatch):
  # Also exercises validation selection (held-out split, best iteration kept) on the way.
  config = tiny_config()
  config.eval.random_real = False
  config.distill.select = "val"
  config.distill.val_per_class = 5
  config.distill.select_every = 2
  config.distill.select_epochs = 2
  straight = pipeline.Run(config, str(tmp_path / "a"))
  full_train = len(pipeline.data.load_dataset("digits").y_train)
  assert len(straight.prepared.x_train) == full_train - 50 == len(
      straight.prepared.dataset.y_train)
  assert len(straight.x_val) == 50 and set(np.bincount(straight.y_val)) == {5}
  straight.experts()
  full = straight.distill()
  records = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
  selected = [r for r in records if r["phase"] == "select"]
  assert [r["step"] for r in selected] == [2, 4]
  best = json.loads((tmp_path / "a" / "best" / "best.json").read_text())
  assert best["val_acc"] == max(r["val_acc"] for r in selected)
  results = straight.evaluate()
  assert results["protocol"]["selection"].startswith("best validation accuracy")
  assert f"iteration {best['iteration']}" in results["protocol"]["selection"]
  _interrupted_evaluation_resumes(straight, results, monkeypatch)
  # Second workdir shares the experts; stop at iteration 2, then resume to 4.
  config.experts.dir = str(tmp_path / "a" / "experts")
  config.distill.iterations = 2
  part = pipeline.Run(config, str(tmp_path / "b"))
  half = part.distill()
  assert int(half.iteration) == 2
  config.distill.iterations = 4
  with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
    f.write('{"phase": "distill", "st')  # the run was killed while logging
  resumed = pipeline.Run(config, str(tmp_path / "b")).distill()
  assert int(resumed.iteration) == 4
  np.testing.assert_array_equal(resumed.syn_images, full.syn_images)
  np.testing.assert_array_equal(resumed.syn_labels, full.syn_labels)
  np.testing.assert_array_equal(resumed.syn_lr, full.syn_lr)
  lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
  steps = [int(l.split('"step": ')[1].split(",")[0]) for l in lines if '"distill"' in l]
  assert steps == [1, 2, 3, 4]


def _interrupted_evaluation_resumes(run, results, monkeypatch):
  """results.json is written per (network, set); a second call keeps what it holds."""
  path = run.workdir / "results.json"
  calls, real = [], pipeline.evaluate.evaluate_synset

  def recording(*args, label, **kw):
    calls.append(label)
    if label.startswith("evaluate random real") and len(calls) == 1:
      raise KeyboardInterrupt  # killed during the second set
    return real(*args, label=label, **kw)

  monkeypatch.setattr(pipeline.evaluate, "evaluate_synset", recording)
  run.config.eval.random_real = True
  with pytest.raises(KeyboardInterrupt):
    run.evaluate()
  assert calls == ["evaluate random real (convnet)"]  # the distilled set's numbers were kept
  assert json.loads(path.read_text())["distilled"] == results["distilled"]
  resumed = run.evaluate()
  assert calls[1:] == ["evaluate random real (convnet)"]
  assert resumed["distilled"] == results["distilled"] and "convnet" in resumed["random_real"]
  # eval.resume=False evaluates both sets again, to the same numbers (the same seeds).
  run.config.eval.resume = False
  again = run.evaluate()
  assert calls[2:] == ["evaluate distilled (convnet)", "evaluate random real (convnet)"]
  assert again["distilled"] == resumed["distilled"]
  assert again["random_real"] == resumed["random_real"]
  assert json.loads(path.read_text()) == again
  run.config.eval.random_real, run.config.eval.resume = False, True
  monkeypatch.undo()


def _corrupt(step_dir, how):
  files = [f for f in step_dir.rglob("*") if f.is_file() and f.stat().st_size > 0]
  data = [f for f in files if f.parent.name == "d"]
  if how == "overwritten":
    for f in files:
      f.write_bytes(b"x")
  elif how == "truncated":
    for f in data:
      f.write_bytes(f.read_bytes()[:3])
  else:  # garbled metadata, data intact
    for f in files:
      if "METADATA" in f.name:
        f.write_text("{garbled")


def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_run_goes_past_it(tmp_path):
  """Overwritten, truncated or garbled newest steps: the rerun resumes from the newest good
  step, keeps the bad one under <step>.unreadable-<time> with its reason, writes that step
  anew, and ends on the uninterrupted run's arrays; an interrupted write's temp folder goes."""
  config = tiny_config()  # 4 iterations, a checkpoint every 2
  config.data.cache_dir = str(tmp_path / "cache")
  straight = pipeline.Run(config, str(tmp_path / "a"))
  straight.experts()
  full = straight.distill()
  config.experts.dir = str(tmp_path / "a" / "experts")
  for how in ("overwritten", "truncated", "garbled"):
    work = tmp_path / how
    shutil.copytree(tmp_path / "a", work, ignore=shutil.ignore_patterns("experts", ".lock"))
    _corrupt(work / "distill" / "4", how)
    (work / "distill" / "6.orbax-checkpoint-tmp-1765000000").mkdir()  # a kill mid-save
    again = pipeline.Run(config, str(work)).distill()
    names = sorted(p.name for p in (work / "distill").iterdir())
    assert names[:2] == ["2", "4"] and names[2].startswith("4.unreadable-"), (how, names)
    assert len(names) == 3, names
    assert "could not be read" in (work / "distill" / names[2] / "reason.txt").read_text()
    np.testing.assert_array_equal(again.syn_images, full.syn_images)
    np.testing.assert_array_equal(again.syn_lr, full.syn_lr)
