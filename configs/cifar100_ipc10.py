"""CIFAR-100, IPC 10: DATM-CLR with DATM's per-setting values (its scripts).

Launch: bash launch/run.sh cifar100_ipc10   (experts, distillation, evaluation)
Paper (ConvNet, test accuracy %): DATM-CLR 48.7+-0.3 (DATM 47.2+-0.4).
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
  config.name = "cifar100_ipc10"
  config.data.source = "tfds:cifar100"
  config.experts.epochs = 100  # DATM's expert length: start epochs reach 50, plus M.
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
  return config
