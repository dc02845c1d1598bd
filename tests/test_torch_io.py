"""PyTorch interop: reference buffers and synthetic sets, checked against a real torch ConvNet."""

import jax
import numpy as np
import pytest

from datm_clr_jax import torch_io
from datm_clr_jax.models import make_network

torch = pytest.importorskip("torch", reason="the optional torch extra is not installed "
                            "(pip install torch==2.13.0); CI installs it")


def reference_convnet(channels, width, depth, classes, size):
  """The MTT/DATM ConvNet as the reference builds it (nn.Module, torch's own init)."""
  layers, c = [], channels
  for _ in range(depth):
    layers += [torch.nn.Conv2d(c, width, 3, padding=1), torch.nn.GroupNorm(width, width),
               torch.nn.ReLU(), torch.nn.AvgPool2d(2)]
    c, size = width, size // 2
  return torch.nn.Sequential(*layers, torch.nn.Flatten(),
                             torch.nn.Linear(width * size * size, classes))


@pytest.fixture(name="setup")
def fixture_setup():
  torch.manual_seed(0)
  net_t = reference_convnet(3, 8, 3, 10, 16)
  net = make_network("convnet", 10, (16, 16, 3), width=8, depth=3)
  x = np.random.default_rng(0).standard_normal((5, 16, 16, 3)).astype(np.float32)
  return net_t, net, x


def test_buffer_import_gives_the_torch_logits(setup, tmp_path):
  net_t, net, x = setup
  # A reference-format buffer: 2 trajectories x 3 epochs of module.parameters() snapshots.
  snapshots, buffer = [], []
  for _ in range(2):
    traj = []
    for _ in range(3):
      with torch.no_grad():
        for p in net_t.parameters():
          p.add_(0.05 * torch.randn_like(p))
      traj.append([p.detach().clone() for p in net_t.parameters()])
      snapshots.append(net_t(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy())
    buffer.append(traj)
  torch.save(buffer, tmp_path / "replay_buffer_0.pt")

  traj = torch_io.load_replay_buffer(tmp_path / "replay_buffer_0.pt", net)
  assert traj.shape == (2, 3, net.num_params)
  ours = [np.asarray(net.apply_flat(traj[k, e], x)[0]) for k in range(2) for e in range(3)]
  for a, b in zip(ours, snapshots):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_layout_round_trip_and_functional_torch_convnet(setup):
  _, net, x = setup
  flat = np.asarray(net.init_flat(jax.random.PRNGKey(1), (16, 16, 3)))
  tensors = torch_io.flat_to_torch_list(net, flat)
  np.testing.assert_array_equal(torch_io.torch_list_to_flat(net, tensors), flat)
  logits_t, _ = torch_io.torch_convnet([torch.from_numpy(t) for t in tensors],
                                       torch.from_numpy(x.transpose(0, 3, 1, 2)), depth=3)
  np.testing.assert_allclose(np.asarray(net.apply_flat(flat, x)[0]), logits_t.numpy(),
                             atol=1e-4)


def test_buffer_of_another_model_is_refused(setup, tmp_path):
  net_t, _, _ = setup
  torch.save([[[p.detach() for p in net_t.parameters()]]], tmp_path / "replay_buffer_0.pt")
  wider = make_network("convnet", 10, (16, 16, 3), width=16, depth=3)
  with pytest.raises(torch_io.TorchIOError, match="TorchConv_0.kernel.*another dataset"):
    torch_io.load_replay_buffer(tmp_path / "replay_buffer_0.pt", wider)
  deeper = make_network("convnet", 10, (16, 16, 3), width=8, depth=4)
  with pytest.raises(torch_io.TorchIOError, match="another depth"):
    torch_io.load_replay_buffer(tmp_path / "replay_buffer_0.pt", deeper)
  (tmp_path / "bad.pt").write_bytes(b"not a torch file")
  with pytest.raises(torch_io.TorchIOError, match="cannot read"):
    torch_io.load_replay_buffer(tmp_path / "bad.pt", wider)


def test_reference_synset_round_trip_and_bad_input(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.standard_normal((20, 8, 8, 3)).astype(np.float32)
  logits = rng.standard_normal((20, 10)).astype(np.float32)
  torch_io.save_reference_synset(tmp_path / "ours", images, logits, 0.0123)
  # The files are what the reference reads: NCHW images.
  assert tuple(torch.load(tmp_path / "ours" / "images_best.pt").shape) == (20, 3, 8, 8)
  got = torch_io.load_reference_synset(tmp_path / "ours", num_classes=10)
  np.testing.assert_array_equal(got["syn_images"], images)
  np.testing.assert_array_equal(got["syn_labels"], logits)
  assert got["syn_lr"] == pytest.approx(0.0123) and got["label_format"] == "logits"

  # MTT stores class ids: converted to (near) one-hot logits, and said so.
  torch.save(torch.arange(20) % 10, tmp_path / "ours" / "labels_best.pt")
  got = torch_io.load_reference_synset(tmp_path / "ours", num_classes=10)
  assert got["label_format"] == "class_ids"
  np.testing.assert_array_equal(got["syn_labels"].argmax(1), np.arange(20) % 10)

  torch.save(torch.zeros(20, 7), tmp_path / "ours" / "labels_best.pt")
  with pytest.raises(torch_io.TorchIOError, match=r"\(20, 10\) logits"):
    torch_io.load_reference_synset(tmp_path / "ours", num_classes=10)
  (tmp_path / "ours" / "lr_best.pt").unlink()
  with pytest.raises(torch_io.TorchIOError, match="lr_best.pt is missing"):
    torch_io.load_reference_synset(tmp_path / "ours", num_classes=10)


def test_import_buffers_into_experts(setup, tmp_path):
  from datm_clr_jax import experts
  net_t, net, _ = setup
  params = lambda: [p.detach().clone() for p in net_t.parameters()]
  for k in range(2):  # two buffers of 2 trajectories x 3 snapshots
    torch.save([[params() for _ in range(3)] for _ in range(2)], tmp_path / f"replay_buffer_{k}.pt")
  n = experts.import_buffers(net, tmp_path, tmp_path / "experts", image_shape=(16, 16, 3))
  traj = experts.load_trajectories(tmp_path / "experts", num_params=net.num_params, min_length=3)
  assert n == 4 and traj.shape == (4, 3, net.num_params)
  np.testing.assert_array_equal(traj[3], torch_io.load_replay_buffer(
      tmp_path / "replay_buffer_1.pt", net)[1])
  with pytest.raises(experts.checkpointing.CheckpointError, match="snapshots"):
    experts.load_trajectories(tmp_path / "experts", num_params=net.num_params, min_length=6)
