"""CIFAR-10, IPC 10: DATM-CLR with DATM's per-setting values (its scripts).

Launch: bash launch/run.sh cifar10_ipc10   (experts, distillation, evaluation)
Paper (ConvNet, test accuracy %): DATM-CLR 70.2+-0.3 (DATM 66.8+-0.2).
The paper states N = 20; DATM's N is shipped (--config.distill.num_inner_steps=20 to
follow the paper); record which N produced a number.
Data (config.data.source): tfds:cifar10 (default; prepared on first use, needs the data
extra), cifar:/path/to/cifar-10-batches-py (the PyTorch code's download, or its .tar.gz), or
image_folder:/npz: copies, e.g. image_folder:../shared/data/cifar10-jpeg.zip.
"""

import runpy
from pathlib import Path


def get_config():
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
  return config
