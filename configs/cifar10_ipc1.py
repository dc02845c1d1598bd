"""CIFAR-10, IPC 1: DATM-CLR with DATM's values (its scripts) and the paper's reading, the defaults.

Launch: bash launch/run.sh cifar10_ipc1   (experts, distillation, evaluation)
Paper Table 1 (ConvNet, test accuracy %): MTT 46.2+-0.8, TESLA 48.5+-0.8, FTD 46.0+-0.4, DATM
46.9+-0.5, DATM-CLR 53.0+-0.4.
Variants `configs/cifar10_ipc1.py:<method>`, method in mtt | tesla | ftd | datm | datm_clr
(the default): each method's own values and mechanisms (datm_clr_jax/methods.py).
The paper states N = 20; DATM's N = 80 is shipped (--config.distill.num_inner_steps=20 to
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
  config.name = "cifar10_ipc1"
  # Ten images per inner step: keeping the convolution outputs costs little memory at this
  # batch and spares their recomputation (docs/performance.md).
  config.distill.remat_convs = True
  return methods.apply(config, arg, "cifar10_ipc1")
