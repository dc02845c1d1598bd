"""How far TESLA's first-order gradient is from the exact (unrolled) one, at protocol R1.

  python -m launch.tesla_gap [--keys=5] [--steps=1,5,10,20]

On R1's data, the contrastive study's SGD experts and MTT's initial set (random real images,
one-hot labels), for each N and each of `keys` iteration keys: the relative distance
||g_tesla - g_exact|| / ||g_exact|| and the cosine between the image gradients, and the
syn_lr gradients side by side, from one expert, start epoch and DSA draw per key. Prints a
markdown table (launch/results/tesla_gap.md holds its output).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from datm_clr_jax import config_file, experts, pipeline, step, tesla

FLAGS = flags.DEFINE_multi_integer("steps", [1, 5, 10, 20], "Inner steps N to compare.")
KEYS = flags.DEFINE_integer("keys", 5, "Iteration keys per N.")
EXPERTS = "launch/results/clr_study/experts"


def main(_):
  config = config_file.load("configs/cifar10_r1.py:tesla", [f"experts.dir={EXPERTS}",
                                                             "data.cache_dir=checkpoints/cache"])
  run = pipeline.Run(config, "checkpoints/tesla_gap")
  net = run.network()
  traj, final = experts.load_trajectories(EXPERTS, num_params=net.num_params, return_final=True)
  state = run._initial_state(net, final)  # pylint: disable=protected-access
  classes = jnp.repeat(jnp.arange(run.num_classes), config.distill.ipc)
  print("| N | relative distance, images (mean, min-max) | cosine, images | d syn_lr exact "
        "| d syn_lr TESLA |\n|---|---|---|---|---|")
  for n in FLAGS.value:
    cfg = step.StepConfig.from_config(config, len(classes))
    cfg = cfg.__class__(**{**cfg.__dict__, "num_inner_steps": n})
    approx = jax.jit(tesla.make_value_and_grad(net, cfg, classes))
    exact = jax.jit(jax.value_and_grad(step.make_segments_loss(net, cfg, classes, 0),
                                       has_aux=True))
    dist, cos, lr_e, lr_t = [], [], [], []
    for k in range(KEYS.value):
      args = (state.learned, jnp.asarray(traj), jnp.int32(config.distill.max_start_epoch),
              jax.random.PRNGKey(k))
      g_t, g_e = approx(*args)[1], exact(*args)[1]
      a, b = np.ravel(g_t[0]), np.ravel(g_e[0])
      dist.append(np.linalg.norm(a - b) / np.linalg.norm(b))
      cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
      lr_e.append(float(g_e[2]))
      lr_t.append(float(g_t[2]))
    print(f"| {n} | {np.mean(dist):.3g} ({min(dist):.3g}-{max(dist):.3g}) | {np.mean(cos):.4f} | "
          f"{np.mean(lr_e):.4g} | {np.mean(lr_t):.4g} |", flush=True)


if __name__ == "__main__":
  app.run(main)
