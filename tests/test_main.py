"""The command line: one end-to-end run as a user starts it, every config file, bad input."""

import json
import runpy
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from datm_clr_jax import __main__ as cli_main
from datm_clr_jax import checks, errors, outside, results, torch_io

TINY = "--config=configs/quickstart.py:tiny"


def _main(*args):
  """The command line in this process: its exit status."""
  return cli_main.main(["datm_clr_jax", *args])


def test_command_line_end_to_end(tmp_path, capsys):
  """`python -m datm_clr_jax` as a user starts it (the only test in its own process), then
  the export of its set, and that set evaluated as an outside set gives the same numbers."""
  out = subprocess.run([sys.executable, "-m", "datm_clr_jax", TINY, f"--workdir={tmp_path}"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  for name in ("config.json", "metrics.jsonl", "syn_images.png", "results.json", "syn_set.npz",
               "curves.png"):
    assert (tmp_path / name).exists(), name
  assert any((tmp_path / "experts").glob("expert_*"))
  assert any((tmp_path / "distill").iterdir())
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["dataset"] == "digits" and res["ipc"] == 1
  assert res["method"] == "datm_clr"
  for key in ("distilled", "random_real"):
    r = res[key]["convnet"]
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
  assert _main(TINY, f"--workdir={tmp_path}", "--mode=export") == 0
  with np.load(tmp_path / "export" / "syn_set.npz") as f:
    assert str(f["normalisation"]) == "zca" and f["zca_whiten"].shape == (64, 64)
    assert int(f["iteration"]) == 4 and f["syn_images"].shape == (10, 8, 8, 1)
    exported = {k: f[k] for k in ("syn_images", "syn_labels", "syn_lr")}
  if (tmp_path / "export" / "torch").exists():  # the optional torch extra is installed
    ref = torch_io.load_reference_synset(tmp_path / "export" / "torch", num_classes=10)
    np.testing.assert_array_equal(ref["syn_images"], exported["syn_images"])
    np.testing.assert_array_equal(ref["syn_labels"], exported["syn_labels"])
  assert _main(TINY, f"--workdir={tmp_path}", "--mode=evaluate",
               "--config.eval.random_real=false",
               f"--config.eval.synset={tmp_path / 'export' / 'syn_set.npz'}") == 0
  external = json.loads((tmp_path / "results_external.json").read_text())
  assert external["method"] == "external"
  assert external["distilled"]["convnet"]["runs"] == res["distilled"]["convnet"]["runs"]


def test_outside_synset_that_does_not_fit_is_refused(tmp_path):
  good = dict(syn_images=np.zeros((10, 8, 8, 1), np.float32),
              syn_labels=np.zeros((10, 10), np.float32), syn_lr=0.01, normalisation="zca")
  load = lambda path: outside.load_outside_set(path, num_classes=10, image_shape=(8, 8, 1),
                                               zca=True, source="digits")
  for name, change, message in [
      ("size", {"syn_images": np.zeros((10, 16, 16, 1), np.float32)}, "data.image_size"),
      ("classes", {"syn_labels": np.zeros((10, 7), np.float32)}, r"expected \(10, 10\)"),
      ("norm", {"normalisation": "mean_std"}, "config.data.zca"),
      ("nan", {"syn_lr": np.nan}, "NaN"),
  ]:
    np.savez(tmp_path / f"{name}.npz", **{**good, **change})
    with pytest.raises(errors.ConfigError, match=message):
      load(str(tmp_path / f"{name}.npz"))
  with pytest.raises(errors.ConfigError, match="expected an exported .npz"):
    load(str(tmp_path / "missing.npz"))


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
    (["--config.distill.student_momentum=1.5"], "student_momentum must be in [0, 1)"),
    (["--config.eval.keep=last"], "config.eval.keep='last' is not one of ['final', 'best']"),
    (["--config.eval.test_every=0"], "eval.test_every must be positive, got 0"),
    (["--config.distill.iterations=-5"], "distill.iterations must be positive, got -5"),
    (["--config.clr.alpha=nan"], "clr.alpha must be a finite number, got nan"),
    (["--config.distill.lr_img=-1"], "distill.lr_img must be positive, got -1.0"),
    (["--config.clr.through_student=False", "--config.clr.strategy=update"],
     "use clr.strategy='fusion'"),
    (["--mode=distill"], "no expert trajectories in"),
    (["--mode=export"], "run --mode=distill first"),
] + ([] if _has_wandb() else [(["--config.logging.wandb_project=p"], "needs wandb")])


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=lambda v: str(v)[:40])
def test_bad_input_is_refused_in_one_line_before_any_work(tmp_path, capsys, args, message):
  """Exit status 2, one line on stderr that says what to do, and nothing trained."""
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  workdir = tmp_path / "run"
  capsys.readouterr()
  assert _main("--config=configs/quickstart.py", f"--workdir={workdir}",
               *[a.format(f=a_file) for a in args]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  assert message in lines[0]
  assert not (workdir / "experts").exists()


def test_a_data_dependent_error_comes_before_the_experts(tmp_path, capsys):
  assert _main(TINY, f"--workdir={tmp_path}", "--config.distill.ipc=1000") == 2
  errs = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error: ")]
  assert len(errs) == 1 and "exceeds" in errs[0], errs
  assert not any((tmp_path / "experts").glob("expert_*"))


def test_evaluate_without_distillation_says_what_to_do(tmp_path, capsys):
  assert _main(f"--workdir={tmp_path}", "--mode=evaluate") == 2
  assert "--mode=distill" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_config_loads_and_validates(path):
  get_config = runpy.run_path(str(path))["get_config"]
  variants = {"quickstart.py": ["tiny"], "cifar10_r1.py": ["first_built"]}.get(path.name, [])
  for config in [get_config()] + [get_config(v) for v in variants]:
    checks.validate_config(config)
    assert config.name


def test_incompatible_settings_are_named():
  config = tiny_config()
  config.distill.max_start_epoch = 10
  with pytest.raises(errors.ConfigError, match="max_start_epoch"):
    checks.validate_config(config)
  config = tiny_config()
  config.model.norm = "batch"
  with pytest.raises(errors.ConfigError, match="model.norm"):
    checks.validate_config(config)
  for field, value, message in [("experts.optimizer", "adam", "experts.optimizer"),
                                ("experts.save_epochs", 9, "save_epochs"),
                                ("distill.select", "test", "distill.select"),
                                ("eval.archs", ("resnet18,vgg11",), "as a tuple"),
                                ("distill.num_segments", 0, "distill.num_segments"),
                                ("distill.segment_loop", "pmap", "distill.segment_loop"),
                                ("eval.progress_every", -1, "eval.progress_every"),
                                ("distill.labels", "soft", "distill.labels"),
                                ("distill.ema_decay", 1.0, "distill.ema_decay"),
                                ("distill.threshold", -1.0, "distill.threshold")]:
    config = tiny_config()
    config[field.split(".")[0]][field.split(".")[1]] = value
    with pytest.raises(errors.ConfigError, match=message):
      checks.validate_config(config)
  config = tiny_config()
  config.distill.gradient = "tesla"  # the tiny config has the contrastive term on
  with pytest.raises(errors.ConfigError, match="distill.gradient='tesla'.*clr.strategy"):
    checks.validate_config(config)
  config = tiny_config()
  config.distill.select, config.eval.synset = "val", "/x.npz"
  with pytest.raises(errors.ConfigError, match="distill.select.*eval.synset"):
    checks.validate_config(config)
  config = tiny_config()
  config.distill.remat, config.distill.remat_convs = False, True
  with pytest.raises(errors.ConfigError, match="remat_convs.*distill.remat=True"):
    checks.validate_config(config)


def test_a_second_evaluation_adds_architectures_of_the_same_set(tmp_path):
  path = tmp_path / "results.json"
  base = {"method": "datm", "syn_lr": 0.01, "eval_seeds": [1, 2], "ipc": 1,
          "protocol": {"model": {"width": 32}, "archs": ("convnet",)}}
  conv = {"convnet": {"mean": 40.0, "std": 1.0, "runs": [39.0, 41.0]}}
  res = {"resnet18": {"mean": 30.0, "std": 2.0, "runs": [28.0, 32.0]}}
  path.write_text(json.dumps({**base, "distilled": conv, "random_real": conv}))
  merged = results.merge_archs(path, {**base, "distilled": dict(res)})
  assert merged["distilled"] == {**conv, **res} and merged["random_real"] == conv
  # A different set (another syn_lr) or an unreadable file is replaced, never mixed in.
  other = results.merge_archs(path, {**base, "syn_lr": 0.02, "distilled": dict(res)})
  assert other["distilled"] == res and "random_real" not in other
  path.write_text("{truncated")
  assert results.merge_archs(path, {**base, "distilled": dict(res)})["distilled"] == res


def test_a_workdir_from_before_a_field_existed_resumes_at_its_default():
  config = tiny_config()
  stored = json.loads(config.to_json())
  del stored["distill"]["labels"], stored["distill"]["ema_decay"], stored["eval"]["metrics"]
  stored["distill"]["learn_labels"] = True  # the field distill.labels replaced
  assert checks.config_changes(stored, config) == {}
  stored["distill"]["learn_labels"] = False
  assert checks.config_changes(stored, config) == {"distill.labels": ("experts", "learned")}
  config.distill.ema_decay = 0.5  # a new field away from its default is a change
  assert "distill.ema_decay" in checks.config_changes(stored, config)


def test_an_os_error_that_names_no_file_is_named_by_the_workdir():
  from datm_clr_jax import cli
  bare = OSError(28, "No space left on device")
  assert cli.os_error(bare, default_path="/w") == "/w: No space left on device (errno 28)"
  named = OSError(28, "No space left on device", "/w/syn_set.npz")
  assert cli.os_error(named, default_path="/w").startswith("/w/syn_set.npz: ")
  wrapped = RuntimeError("tensorstore: No space left on device")
  assert cli.os_error(wrapped, default_path="/w") == "/w: No space left on device"
  assert cli.os_error(ValueError("other")) is None
