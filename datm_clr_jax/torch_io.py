"""PyTorch interop: the reference's files in and out, and a functional PyTorch ConvNet.

The reference (MTT/DATM) stores
  * expert buffers `replay_buffer_<k>.pt`: a list of trajectories, each a list of per-epoch
    lists of tensors in `module.parameters()` order;
  * synthetic sets `images_best.pt` (n, C, H, W) in ZCA space, `labels_best.pt` (n, classes)
    label logits (DATM) or (n,) class ids (MTT), `lr_best.pt` (a scalar tensor).

Layouts: PyTorch convolutions are OIHW on NCHW images, ours HWIO on NHWC; linear weights are
(out, in) there and (in, out) here. The ConvNet flattens features channel-major in both, so
the classifier needs only a transpose.

torch is an optional extra (`pip install -e '.[torch]'`); it is imported only when a function
here needs it, so the rest of the package never depends on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jax.flatten_util import ravel_pytree

from datm_clr_jax.errors import TorchIOError
from datm_clr_jax.models import Network


def require_torch():
  """Imports torch or says how to install it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise TorchIOError("this needs PyTorch, an optional extra: pip install torch==2.13.0 "
                       "(CPU build) or pip install -e '.[torch]'") from None
  return torch


# ----------------------------------------------------------------- parameter layout conversion


def _convnet_layout(network: Network) -> list[tuple[str, str]]:
  """(module, param) names of a ConvNet in PyTorch's `module.parameters()` order."""
  tree = network.unravel(np.zeros(network.num_params, np.float32))
  convs = sorted((k for k in tree if k.startswith("TorchConv_")), key=lambda k: int(k[10:]))
  order = []
  for i, conv in enumerate(convs):
    order += [(conv, "kernel"), (conv, "bias")]
    if f"InstanceNorm_{i}" in tree:
      order += [(f"InstanceNorm_{i}", "scale"), (f"InstanceNorm_{i}", "bias")]
  order += [("TorchDense_0", "kernel"), ("TorchDense_0", "bias")]
  if sorted({m for m, _ in order}) != sorted(tree):
    raise TorchIOError(f"only the ConvNet has a PyTorch layout here; got modules {sorted(tree)}")
  return order


def _to_torch_layout(name: str, a: np.ndarray) -> np.ndarray:
  if name == "kernel" and a.ndim == 4:
    return a.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  if name == "kernel" and a.ndim == 2:
    return a.T  # (in, out) -> (out, in)
  return a


def _from_torch_layout(name: str, a: np.ndarray) -> np.ndarray:
  if name == "kernel" and a.ndim == 4:
    return a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if name == "kernel" and a.ndim == 2:
    return a.T
  return a


def flat_to_torch_list(network: Network, flat) -> list[np.ndarray]:
  """Our flat ConvNet params (P,) -> arrays in PyTorch's parameters() order and layout."""
  tree = network.unravel(np.asarray(flat, np.float32))
  return [np.array(_to_torch_layout(p, np.asarray(tree[m][p])), order="C")
          for m, p in _convnet_layout(network)]


def torch_list_to_flat(network: Network, tensors) -> np.ndarray:
  """PyTorch-ordered ConvNet tensors -> our flat params (P,). Shapes are checked."""
  order = _convnet_layout(network)
  template = network.unravel(np.zeros(network.num_params, np.float32))
  if len(tensors) != len(order):
    raise TorchIOError(f"expected {len(order)} parameter tensors for this ConvNet, got "
                       f"{len(tensors)}: the buffer belongs to another depth or norm")
  tree = {m: dict(v) for m, v in template.items()}
  for (m, p), t in zip(order, tensors):
    a = _from_torch_layout(p, np.asarray(t, np.float32))
    want = tuple(template[m][p].shape)
    if a.shape != want:
      raise TorchIOError(f"{m}.{p}: buffer tensor has shape {tuple(np.shape(t))}, the "
                         f"configured model needs {want} (after layout conversion); the buffer "
                         "was made for another dataset, width or image size")
    tree[m][p] = a
  flat, _ = ravel_pytree(tree)
  return np.asarray(flat)


# ----------------------------------------------------------------------- the reference's files


def _load(path: Path):
  torch = require_torch()
  if not path.exists():
    raise TorchIOError(f"{path} does not exist")
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for a corrupt file
    raise TorchIOError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def load_replay_buffer(path, network: Network) -> np.ndarray:
  """A reference `replay_buffer_<k>.pt` -> trajectories (K, T, P) in our flat layout."""
  buffer = _load(Path(path))
  if not isinstance(buffer, (list, tuple)) or not buffer:
    raise TorchIOError(f"{path}: expected a non-empty list of trajectories")
  trajs = []
  for k, traj in enumerate(buffer):
    trajs.append(np.stack([torch_list_to_flat(network, [t.numpy() for t in epoch])
                           for epoch in traj]))
    if trajs[-1].shape != trajs[0].shape:
      raise TorchIOError(f"{path}: trajectory {k} has {trajs[-1].shape[0]} snapshots, "
                         f"trajectory 0 has {trajs[0].shape[0]}")
  return np.stack(trajs)


def load_reference_synset(directory, *, num_classes: int) -> dict:
  """Reads `images_best.pt`, `labels_best.pt`, `lr_best.pt` from a reference run's folder.

  Returns {'syn_images': (n,H,W,C) ZCA space, 'syn_labels': (n,num_classes) logits,
  'syn_lr': float, 'label_format': 'logits' | 'class_ids'}. Class-id labels (MTT) become
  one-hot logits scaled so their softmax is (numerically) one-hot; the conversion is recorded.
  """
  d = Path(directory)
  images = _load(d / "images_best.pt").detach().numpy()
  labels = _load(d / "labels_best.pt").detach().numpy()
  if not (d / "lr_best.pt").exists():
    raise TorchIOError(f"{d / 'lr_best.pt'} is missing: the reference saves the learned lr "
                       "there; without it the evaluation lr is unknown")
  lr = float(np.asarray(_load(d / "lr_best.pt").detach().numpy()).reshape(()))
  if images.ndim != 4:
    raise TorchIOError(f"images_best.pt has shape {images.shape}; expected (n, C, H, W)")
  images = images.transpose(0, 2, 3, 1).astype(np.float32)
  label_format = "logits"
  if labels.ndim == 1:
    if labels.shape[0] != images.shape[0] or labels.min() < 0 or labels.max() >= num_classes:
      raise TorchIOError(f"labels_best.pt holds class ids {labels.shape} that do not fit "
                         f"{images.shape[0]} images of {num_classes} classes")
    labels = 30.0 * np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64)]
    label_format = "class_ids"
  elif labels.shape != (images.shape[0], num_classes):
    raise TorchIOError(f"labels_best.pt has shape {labels.shape}; expected ({images.shape[0]}, "
                       f"{num_classes}) logits or ({images.shape[0]},) class ids")
  return {"syn_images": images, "syn_labels": labels.astype(np.float32), "syn_lr": lr,
          "label_format": label_format}


def save_reference_synset(directory, syn_images, syn_labels, syn_lr) -> None:
  """Writes a synthetic set in the reference's format (ZCA-space NCHW images, logits, lr)."""
  torch = require_torch()
  d = Path(directory)
  d.mkdir(parents=True, exist_ok=True)
  torch.save(torch.from_numpy(np.ascontiguousarray(
      np.asarray(syn_images, np.float32).transpose(0, 3, 1, 2))), d / "images_best.pt")
  torch.save(torch.from_numpy(np.asarray(syn_labels, np.float32)), d / "labels_best.pt")
  torch.save(torch.tensor(float(syn_lr)), d / "lr_best.pt")


# ------------------------------------------------------------------ functional PyTorch ConvNet


def torch_convnet(params, x, *, depth: int, instance_norm: bool = True):
  """The reference ConvNet as a function of its parameter list.

  Args:
    params: tensors in `module.parameters()` order.
    x: (B, C, H, W) images.
  Returns:
    (logits (B, classes), features (B, F)).
  """
  torch = require_torch()
  f = torch.nn.functional
  i = 0
  for _ in range(depth):
    x = f.conv2d(x, params[i], params[i + 1], padding=1)
    i += 2
    if instance_norm:
      x = f.group_norm(x, x.shape[1], params[i], params[i + 1], eps=1e-5)
      i += 2
    x = f.avg_pool2d(f.relu(x), 2)
  feats = x.flatten(1)
  return f.linear(feats, params[i], params[i + 1]), feats
