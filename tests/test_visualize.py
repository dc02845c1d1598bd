"""Image grids: every image lands in the figure, laid out by class."""

import matplotlib.image
import numpy as np

from datm_clr_jax import visualize


def test_grid_layout_follows_ipc(tmp_path):
  names = [f"class{c}" for c in range(4)]
  rng = np.random.default_rng(0)
  visualize.save_grid(rng.random((4, 8, 8, 3)), 1, names, tmp_path / "ipc1.png")
  visualize.save_grid(rng.random((12, 8, 8, 1)), 3, names, tmp_path / "ipc3.png")
  h1, w1 = matplotlib.image.imread(tmp_path / "ipc1.png").shape[:2]
  h3, w3 = matplotlib.image.imread(tmp_path / "ipc3.png").shape[:2]
  assert w1 > 2 * h1  # IPC 1: one row of four classes
  assert h3 > w3  # IPC 3: four rows (classes) of three


def test_rows_show_the_given_pixels(tmp_path):
  # Two rows of solid colours: the saved picture contains both colours (and clipping keeps
  # out-of-range values displayable instead of failing).
  red = np.zeros((3, 6, 6, 3)); red[..., 0] = 1.5
  blue = np.zeros((2, 6, 6, 3)); blue[..., 2] = 1.0
  visualize.save_rows([red, blue], ["a", "b"], ["x", "y", "z"], tmp_path / "rows.png")
  img = matplotlib.image.imread(tmp_path / "rows.png")[..., :3].reshape(-1, 3)
  assert np.any(np.all(img == [1.0, 0.0, 0.0], axis=1))
  assert np.any(np.all(img == [0.0, 0.0, 1.0], axis=1))
