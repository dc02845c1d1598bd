"""Pictures: the distilled images as a grid (one row per class), and several sets side by side."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Headless: runs write PNGs, never open windows.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show(ax, img: np.ndarray) -> None:
  if img.shape[-1] == 1:
    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
  else:
    # Nearest: a 32x32 image shows its own pixels (and compresses far better as PNG).
    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def save_rows(rows: list[np.ndarray], row_names: list[str], col_names: list[str], path) -> None:
  """Writes rows of images, each (K, H, W, ch) in [0, 1], as one PNG: a labelled row each."""
  ncols = max(len(r) for r in rows)
  fig, axes = plt.subplots(len(rows), ncols, figsize=(1.0 * ncols + 1.6, 1.1 * len(rows) + 0.3),
                           squeeze=False)
  for i, (row, name) in enumerate(zip(rows, row_names)):
    for j in range(ncols):
      ax = axes[i, j]
      if j < len(row):
        _show(ax, row[j])
      else:
        ax.axis("off")
      if i == 0 and j < len(col_names):
        ax.set_title(col_names[j], fontsize=7)
      if j == 0:
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_grid(images: np.ndarray, ipc: int, class_names: list[str], path) -> None:
  """Writes images (C*ipc, H, W, ch) in [0, 1], class-major, as a grid PNG with class names.

  One row per class; with ipc 1, one row of all classes, each titled with its name.
  """
  if ipc == 1:
    save_rows([images], [""], class_names, path)
    return
  rows = [images[c * ipc:(c + 1) * ipc] for c in range(len(class_names))]
  save_rows(rows, class_names, [], path)
