"""The command line: a tiny end-to-end run, every config file, and bad input."""

import json
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from datm_clr_jax import pipeline, torch_io

TINY_FLAGS = [f"--config.{k}={v}" for k, v in {
    "data.image_size": 8, "model.width": 8, "model.depth": 1, "experts.num_experts": 2,
    "experts.epochs": 3, "experts.batch_size": 128, "experts.parallel": 2,
    "distill.iterations": 3, "distill.num_inner_steps": 2, "distill.max_start_epoch": 2,
    "distill.current_max_start_epoch": 2, "distill.log_every": 1, "clr.proj_dim": 8,
    "eval.num_eval": 2, "eval.epochs": 4, "dsa.strategy": "color_crop_flip"}.items()]


def _main(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "datm_clr_jax", *args], capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT)


def test_main_writes_every_output(tmp_path):
  out = _main("--config=configs/quickstart.py", f"--workdir={tmp_path}", *TINY_FLAGS)
  assert out.returncode == 0, out.stderr[-3000:]
  for name in ("config.json", "metrics.jsonl", "syn_images.png", "results.json", "syn_set.npz",
               "curves.png"):
    assert (tmp_path / name).exists(), name
  assert any((tmp_path / "experts").glob("expert_*"))
  assert any((tmp_path / "distill").iterdir())
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["dataset"] == "digits" and results["ipc"] == 1
  assert results["method"] == "datm_clr"
  for key in ("distilled", "random_real"):
    r = results[key]["convnet"]
    assert len(r["runs"]) == 2 and 0 <= r["mean"] <= 100 and r["std"] >= 0
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {r["phase"] for r in records} == {"experts", "distill", "evaluate"}
  # TensorBoard mirrors metrics.jsonl's scalars (when tensorboardX is installed).
  from test_metric_writers import read_event_scalars
  if read_event_scalars is not None:
    tb = read_event_scalars(tmp_path / "tensorboard")
    assert tb["distill/l_tm"] == [(r["step"], pytest.approx(r["l_tm"])) for r in records
                                  if r["phase"] == "distill"]
    assert "evaluate/distilled/convnet/mean" in tb and "experts/0-1/train_loss" in tb
  assert "accuracy" in out.stdout  # the printed table
  # Export, then evaluate the exported set as an outside set: the same numbers come back.
  export = _main("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--mode=export",
                 *TINY_FLAGS)
  assert export.returncode == 0, export.stderr[-3000:]
  with np.load(tmp_path / "export" / "syn_set.npz") as f:
    assert str(f["normalisation"]) == "zca" and f["zca_whiten"].shape == (64, 64)
    assert int(f["iteration"]) == 3 and f["syn_images"].shape == (10, 8, 8, 1)
    exported = {k: f[k] for k in ("syn_images", "syn_labels", "syn_lr")}
  if (tmp_path / "export" / "torch").exists():  # the optional torch extra is installed
    ref = torch_io.load_reference_synset(tmp_path / "export" / "torch", num_classes=10)
    np.testing.assert_array_equal(ref["syn_images"], exported["syn_images"])
    np.testing.assert_array_equal(ref["syn_labels"], exported["syn_labels"])
  again = _main("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--mode=evaluate",
                "--config.eval.random_real=false",
                f"--config.eval.synset={tmp_path / 'export' / 'syn_set.npz'}", *TINY_FLAGS)
  assert again.returncode == 0, again.stderr[-3000:]
  external = json.loads((tmp_path / "results_external.json").read_text())
  assert external["method"] == "external"
  assert external["distilled"]["convnet"]["runs"] == results["distilled"]["convnet"]["runs"]


def test_outside_synset_that_does_not_fit_is_refused(tmp_path):
  run = pipeline.Run(tiny_config(), str(tmp_path))  # 8x8 digits, 10 classes
  good = dict(syn_images=np.zeros((10, 8, 8, 1), np.float32),
              syn_labels=np.zeros((10, 10), np.float32), syn_lr=0.01, normalisation="zca")
  for name, change, message in [
      ("size", {"syn_images": np.zeros((10, 16, 16, 1), np.float32)}, "data.image_size"),
      ("classes", {"syn_labels": np.zeros((10, 7), np.float32)}, r"expected \(10, 10\)"),
      ("norm", {"normalisation": "mean_std"}, "config.data.zca"),
      ("nan", {"syn_lr": np.nan}, "NaN"),
  ]:
    np.savez(tmp_path / f"{name}.npz", **{**good, **change})
    with pytest.raises(pipeline.ConfigError, match=message):
      run.external_synset(str(tmp_path / f"{name}.npz"))
  with pytest.raises(pipeline.ConfigError, match="expected an exported .npz"):
    run.external_synset(str(tmp_path / "missing.npz"))


def _has_wandb():
  try:
    import wandb  # noqa: F401
    return True
  except ImportError:
    return False


BAD_INPUTS = [  # (flags, what the one line must say); {f} is a file, not a folder
    (["--config.eval.synset=/nope"], "config.eval.synset=/nope: no such file"),
    (["--config.nosuch=1"], "--config.nosuch: the config has no field 'nosuch'"),
    (["--config.distill.nosuch=1"], "--config.distill.nosuch: the config has no field"),
    (["--config.distill.ipc=abc"], "--config.distill.ipc=abc"),
    (["--config=configs/nope.py"], "--config=configs/nope.py: no such file"),
    (["--config.data.source=mnistt"], "unknown dataset source"),
    (["--config.data.source=image_folder:/no/such/dir"], "/no/such/dir does not exist"),
    (["--config.data.source=cifar:/no/such"], "/no/such does not exist"),
    (["--config.experts.import_dir=/nope"], "import_dir=/nope: no such folder"),
    (["--config.experts.dir={f}"], "is a file, not a folder"),
    (["--config.clr.loss=triplet"], "clr.loss"),
    (["--config.clr.views=both"], "config.clr.views='both' is not one of"),
    (["--config.distill.student_momentum=1.5"], "student_momentum must lie in [0, 1)"),
    (["--config.clr.through_student=False", "--config.clr.strategy=update"],
     "use clr.strategy='fusion'"),
    (["--mode=distill"], "no expert trajectories in"),
    (["--mode=export"], "run --mode=distill first"),
] + ([] if _has_wandb() else [(["--config.logging.wandb_project=p"], "needs wandb")])


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=lambda v: str(v)[:40])
def test_bad_input_is_refused_in_one_line_before_any_work(tmp_path, args, message):
  """A non-zero exit, exactly one line on stderr that says what to do, and nothing trained."""
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  workdir = tmp_path / "run"
  out = _main("--config=configs/quickstart.py", f"--workdir={workdir}",
              *[a.format(f=a_file) for a in args], timeout=120)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
  assert message in lines[0]
  assert not (workdir / "experts").exists()


def test_a_data_dependent_error_comes_before_the_experts(tmp_path):
  out = _main("--config=configs/quickstart.py", f"--workdir={tmp_path}",
              "--config.distill.ipc=1000", timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  # Log lines (absl's "I1201 ..." records) come first; the error is the one other line.
  other = [l for l in out.stderr.splitlines() if l and not re.match(r"[IWEF]\d{4} ", l)]
  assert len(other) == 1 and "exceeds" in other[0], out.stderr[-2000:]
  assert not any((tmp_path / "experts").glob("expert_*"))


def test_evaluate_without_distillation_says_what_to_do(tmp_path):
  out = _main(f"--workdir={tmp_path}", "--mode=evaluate", timeout=120)
  assert out.returncode == 2 and "--mode=distill" in out.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_config_loads_and_validates(path):
  config = runpy.run_path(str(path))["get_config"]()
  pipeline.validate_config(config)
  assert config.name


def test_incompatible_settings_are_named():
  config = tiny_config()
  config.distill.max_start_epoch = 10
  with pytest.raises(pipeline.ConfigError, match="max_start_epoch"):
    pipeline.validate_config(config)
  config = tiny_config()
  config.model.norm = "batch"
  with pytest.raises(pipeline.ConfigError, match="model.norm"):
    pipeline.validate_config(config)
  for field, value, message in [("experts.optimizer", "adam", "experts.optimizer"),
                                ("experts.save_epochs", 9, "save_epochs"),
                                ("distill.select", "test", "distill.select"),
                                ("eval.archs", ("resnet18,vgg11",), "as a tuple"),
                                ("distill.num_segments", 0, "distill.num_segments"),
                                ("distill.segment_loop", "pmap", "distill.segment_loop"),
                                ("eval.progress_every", -1, "eval.progress_every")]:
    config = tiny_config()
    config[field.split(".")[0]][field.split(".")[1]] = value
    with pytest.raises(pipeline.ConfigError, match=message):
      pipeline.validate_config(config)
  config = tiny_config()
  config.experts.import_dir, config.experts.optimizer = "/buffers", "gsam"
  with pytest.raises(pipeline.ConfigError, match="experts.import_dir.*experts.optimizer"):
    pipeline.validate_config(config)
  config = tiny_config()
  config.distill.select, config.eval.synset = "val", "/x.npz"
  with pytest.raises(pipeline.ConfigError, match="distill.select.*eval.synset"):
    pipeline.validate_config(config)
  config = tiny_config()
  config.distill.remat, config.distill.remat_convs = False, True
  with pytest.raises(pipeline.ConfigError, match="remat_convs.*distill.remat=True"):
    pipeline.validate_config(config)


def test_a_second_evaluation_adds_architectures_of_the_same_set(tmp_path):
  path = tmp_path / "results.json"
  base = {"method": "datm", "syn_lr": 0.01, "eval_seeds": [1, 2], "ipc": 1,
          "protocol": {"model": {"width": 32}, "archs": ("convnet",)}}
  conv = {"convnet": {"mean": 40.0, "std": 1.0, "runs": [39.0, 41.0]}}
  res = {"resnet18": {"mean": 30.0, "std": 2.0, "runs": [28.0, 32.0]}}
  path.write_text(json.dumps({**base, "distilled": conv, "random_real": conv}))
  merged = pipeline.merge_archs(path, {**base, "distilled": dict(res)})
  assert merged["distilled"] == {**conv, **res} and merged["random_real"] == conv
  # A different set (another syn_lr) or an unreadable file is replaced, never mixed in.
  other = pipeline.merge_archs(path, {**base, "syn_lr": 0.02, "distilled": dict(res)})
  assert other["distilled"] == res and "random_real" not in other
  path.write_text("{truncated")
  assert pipeline.merge_archs(path, {**base, "distilled": dict(res)})["distilled"] == res
