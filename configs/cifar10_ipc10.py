"""CIFAR-10, IPC 10: DATM-CLR with DATM's per-setting values (its scripts).

Launch: bash launch/run.sh cifar10_ipc10   (experts, distillation, evaluation)
Paper Table 1 (ConvNet, test accuracy %): MTT 65.4+-0.7, TESLA 66.4+-0.8, FTD 65.3+-0.4, DATM
66.8+-0.2, DATM-CLR 70.2+-0.3.
Variants `configs/cifar10_ipc10.py:<method>`, method in mtt | tesla | ftd | datm | datm_clr
(the default): each method's own values and mechanisms (datm_clr_jax/methods.py).
The paper states N = 20; DATM's N is shipped (--config.distill.num_inner_steps=20 to
follow the paper); record which N produced a number.
Data (config.data.source): tfds:cifar10 (default; prepared on first use, needs the data
extra), cifar:/path/to/cifar-10-batches-py (the PyTorch code's download, or its .tar.gz), or
image_folder:/npz: copies, e.g. image_folder:../shared/data/cifar10-jpeg.zip.
"""

import runpy
from pathlib import Path

from datm_clr_jax import methods


def get_config(arg=None):
  config = runpy.run_path(str(Path(__file__).with_name("default.py")))["get_config"]()
  config.name = "cifar10_ipc10"
  config.data.source = "tfds:cifar10"
  config.distill.ipc = 10
  config.distill.max_start_epoch = 20
  config.distill.sequential = True  # DATM's growing start-epoch range.
  config.distill.current_max_start_epoch = 10
  config.distill.expansion_end = 1000
  config.distill.lr_lr = 1e-05
  config.distill.lr_y = 2.0
  config.distill.batch_syn = 100
  config.distill.threshold = 1.0
  return methods.apply(config, arg, "cifar10_ipc10")
