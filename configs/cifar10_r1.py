"""Protocol R1: the declared reduced CIFAR-10 IPC 1 protocol for a 2-core CPU.

  python -m datm_clr_jax --config=configs/cifar10_r1.py --config.seed=0

Real CIFAR-10 from ../shared/data/cifar10-jpeg.zip (a lossy JPEG copy: expect numbers slightly
below real CIFAR-10), ConvNet width 32, 5 experts of 8 epochs, 500 iterations of N = 20,
evaluation unchanged (1000 epochs, 5 seeds). A number from this protocol is never a
reproduction of a paper number. Results: launch/results/clr_study (every reading of the
paper against DATM, paired over seeds) and docs/reproduction.md.

R1's experts are plain SGD (the study's, launch/results/clr_study/experts).

Variant `configs/cifar10_r1.py:first_built`: the reading launch/results/cifar10_r1 and the
study's common overrides ran with: DATM-CLR's two contrastive views beside DATM's CE view and a
plain-SGD student (plain DATM at --config.clr.alpha=0).

Variants `:mtt`, `:tesla`, `:ftd`, `:datm`, `:datm_clr`: each method's mechanisms (labels,
initialisation, skip rule, image EMA, gradient, expert optimiser; FTD's EMA decay and GSAM
alpha are CIFAR-10 IPC 1's) on R1's trajectory values, which every method shares here so that
the methods differ in their mechanisms only (launch/results/table1_r1).
"""

import runpy
from pathlib import Path

from datm_clr_jax import methods

_REPO = Path(__file__).resolve().parents[1]


def get_config(arg=None):
  config = runpy.run_path(str(Path(__file__).with_name("default.py")))["get_config"]()
  config.name = "cifar10_r1"
  config.data.source = f"image_folder:{_REPO.parent / 'shared' / 'data' / 'cifar10-jpeg.zip'}"
  config.model.width = 32  # Flat params 24,714 for 10 classes.
  config.experts.num_experts = 5
  config.experts.epochs = 8
  config.experts.optimizer = "sgd"
  config.experts.parallel = 5
  config.distill.iterations = 500
  config.distill.num_inner_steps = 20
  config.distill.checkpoint_every = 50
  config.distill.log_every = 10
  # HLR's full-data accuracy at R1: the evaluation's recipe for the experts' 8 epochs.
  config.eval.full_epochs = 8
  config.clr.proj_hidden = 0  # Width-matched: hidden = feature width (512), then 128.
  # At this width keeping the conv outputs and DSA views costs little memory and spares
  # their recomputation (docs/performance.md).
  config.distill.remat_convs = True
  if arg == "first_built":
    config.clr.views = "extra"
    config.distill.student_momentum = 0.0
  elif arg in methods.METHODS:
    methods.mechanisms(config, arg, "cifar10_ipc1")
  elif arg:
    raise ValueError(f"configs/cifar10_r1.py has no variant {arg!r}; use 'first_built', one "
                     f"of {', '.join(methods.METHODS)}, or none")
  return config
