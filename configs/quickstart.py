"""Quickstart: DATM-CLR on scikit-learn's digits (embedded, no download), 2-core CPU sized.

Launch (the default of `python -m datm_clr_jax`):
  python -m datm_clr_jax --config=configs/quickstart.py
Trains a few small experts on 16x16 digits, distills 1 image per class with Contrastive Fusion,
then evaluates the distilled set and random real images (3 seeds each).
"""

import runpy
from pathlib import Path


def get_config():
  config = runpy.run_path(str(Path(__file__).with_name("default.py")))["get_config"]()
  config.name = "quickstart"
  config.data.source = "digits"
  config.data.image_size = 16  # 8x8 digits upsampled so two pooling stages leave 4x4.
  config.model.width = 32
  config.model.depth = 2
  config.experts.num_experts = 4
  config.experts.epochs = 12
  config.experts.batch_size = 64
  config.experts.parallel = 4
  config.distill.iterations = 200
  config.distill.num_inner_steps = 20
  config.distill.max_start_epoch = 4
  config.distill.current_max_start_epoch = 4
  config.distill.checkpoint_every = 50
  config.eval.num_eval = 3
  config.eval.epochs = 300
  return config
