"""Pictures: the distilled images as a grid, one row per class."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Headless: runs write PNGs, never open windows.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_grid(images: np.ndarray, ipc: int, class_names: list[str], path) -> None:
  """Writes images (C*ipc, H, W, ch) in [0, 1], class-major, as a grid PNG with class names."""
  num_classes = len(class_names)
  ncols = ipc
  fig, axes = plt.subplots(num_classes, ncols, figsize=(1.2 * ncols + 1.2, 1.2 * num_classes),
                           squeeze=False)
  for c in range(num_classes):
    for j in range(ncols):
      ax = axes[c, j]
      img = images[c * ipc + j]
      if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
      else:
        ax.imshow(img)
      ax.set_xticks([])
      ax.set_yticks([])
      if j == 0:
        ax.set_ylabel(class_names[c], rotation=0, ha="right", va="center", fontsize=8)
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
