"""Sets made elsewhere, evaluated like this run's own (config.eval.synset): an exported
syn_set.npz, or a folder of the reference's images_best.pt / labels_best.pt / lr_best.pt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datm_clr_jax import torch_io
from datm_clr_jax.errors import ConfigError


def load_outside_set(path: str, *, num_classes: int, image_shape, zca: bool, source: str
                     ) -> tuple[np.ndarray, np.ndarray, float, dict]:
  """(syn_images (n,H,W,C), label logits (n, num_classes), lr, provenance) of the set at
  `path`, checked against this run's data: image shape, classes and normalisation (`zca`)."""
  src = Path(path)
  if src.is_dir():
    got = torch_io.load_reference_synset(src, num_classes=num_classes)
    info = {"synset": str(src), "format": "pytorch reference", "labels": got["label_format"]}
    images, labels, lr = got["syn_images"], got["syn_labels"], got["syn_lr"]
  elif src.suffix == ".npz" and src.exists():
    with np.load(src) as f:
      images, labels, lr = f["syn_images"], f["syn_labels"], float(f["syn_lr"])
      norm = str(f["normalisation"]) if "normalisation" in f else "unknown"
    want = "zca" if zca else "mean_std"
    if norm not in (want, "unknown"):
      raise ConfigError(f"config.eval.synset {src} holds {norm}-normalised images, but "
                        f"config.data.zca={zca} normalises with {want}")
    info = {"synset": str(src), "format": "npz", "labels": "logits"}
  else:
    raise ConfigError(f"config.eval.synset={path!r}: expected an exported .npz or a folder "
                      "with images_best.pt, labels_best.pt, lr_best.pt")
  if images.shape[1:] != tuple(image_shape):
    raise ConfigError(f"config.eval.synset images are {images.shape[1:]}, but {source} gives "
                      f"{tuple(image_shape)}: another dataset or data.image_size")
  if labels.shape != (images.shape[0], num_classes):
    raise ConfigError(f"config.eval.synset labels are {labels.shape}; expected "
                      f"({images.shape[0]}, {num_classes}) for this dataset")
  if not (np.isfinite(images).all() and np.isfinite(labels).all() and lr > 0):
    raise ConfigError(f"config.eval.synset {src} holds NaN/inf or a non-positive lr ({lr})")
  return images, labels, lr, info
