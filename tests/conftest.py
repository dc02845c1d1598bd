"""Shared fixtures: tiny shapes so the whole suite runs in minutes on 2 CPU cores."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The tiny tests are compile-bound. LLVM at -O0 cuts XLA:CPU compile times by about a third;
# XLA's own HLO passes still run, so the tested programs are the same, only their machine code
# is less optimised. Set before JAX creates its backend; subprocesses inherit it.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

# Compilation dominates the tiny tests, and many compile identical functions again (each
# pipeline.Run jits its own step; the command-line tests start fresh processes). A persistent
# compilation cache turns those repeats into cache hits. Each pytest process (each xdist
# worker) gets its own new directory, removed at exit: JAX writes entries non-atomically, so
# two concurrent processes must not share one. Subprocesses inherit it through the variable.
_CACHE = tempfile.mkdtemp(prefix="jax_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
jax.config.update("jax_compilation_cache_dir", _CACHE)


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
