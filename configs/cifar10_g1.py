"""Protocol G1: full-width CIFAR-10 IPC 1 on one GPU, sized for one device lease.

The CIFAR-10 IPC 1 config (ConvNet width 128, N = 80, DATM's values) with 10 experts of 6
epochs (start epochs [0, 4) + M = 2 read snapshots 0..6) and 1,000 iterations. Data: the JPEG
copy; on a lent device it travels compressed in .gpu_carry/ (launch/gpu/carry.py) and
launch/results/g1/plan.json points data.source there. Never a reproduction of a paper number.
Launch: bash launch/gpu/g1.sh (launch/gpu/README.md)
"""

import runpy
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def get_config():
  config = runpy.run_path(str(Path(__file__).with_name("cifar10_ipc1.py")))["get_config"]()
  config.name = "cifar10_g1"
  config.data.source = f"image_folder:{_REPO.parent / 'shared' / 'data' / 'cifar10-jpeg.zip'}"
  config.experts.num_experts = 10
  config.experts.epochs = 6
  config.experts.optimizer = "sgd"  # G1's experts are plain SGD, like R1's.
  config.distill.iterations = 1000
  return config
