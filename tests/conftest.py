"""Shared fixtures: tiny shapes so the whole suite runs in minutes on 2 CPU cores."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


@pytest.fixture
def tiny_images():
  rng = np.random.default_rng(0)
  return rng.normal(size=(6, 8, 8, 3)).astype(np.float32)


def tiny_config(workdir_name: str = "tiny"):
  """The quickstart config shrunk to seconds: 8x8 digits, width 8, N=2."""
  import runpy
  config = runpy.run_path(str(ROOT / "configs" / "quickstart.py"))["get_config"]()
  config.name = workdir_name
  config.data.image_size = 8
  config.dsa.strategy = "color_crop_flip"  # Cheap ops: XLA compile time dominates tiny tests.
  config.model.width = 8
  config.model.depth = 1
  config.experts.num_experts = 2
  config.experts.epochs = 3
  config.experts.batch_size = 128
  config.experts.parallel = 2
  config.distill.iterations = 4
  config.distill.num_inner_steps = 2
  config.distill.max_start_epoch = 2
  config.distill.current_max_start_epoch = 2
  config.distill.log_every = 1
  config.distill.checkpoint_every = 2
  config.clr.proj_dim = 8
  config.eval.num_eval = 2
  config.eval.epochs = 4
  return config
