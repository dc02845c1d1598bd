"""The benchmark harness's own arithmetic: FLOP counts and out-of-memory cells."""

import os
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "launch"))
import benchmark  # noqa: E402


def test_cost_flops_counts_a_matmul():
  a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  assert benchmark.cost_flops(compiled) == pytest.approx(2 * 8 * 16 * 4)


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
  times = benchmark.median_times_interleaved(fns, repeats=4, settle=settle)
  assert len(log) == 3 + 4 * 3 * (2 if settle else 1)
  if settle:
    assert max(times) < 0.01  # timed after an untimed call of its own: never the penalty
  else:
    assert times[1] >= 0.02  # in turns, the middle fn always follows another


def test_round_ratios_pair_the_calls_of_each_round():
  # A slow second round moves both steps: per round 2, 1, 3; the ratio of medians would be 3.
  assert benchmark.round_ratios([2.0, 10.0, 3.0], [1.0, 10.0, 1.0]) == (2.0, 1.0, 3.0)
  with pytest.raises(ValueError):
    benchmark.round_ratios([1.0], [1.0, 2.0])


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
  assert benchmark.is_oom(RuntimeError(message)) is expected


def test_harness_supcon_matches_ours():
  """The PyTorch SupCon of the harness's DATM-CLR row is the loss the JAX step uses."""
  torch = pytest.importorskip("torch")
  import numpy as np
  import torch_dsa
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
  import torch_dsa
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
  import numpy as np
  np.testing.assert_allclose(benchmark.rotate_dense(x, key), augment.rotate(x, key), atol=1e-5)


def test_ab_step_imports_a_revision_beside_the_worktree(tmp_path):
  """ab_step's base package imports under its own name, every one of its modules from its own
  copy, and benchmark builds from it only inside benchmark_using."""
  import ab_step  # pylint: disable=import-outside-toplevel
  ab_step.extract_package("HEAD", tmp_path)
  sys.path.insert(0, str(tmp_path))
  try:
    with ab_step.benchmark_using(ab_step.BASE_NAME):
      assert benchmark.distill.__name__ == f"{ab_step.BASE_NAME}.distill"
      assert benchmark.distill.losses.__name__ == f"{ab_step.BASE_NAME}.losses"
      assert benchmark.distill.__file__.startswith(str(tmp_path))
    assert benchmark.distill.__name__ == "datm_clr_jax.distill"
  finally:
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith(ab_step.BASE_NAME)]:
      del sys.modules[name]


def test_ab_step_says_which_revision_it_cannot_read(tmp_path):
  import ab_step  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit, match="no-such-revision"):
    ab_step.extract_package("no-such-revision", tmp_path)


def test_profile_step_names_each_kernels_main_op(monkeypatch):
  # Importing profile_step adds a tracing flag to XLA_FLAGS; the test's later subprocesses
  # should not inherit it.
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  import profile_step  # pylint: disable=import-outside-toplevel

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
  import profile_step  # pylint: disable=import-outside-toplevel

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
  import ab_step  # pylint: disable=import-outside-toplevel
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
  import profile_step  # pylint: disable=import-outside-toplevel
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
  import profile_step  # pylint: disable=import-outside-toplevel
  wall, ops = profile_step.profile_torch(2, 1, 2, 2, 4, "datm + dsa", "extra")
  assert 0 < sum(ops.values()) <= wall * 1e6
  assert {"convolution", "norm"} <= {profile_step.torch_family(op) for op in ops}
