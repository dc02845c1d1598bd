"""The library API: docs/usage.md's example runs, and it computes what the command line does."""

import re

import numpy as np

import datm_clr_jax as dc
from conftest import ROOT
from datm_clr_jax import checkpointing, experts, pipeline

TINY = "configs/quickstart.py:tiny"


def test_the_usage_example_runs():
  text = (ROOT / "docs" / "usage.md").read_text()
  block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  assert '"configs/quickstart.py"' in block
  scope = {}
  exec(block.replace('"configs/quickstart.py"', f'"{TINY}"'), scope)  # pylint: disable=exec-used
  syn, scores = scope["syn"], scope["scores"]
  assert syn.images.shape == (10, 8, 8, 1) and syn.labels.shape == (10, 10) and syn.lr > 0
  assert [r["step"] for r in syn.metrics] == list(range(1, 51))
  assert len(scores["runs"]) == 2 and 0 <= scores["mean"] <= 100


def test_the_library_and_the_command_line_make_the_same_set(tmp_path):
  """Experts, distilled set and accuracy of api calls equal those of a pipeline run."""
  config = dc.load_config(TINY, ["eval.random_real=False"])
  results = pipeline.run(config, str(tmp_path), "all")
  data = dc.load_dataset(config)
  trajectories = dc.train_experts(config, data.x_train, data.y_train)
  on_disk = experts.load_trajectories(tmp_path / "experts", num_params=trajectories.shape[2])
  np.testing.assert_array_equal(trajectories, on_disk)
  syn = dc.distill(config, data.x_train, data.y_train, trajectories)
  with np.load(tmp_path / "syn_set.npz") as f:
    np.testing.assert_array_equal(syn.images, f["syn_images"])
    np.testing.assert_array_equal(syn.labels, f["syn_labels"])
  logged = [r for r in checkpointing.read_jsonl(tmp_path / "metrics.jsonl")
            if r["phase"] == "distill"]
  assert [r["l_tm"] for r in syn.metrics] == [r["l_tm"] for r in logged]
  scores = dc.evaluate_set(config, syn, data.x_test, data.y_test)
  assert scores["runs"] == results["distilled"]["convnet"]["runs"]
