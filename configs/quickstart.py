"""Quickstart: DATM-CLR on scikit-learn's digits (embedded, no download), 2-core CPU sized.

  python -m datm_clr_jax --config=configs/quickstart.py      (the default of the command)

Trains 4 small experts on 16x16 digits, distills 1 image per class with Contrastive Fusion,
then evaluates the distilled set and random real images (3 seeds each). A toy protocol, not a
paper number; what it prints on a fresh clone, and the command: launch/results/quickstart.md.

Variant `configs/quickstart.py:tiny`: the same code path shrunk to seconds (8x8 images, width
8, N = 2, 4 iterations, cheap DSA ops), what the test suite runs.
"""

import runpy
from pathlib import Path


def get_config(arg=None):
  config = runpy.run_path(str(Path(__file__).with_name("default.py")))["get_config"]()
  config.name = "quickstart"
  config.data.source = "digits"
  config.data.image_size = 16  # 8x8 digits upsampled so two pooling stages leave 4x4.
  config.model.width = 32
  config.model.depth = 2
  config.experts.num_experts = 4
  config.experts.epochs = 12
  config.experts.optimizer = "sgd"  # Plain SGD: half the cost of GSAM for a demo.
  config.experts.batch_size = 64
  config.experts.parallel = 4
  config.distill.iterations = 200
  config.distill.num_inner_steps = 20
  config.distill.max_start_epoch = 4
  config.distill.current_max_start_epoch = 4
  config.distill.checkpoint_every = 50
  config.eval.num_eval = 3
  config.eval.epochs = 300
  if arg == "tiny":
    config.name = "tiny"
    config.data.image_size = 8
    config.dsa.strategy = "color_crop_flip"  # Cheap ops: XLA compile time dominates here.
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
  elif arg:
    raise ValueError(f"configs/quickstart.py has no variant {arg!r}; use 'tiny' or none")
  return config
