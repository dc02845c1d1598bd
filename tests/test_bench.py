"""The measurement harnesses (launch/bench): their arithmetic, their PyTorch renderings, the
revision they compare against, and K runs in one program against K separate runs."""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from datm_clr_jax import step
from launch.bench import benchmark, parallel, timing
from test_step import CLASSES, _setup


def test_cost_flops_counts_a_matmul():
  a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  assert timing.cost_flops(compiled) == pytest.approx(2 * 8 * 16 * 4)


def _costly_after_another(cost: float):
  """Three fns that sleep `cost` s when the previous call was another fn's, like a step that
  faults in memory its neighbour freed; returns them and the log of who ran."""
  log = []

  def make(name):
    def fn():
      if log and log[-1] != name:
        time.sleep(cost)
      log.append(name)
    return fn

  return [make("a"), make("b"), make("c")], log


@pytest.mark.parametrize("settle", [True, False])
def test_interleaved_timing_settles_each_call_after_its_own(settle):
  fns, log = _costly_after_another(0.02)
  times = timing.median_times_interleaved(fns, repeats=4, settle=settle)
  assert len(log) == 3 + 4 * 3 * (2 if settle else 1)
  if settle:
    assert max(times) < 0.01  # timed after an untimed call of its own: never the penalty
  else:
    assert times[1] >= 0.02  # in turns, the middle fn always follows another


def test_round_ratios_pair_the_calls_of_each_round():
  # A slow second round moves both steps: per round 2, 1, 3; the ratio of medians would be 3.
  assert timing.round_ratios([2.0, 10.0, 3.0], [1.0, 10.0, 1.0]) == (2.0, 1.0, 3.0)
  with pytest.raises(ValueError):
    timing.round_ratios([1.0], [1.0, 2.0])


def test_training_flops_per_image_matches_the_convolutions():
  # ConvNet depth 3 on 8x8 RGB, width 4: 3x3 convolutions at 8x8, 4x4, 2x2.
  width, shape = 4, (8, 8, 3)
  conv_fwd = 2 * 9 * (8 * 8 * 3 * width + 4 * 4 * width * width + 2 * 2 * width * width)
  per_image = benchmark.training_flops_per_image("convnet", shape, width, batch=4)
  assert per_image == pytest.approx(
      benchmark.training_flops_per_image("convnet", shape, width, batch=8), rel=0.02)
  # Forward, then the weight gradients of all three layers and the input gradients of the
  # upper two, around three forward passes in all, plus element-wise work.
  assert 2.5 * conv_fwd < per_image < 4 * conv_fwd


@pytest.mark.parametrize("message,expected", [
    ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate", True),
    ("INVALID_ARGUMENT: shapes do not match", False),
])
def test_is_oom(message, expected):
  assert timing.is_oom(RuntimeError(message)) is expected


def test_harness_supcon_matches_ours():
  """The PyTorch SupCon of the harness's DATM-CLR row is the loss the JAX step uses."""
  torch = pytest.importorskip("torch")
  from launch.bench import torch_dsa
  from datm_clr_jax import losses
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32)
  labels = np.array([0, 1, 1, 2, 0, 3])
  ours = float(losses.supcon_loss(jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(labels), 0.1))
  theirs = float(torch_dsa.supcon(torch, torch.tensor(z1), torch.tensor(z2),
                                  torch.tensor(labels), 0.1))
  assert theirs == pytest.approx(ours, rel=1e-5)


@pytest.mark.parametrize("mode", ["single", "multiple"])
def test_harness_dsa_keeps_shapes_and_pixel_gradients(mode):
  torch = pytest.importorskip("torch")
  from launch.bench import torch_dsa
  for name in torch_dsa.FAMILIES:
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    y = torch_dsa.OPS[name](torch, x)
    assert y.shape == x.shape, name
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), name
  x = torch.randn(4, 3, 16, 16)
  assert torch_dsa.dsa(torch, x, mode).shape == x.shape
  assert torch.equal(torch_dsa.dsa(torch, x, "none"), x)


def test_dense_rotate_baseline_equals_ours():
  """The dsa section's "before" row computes what augment.rotate computes."""
  from datm_clr_jax import augment
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 7, 2))
  key = jax.random.PRNGKey(4)
  np.testing.assert_allclose(benchmark.rotate_dense(x, key), augment.rotate(x, key), atol=1e-5)


def test_ab_step_imports_a_revision_beside_the_worktree(tmp_path):
  """ab_step's base package imports under its own name, every one of its modules from its own
  copy, and benchmark builds a step from it or from the worktree's package."""
  from launch.bench import ab_step  # pylint: disable=import-outside-toplevel
  ab_step.import_package(ab_step.extract_package("HEAD", tmp_path))
  try:
    base = benchmark.library(ab_step.BASE_NAME)
    assert base.StepConfig.__module__.startswith(f"{ab_step.BASE_NAME}.")
    assert sys.modules[base.StepConfig.__module__].__file__.startswith(str(tmp_path))
    assert sys.modules[f"{ab_step.BASE_NAME}.losses"].__file__.startswith(str(tmp_path))
    assert benchmark.library().StepConfig is step.StepConfig
  finally:
    for name in [m for m in sys.modules if m.startswith(ab_step.BASE_NAME)]:
      del sys.modules[name]


def test_ab_step_says_which_revision_it_cannot_read(tmp_path):
  from launch.bench import ab_step  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit, match="no-such-revision"):
    ab_step.extract_package("no-such-revision", tmp_path)


def test_profile_step_names_each_kernels_main_op(monkeypatch):
  # Importing profile_step adds a tracing flag to XLA_FLAGS; the test's later subprocesses
  # should not inherit it.
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  from launch.bench import profile_step  # pylint: disable=import-outside-toplevel

  def f(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sin(y).reshape(2, -1) @ w, jnp.mean(jnp.cos(y), axis=(1, 2))

  args = jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 4)), jnp.ones((6 * 6 * 4, 5))
  text = jax.jit(f).lower(*args).compile().as_text()
  found = set(profile_step.kernel_ops(text).values())
  assert {"convolution f32[2,6,6,4]", "dot f32[2,5]", "reduce f32[2,4]"} <= found, found


def test_profile_step_counts_matmul_and_convolution_flops_by_op_path(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  from launch.bench import profile_step  # pylint: disable=import-outside-toplevel

  def f(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    with jax.named_scope("head"):
      return jnp.sin(y).reshape(2, -1) @ w

  args = jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 4)), jnp.ones((6 * 6 * 4, 5))
  flops = profile_step.matmul_flops(jax.jit(f).lower(*args).compile().as_text())
  # 2 x output size x contraction: 3x3 taps of 3 channels, then 144 features.
  assert dict(flops) == {"conv_general_dilated": 2 * (2 * 6 * 6 * 4) * 27,
                         "head/dot_general": 2 * (2 * 5) * 144}, flops


def test_ab_step_checks_its_xla_options_before_any_step():
  from launch.bench import ab_step  # pylint: disable=import-outside-toplevel
  assert ab_step.parse_options('{"xla_cpu_multi_thread_eigen": false}') == {
      "xla_cpu_multi_thread_eigen": False}
  with pytest.raises(SystemExit, match="not JSON"):
    ab_step.parse_options("{xla_cpu_multi_thread_eigen: false}")
  with pytest.raises(SystemExit, match="JSON object"):
    ab_step.parse_options("[1]")
  with pytest.raises(SystemExit, match="refused"):
    ab_step.parse_options('{"xla_no_such_option": 1}')


def test_profile_step_sorts_aten_ops_into_families(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  from launch.bench import profile_step  # pylint: disable=import-outside-toplevel
  families = {op: profile_step.torch_family("aten::" + op) for op in (
      "mkldnn_convolution", "convolution_backward", "native_group_norm_backward", "addmm", "mm",
      "sum", "mean", "mul", "threshold_backward", "avg_pool2d")}
  assert families == {
      "mkldnn_convolution": "convolution", "convolution_backward": "convolution",
      "native_group_norm_backward": "norm", "addmm": "dot", "mm": "dot", "sum": "reduce",
      "mean": "reduce", "mul": "elementwise", "threshold_backward": "elementwise",
      "avg_pool2d": "elementwise"}


def test_profile_step_profiles_the_pytorch_step(monkeypatch):
  """--torch: one profiled call of the harness's PyTorch step, its aten ops with their own
  time, which on the CPU (ops one after another, on the calling thread) sums to at most the
  call's wall time."""
  pytest.importorskip("torch")
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  from launch.bench import profile_step  # pylint: disable=import-outside-toplevel
  wall, ops = profile_step.profile_torch(2, 1, 2, 2, 4, "datm + dsa", "extra")
  assert 0 < sum(ops.values()) <= wall * 1e6
  assert {"convolution", "norm"} <= {profile_step.torch_family(op) for op in ops}


@pytest.mark.parametrize("overrides", [dict(clr_strategy="none"),
                                       dict(clr_strategy="fusion", alpha=0.5, views="shared")])
def test_parallel_runs_equal_separate_runs(overrides):
  """K runs in one program (make_parallel_step) follow the same paths as K separate runs."""
  net, cfg, feat, images, labels, theta0, target = _setup(**overrides)
  opt = step.OuterOptim(lr_img=1.0, lr_lr=1e-4, lr_y=1.0)
  rng = np.random.default_rng(0)
  traj = jnp.stack([jnp.stack([theta0, target, 2 * target - theta0]),
                    jnp.stack([target, theta0, target])])  # 2 experts, 3 snapshots
  runs = [step.init_state(images + 0.1 * k * jnp.asarray(rng.normal(size=images.shape),
                                                          images.dtype), labels, 0.01, opt)
          for k in range(3)]
  seeds = [0, 5, 9]
  single = step.make_distill_step(net, cfg, opt, jnp.arange(CLASSES), feat)
  batched = parallel.make_parallel_step(net, cfg, opt, jnp.arange(CLASSES), feat)
  apart, together = list(runs), parallel.stack_states(runs)
  for it in range(2):
    keys = [jax.random.fold_in(jax.random.PRNGKey(s), it) for s in seeds]
    metrics = [None] * 3
    for k in range(3):
      apart[k], metrics[k] = single(apart[k], traj, jnp.int32(2), keys[k])
    together, m = batched(together, traj, jnp.int32(2), jnp.stack(keys))
    np.testing.assert_array_equal(m["expert"], [mk["expert"] for mk in metrics])
    np.testing.assert_array_equal(m["start_epoch"], [mk["start_epoch"] for mk in metrics])
  assert len({int(mk["expert"]) * 10 + int(mk["start_epoch"]) for mk in metrics}) > 1
  for got, want in zip(parallel.unstack_states(together), apart):
    np.testing.assert_allclose(got.syn_images, want.syn_images, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.syn_lr, want.syn_lr, rtol=1e-5)
    assert int(got.iteration) == 2
