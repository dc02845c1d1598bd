"""Tiny-ImageNet, IPC 1 (64x64, ConvNetD4): DATM-CLR with DATM's values (its scripts).

Launch: bash launch/run.sh tiny_ipc1 --config.data.source=tiny_imagenet:/path/to/tiny-imagenet-200
Paper Table 1 (ConvNet, test accuracy %): MTT 8.8+-0.3, TESLA -, FTD 10.5+-0.2, DATM 13.6+-0.3,
DATM-CLR 14.8+-0.2.
Variants `configs/tiny_ipc1.py:<method>`, method in mtt | tesla | ftd | datm | datm_clr
(the default): each method's own values and mechanisms (datm_clr_jax/methods.py).
DATM's own paper reports 17.1 for DATM. The paper states N = 20; DATM's N = 40 is shipped.
Data: tiny_imagenet:<dir> only (Tiny-ImageNet is not in the tfds catalogue).
"""

import runpy
from pathlib import Path

from datm_clr_jax import methods


def get_config(arg=None):
  config = runpy.run_path(str(Path(__file__).with_name("default.py")))["get_config"]()
  config.name = "tiny_ipc1"
  config.data.source = "tiny_imagenet:data/tiny-imagenet-200"  # Tiny is not in tfds.
  config.model.arch = "convnetd4"  # Four pooling stages take 64 px to 4x4.
  config.distill.num_inner_steps = 40
  config.distill.max_start_epoch = 20
  config.distill.sequential = True
  config.distill.current_max_start_epoch = 15
  config.distill.expansion_end = 2000
  config.distill.lr_img = 10000.0
  config.distill.lr_lr = 1e-4
  config.distill.lr_y = 10.0
  config.distill.batch_syn = 200
  config.distill.threshold = 1.0
  return methods.apply(config, arg, "tiny_ipc1")
