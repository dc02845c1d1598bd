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


def test_centered_mean_matches_a_direct_mean():
  y = np.random.default_rng(1).normal(size=23)
  for half in (0, 1, 4, 30):
    direct = [y[max(0, i - half):i + half + 1].mean() for i in range(len(y))]
    np.testing.assert_allclose(visualize.centered_mean(y, half), direct, rtol=1e-12)


def _distill_records(l_con, n=6, skipped_at=()):
  recs = []
  for step in range(1, n + 1):
    bad = step in skipped_at
    recs.append({"phase": "distill", "step": step, "l_tm": float("nan") if bad else 1.0 / step,
                 "l_contrast": l_con, "syn_lr": 0.01 + 1e-4 * step,
                 "status": "non_finite" if bad else "accepted"})
  return recs


def test_curve_series_keeps_skipped_updates_apart_and_experts_by_group():
  recs = _distill_records(0.5, skipped_at=(3,)) + [
      {"phase": "experts", "experts": [0, 1], "epoch": e, "train_loss": 2.0 - e} for e in (1, 2)
  ] + [{"phase": "experts", "experts": [2], "epoch": 1, "train_loss": 1.5},
       {"phase": "evaluate", "set": "distilled", "runs": [10.0]}]
  (xs, ys, skipped), = visualize.curve_series(recs, "distill", "step", "l_tm").values()
  np.testing.assert_array_equal(xs, [1, 2, 4, 5, 6])
  np.testing.assert_allclose(ys, [1, 1 / 2, 1 / 4, 1 / 5, 1 / 6])
  assert skipped.shape == (2, 0)  # its L_tm is NaN: nothing to place
  _, _, skipped_lr = visualize.curve_series(recs, "distill", "step", "syn_lr")[""]
  np.testing.assert_allclose(skipped_lr, [[3], [0.0103]])
  experts = visualize.curve_series(recs, "experts", "epoch", "train_loss")
  assert sorted(experts) == ["expert 2", "experts 0-1"]
  np.testing.assert_array_equal(experts["experts 0-1"][1], [1.0, 0.0])


def test_curves_draw_only_panels_with_something_to_show(tmp_path):
  datm, clr = _distill_records(0.0), _distill_records(2.0, skipped_at=(2,))
  alone = visualize.save_curves({"": datm}, tmp_path / "datm.png")
  assert alone == ["trajectory matching loss L_tm", "syn_lr"]  # DATM's contrastive loss is 0
  both = visualize.save_curves({"DATM": datm, "DATM-CLR": clr}, tmp_path / "both.png",
                               phases=("distill",))
  assert both == ["trajectory matching loss L_tm", "contrastive loss", "syn_lr"]
  assert matplotlib.image.imread(tmp_path / "both.png").shape[1] > \
      matplotlib.image.imread(tmp_path / "datm.png").shape[1]  # three panels side by side
  assert visualize.save_curves({"": []}, tmp_path / "none.png") == []
  assert not (tmp_path / "none.png").exists()


def test_curves_draw_the_gradient_diagnostics_where_logged(tmp_path):
  datm = [{**r, "grad_norm_tm": 2.0, "image_rms": 1.0 + r["step"]} for r in _distill_records(0.0)]
  clr = [{**r, "grad_norm_tm": 2.0, "grad_norm_contrast": 0.5, "grad_cosine": -0.2,
          "image_rms": 1.0} for r in _distill_records(1.0)]
  assert visualize.save_curves({"DATM": datm, "DATM-CLR": clr}, tmp_path / "d.png") == [
      "trajectory matching loss L_tm", "contrastive loss", "syn_lr",
      "|image gradient of L_tm|", "|image gradient of alpha L_contrast|",
      "cosine(L_tm, contrast image gradients)", "synthetic images: whitened RMS"]


def test_curves_redraw_when_asked_and_never_stop_the_run(tmp_path, monkeypatch):
  from conftest import tiny_config
  from datm_clr_jax import pipeline
  run = pipeline.Run(tiny_config(), str(tmp_path))
  run.log({"phase": "distill", "step": 1, "l_tm": 0.5, "status": "accepted"})
  run.save_curves()
  assert (tmp_path / "curves.png").exists()
  (tmp_path / "curves.png").unlink()
  run.save_curves(at_most_every=3600)  # drawn a moment ago: a checkpoint does not redraw
  assert not (tmp_path / "curves.png").exists()
  run.save_curves()
  assert (tmp_path / "curves.png").exists()

  def broken(*args, **kwargs):
    raise RuntimeError("no display")

  monkeypatch.setattr(pipeline.visualize, "save_curves", broken)
  run.save_curves()  # logs a warning instead of raising
