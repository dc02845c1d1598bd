"""CIFAR-100, IPC 10: DATM-CLR with DATM's per-setting values (its scripts).

Launch: bash launch/run.sh cifar100_ipc10   (experts, distillation, evaluation)
Paper Table 1 (ConvNet, test accuracy %): MTT 39.7+-0.4, TESLA 41.7+-0.3, FTD 42.5+-0.2, DATM
47.2+-0.4, DATM-CLR 48.7+-0.3.
Variants `configs/cifar100_ipc10.py:<method>`, method in mtt | tesla | ftd | datm | datm_clr
(the default): each method's own values and mechanisms (datm_clr_jax/methods.py).
The paper states N = 20; DATM's N is shipped (--config.distill.num_inner_steps=20 to
follow the paper); record which N produced a number.
Data (config.data.source): tfds:cifar100 (default; prepared on first use, needs the data
extra), cifar:/path/to/cifar-100-python (the PyTorch code's download, or its .tar.gz), or
image_folder:/npz: copies.
"""

import runpy
from pathlib import Path

from datm_clr_jax import methods


def get_config(arg=None):
  config = runpy.run_path(str(Path(__file__).with_name("default.py")))["get_config"]()
  config.name = "cifar100_ipc10"
  config.data.source = "tfds:cifar100"
  config.distill.ipc = 10
  config.distill.max_start_epoch = 50
  config.distill.sequential = True
  config.distill.current_max_start_epoch = 30
  config.distill.expansion_end = 2000
  config.distill.lr_img = 1000.0
  config.distill.lr_lr = 1e-05
  config.distill.lr_y = 10.0
  config.distill.batch_syn = 1000
  config.distill.threshold = 1.0
  return methods.apply(config, arg, "cifar100_ipc10")
