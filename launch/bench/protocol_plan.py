"""The full protocol of a config, phase by phase: its FLOPs against measured rates (on demand).

  python launch/protocol_plan.py                                # CIFAR-10 IPC 1 on one H200
  python launch/protocol_plan.py --budget_s=600 --step_s=0.161 --expert_images_s=225739

Counts each phase's FLOPs with XLA's cost analysis of the compiled functions a run calls
(this machine's backend; the counts are the algorithm's and barely depend on it):
  experts   one SGD step of the expert network per training image x train images x epochs x
            experts (`training_flops_per_image`, XLA's convolutions);
  distill   the outer step at the config's shapes x iterations. XLA:CPU counts a `lax.scan`
            body once whatever its length (the counts at N = 2 and 3 are equal), so the count
            at N = 2 (one inner step forward and backward, plus the non-loop work) is scaled by
            N: an overcount by N - 1 times the few non-loop FLOPs (L_tm, the updates);
  evaluate  one training step per synthetic image x images x (epochs + 1) x seeds.
and sets them against rates measured on the device (flags; defaults: one NVIDIA H200,
launch/results/benchmark_gpu.md and launch/results/gpu_c10_ipc1/README.md). It prints a
markdown table, the total, and what the distillation step must reach to fit --budget_s.
"""

import argparse
import runpy
from pathlib import Path

from launch.bench import benchmark, timing


def distill_flops(cfg, classes: int, size: int, views: str) -> float:
  """FLOPs of one outer step at the config's shapes and remat, its scan body counted N times."""
  d = cfg.distill
  kind = "datm-clr" if cfg.clr.alpha else "datm + dsa"

  remat = "convs" if d.remat and d.remat_convs else "1" if d.remat else "0"

  def count(n):
    _, step, args, _ = benchmark.setup_distill(classes, d.ipc, n, d.batch_syn or classes * d.ipc,
                                               cfg.model.width, size, full=False, kind=kind,
                                               views=views, remat=remat)
    return timing.cost_flops(step.lower(*args).compile())

  c2, c3 = count(2), count(3)
  if c3 > c2 * 1.001:  # a backend that counts every iteration
    return c2 + (d.num_inner_steps - 2) * (c3 - c2)
  return c2 * d.num_inner_steps


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/cifar10_ipc1.py")
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--train_images", type=int, default=50000)
  p.add_argument("--image_size", type=int, default=32, help="native size (config's 0)")
  p.add_argument("--views", default="", help="contrastive views (default: the config's)")
  p.add_argument("--expert_epochs", type=int, default=0,
                 help="epochs per expert (default: the config's; the distillation reads "
                      "snapshots up to max_start_epoch + expert_epochs only)")
  p.add_argument("--expert_images_s", type=float, default=225739,
                 help="expert training, images/s (H200: one ConvNet, benchmark_gpu.md)")
  p.add_argument("--step_s", type=float, default=0.161,
                 help="seconds per outer step (H200: c10_ipc1 datm-clr, extra views)")
  p.add_argument("--eval_s", type=float, default=13.0,
                 help="seconds for the whole evaluation (H200: gpu_c10_ipc1, 5 seeds x 1001 "
                      "epochs, compilation included)")
  p.add_argument("--data_s", type=float, default=14.9,
                 help="seconds to read the data and fit ZCA (H200 run, gpu_c10_ipc1)")
  p.add_argument("--budget_s", type=float, default=600)
  a = p.parse_args()

  cfg = runpy.run_path(a.config)["get_config"]()
  views = a.views or cfg.clr.views
  size = cfg.data.image_size or a.image_size
  shape = (size, size, 3)
  per_image = benchmark.training_flops_per_image("convnet", shape, cfg.model.width,
                                                 cfg.experts.batch_size)
  epochs = a.expert_epochs or cfg.experts.epochs
  expert_images = cfg.experts.num_experts * epochs * a.train_images
  step = distill_flops(cfg, a.classes, size, views)
  eval_images = cfg.eval.num_eval * (cfg.eval.epochs + 1) * a.classes * cfg.distill.ipc
  d = cfg.distill
  rows = [
      ("data (decode, ZCA)", "-", None, "measured", a.data_s),
      ("experts", f"{cfg.experts.num_experts} x {epochs} epochs x {a.train_images:,} images",
       per_image * expert_images, f"{a.expert_images_s:,.0f} images/s",
       expert_images / a.expert_images_s),
      ("distill", f"{d.iterations:,} iterations x N = {d.num_inner_steps} ({views} views)",
       step * d.iterations, f"{a.step_s * 1e3:.1f} ms/iteration", d.iterations * a.step_s),
      ("evaluate", f"{cfg.eval.num_eval} seeds x {cfg.eval.epochs + 1} epochs",
       per_image * eval_images, "measured", a.eval_s),
  ]
  print(f"{Path(a.config).name}: {per_image / 1e6:.2f} MFLOP per training image, "
        f"{step / 1e12:.3f} TFLOP per outer step\n")
  print("| phase | work | PFLOP | rate | seconds at that rate | TFLOP/s achieved |")
  print("|---|---|---|---|---|---|")
  for name, work, flops, rate, s in rows:
    pf = "-" if flops is None else f"{flops / 1e15:,.3f}"
    achieved = "-" if flops is None else f"{flops / s / 1e12:,.1f}"
    print(f"| {name} | {work} | {pf} | {rate} | {s:,.0f} | {achieved} |")
  total = sum(r[4] for r in rows)
  print(f"\ntotal {total:,.0f} s ({total / 60:.1f} min) against a budget of {a.budget_s:,.0f} s")
  rest = total - rows[2][4]
  room = a.budget_s - rest
  if room <= 0:
    print(f"the other phases alone take {rest:,.0f} s: no step time fits the budget")
  else:
    need = room / d.iterations
    print(f"to fit: the outer step at <= {need * 1e3:.1f} ms ({a.step_s / need:.2f}x faster than "
          f"{a.step_s * 1e3:.1f} ms), i.e. {step / need / 1e12:,.1f} TFLOP/s")


if __name__ == "__main__":
  main()
