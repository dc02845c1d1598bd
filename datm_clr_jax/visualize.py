"""Pictures: the distilled images as a grid (one row per class), several sets side by side, and
the training curves of metrics.jsonl (one run alone, or several runs overlaid)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Headless: runs write PNGs, never open windows.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path) -> None:
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


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
  _save(fig, path)


def save_grid(images: np.ndarray, ipc: int, class_names: list[str], path) -> None:
  """Writes images (C*ipc, H, W, ch) in [0, 1], class-major, as a grid PNG with class names.

  One row per class; with ipc 1, one row of all classes, each titled with its name.
  """
  if ipc == 1:
    save_rows([images], [""], class_names, path)
    return
  rows = [images[c * ipc:(c + 1) * ipc] for c in range(len(class_names))]
  save_rows(rows, class_names, [], path)


# (phase, x key, y key, panel title, smoothed): the curves a run's metrics.jsonl can hold.
# The losses are smoothed because each logged value comes from one random expert and start
# epoch; syn_lr and the per-epoch curves are smooth already.
CURVES = (
    ("distill", "step", "l_tm", "trajectory matching loss L_tm", True),
    ("distill", "step", "l_contrast", "contrastive loss", True),
    ("distill", "step", "syn_lr", "syn_lr", False),
    ("distill", "step", "grad_norm_tm", "|image gradient of L_tm|", True),
    ("distill", "step", "grad_norm_contrast", "|image gradient of alpha L_contrast|", True),
    ("distill", "step", "grad_cosine", "cosine(L_tm, contrast image gradients)", True),
    ("distill", "step", "image_rms", "synthetic images: whitened RMS", False),
    ("select", "step", "val_acc", "validation accuracy % (selection)", False),
    ("experts", "epoch", "train_loss", "experts: training loss", False),
    ("experts", "epoch", "test_acc", "experts: test accuracy", False),
)


def centered_mean(y: np.ndarray, half: int) -> np.ndarray:
  """Mean of y[max(0, i - half) : i + half + 1] for each i; y (n,) -> (n,).

  Centred rather than trailing, so a drawn trend does not lag behind the points it averages.
  """
  c = np.concatenate([[0.0], np.cumsum(y, dtype=np.float64)])
  i = np.arange(len(y))
  lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, len(y))
  return (c[hi] - c[lo]) / (hi - lo)


def curve_series(records: list[dict], phase: str, x: str, y: str) -> dict:
  """The points of one curve: {line name: (xs (n,), ys (n,), skipped (2, m))}.

  Experts are drawn one line per trained group ("experts 0-4"); every other phase is one
  line. Distillation iterations whose update was skipped (status other than "accepted") are
  left out of the line and returned apart (their x and finite y), so a reader sees where they
  happened without the skipped values bending the curve.
  """
  lines: dict = {}
  for r in records:
    if r.get("phase") != phase or y not in r or x not in r:
      continue
    name = ""
    if phase == "experts" and r.get("experts"):
      ids = r["experts"]
      name = f"experts {ids[0]}-{ids[-1]}" if len(ids) > 1 else f"expert {ids[0]}"
    pts, skipped = lines.setdefault(name, ([], []))
    value = float(r[y])
    if r.get("status", "accepted") != "accepted":
      if np.isfinite(value):
        skipped.append((r[x], value))
    else:
      pts.append((r[x], value))
  out = {}
  for name, (pts, skipped) in lines.items():
    xs, ys = (np.asarray(v, np.float64) for v in zip(*pts)) if pts else (np.zeros(0),) * 2
    out[name] = (xs, ys, np.asarray(skipped, np.float64).reshape(-1, 2).T)
  return out


def _has_signal(series: dict) -> bool:
  # DATM logs a contrastive loss of exactly 0 at every step: that panel would say nothing.
  return any(len(ys) and np.any(np.isfinite(ys) & (ys != 0)) for _, ys, _ in series.values())


def save_curves(runs: dict[str, list[dict]], path, phases=None) -> list[str]:
  """Plots the curves of `runs` ({run name: metrics.jsonl records}) into one PNG.

  A panel per entry of CURVES that some run has data for (restricted to `phases` if given),
  each run one colour; the noisy distillation losses are drawn thin, with a centred mean over
  a tenth of the points (at least 5) on top. Returns the titles of the panels drawn ([] and no
  file when there is nothing to draw).
  """
  panels = []
  for phase, x, y, title, smoothed in CURVES:
    if phases is not None and phase not in phases:
      continue
    per_run = {run: curve_series(recs, phase, x, y) for run, recs in runs.items()}
    per_run = {run: s for run, s in per_run.items() if _has_signal(s)}
    if per_run:
      panels.append((x, title, smoothed, per_run))
  if not panels:
    return []
  ncols = min(3, len(panels))
  nrows = -(-len(panels) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.axis("off")
  colors = {}  # (run, line name) -> colour, the same in every panel
  for ax, (x, title, smoothed, per_run) in zip(axes.flat, panels):
    skip_label = "skipped update"
    lines = [(run, name, *xys) for run, series in per_run.items()
             for name, xys in series.items()]
    for run, name, xs, ys, skipped in lines:
      label = " ".join(s for s in (run, name) if s) or None
      color = colors.setdefault((run, name), f"C{len(colors) % 10}")
      smooth = smoothed and len(ys) >= 20
      ax.plot(xs, ys, color=color, lw=0.6 if smooth else 1.2, alpha=0.35 if smooth else 1.0,
              marker=None if len(ys) > 30 else ".", label=None if smooth else label)
      if smooth:
        ax.plot(xs, centered_mean(ys, max(2, len(ys) // 20)), color=color, lw=1.5,
                label=label)
      if skipped.size:
        ax.plot(skipped[0], skipped[1], "x", color="red", ms=5, label=skip_label)
        skip_label = None
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("iteration" if x == "step" else "epoch", fontsize=8)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=6)
  _save(fig, path)
  return [title for _, title, _, _ in panels]


def save_intervals(panels: dict[str, list[tuple[str, dict]]], path, xlabel: str) -> None:
  """Forest plot: one panel per title, one row per label, each series an interval.

  panels: {title: [(row label, {series name: (centre, half width)}), ...]}; a half width of
  nan draws the centre alone. Rows read top to bottom in the given order; a dashed line
  marks zero.
  """
  fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=False,
                           figsize=(4.6 * len(panels), 0.9 + 0.32 * max(
                               (len(r) for r in panels.values()), default=1)))
  series_names = list(dict.fromkeys(s for rows in panels.values() for _, d in rows for s in d))
  offsets = np.linspace(-0.15, 0.15, len(series_names)) if len(series_names) > 1 else [0.0]
  for ax, (title, rows) in zip(axes.flat, panels.items()):
    for k, name in enumerate(series_names):
      pts = [(i, *d[name]) for i, (_, d) in enumerate(rows) if name in d]
      if not pts:
        continue
      ys, xs, hw = (np.array(v, dtype=float) for v in zip(*pts))
      ax.errorbar(xs, -ys + offsets[k], xerr=np.where(np.isnan(hw), 0, hw), fmt="os"[k % 2],
                  color=f"C{k}", ms=4, capsize=2, lw=1, label=name)
    ax.axvline(0, color="gray", ls="--", lw=0.8)
    ax.set_yticks(-np.arange(len(rows)), [label for label, _ in rows], fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=6)
  _save(fig, path)
