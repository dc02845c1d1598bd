"""Shared fixtures: tiny shapes so the whole suite runs in minutes on 2 CPU cores."""

import atexit
import os
import shutil
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
  """configs/quickstart.py:tiny, the quickstart shrunk to seconds, under another name."""
  import runpy
  config = runpy.run_path(str(ROOT / "configs" / "quickstart.py"))["get_config"]("tiny")
  config.name = workdir_name
  return config
