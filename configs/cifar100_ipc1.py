"""CIFAR-100, IPC 1: DATM-CLR with DATM's per-setting values (its scripts).

Launch: bash launch/run.sh cifar100_ipc1   (experts, distillation, evaluation)
Paper (ConvNet, test accuracy %): DATM-CLR 28.7+-0.2 (DATM 27.9+-0.2).
The paper states N = 20; DATM's N is shipped (--config.distill.num_inner_steps=20 to
follow the paper); record which N produced a number.
Data (config.data.source): tfds:cifar100 (default; prepared on first use, needs the data
extra), cifar:/path/to/cifar-100-python (the PyTorch code's download, or its .tar.gz), or
image_folder:/npz: copies.
"""

import runpy
from pathlib import Path


def get_config():
  config = runpy.run_path(str(Path(__file__).with_name("default.py")))["get_config"]()
  config.name = "cifar100_ipc1"
  config.data.source = "tfds:cifar100"
  config.distill.num_inner_steps = 40
  config.distill.expert_epochs = 3
  config.distill.max_start_epoch = 20
  config.distill.sequential = True
  config.distill.current_max_start_epoch = 10
  config.distill.expansion_end = 1000
  config.distill.lr_img = 1000.0
  config.distill.lr_lr = 1e-05
  config.distill.lr_y = 10.0
  config.distill.batch_syn = 100
  config.distill.threshold = 1.0
  return config
