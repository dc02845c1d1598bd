"""Data sources and ZCA whitening."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from datm_clr_jax import data


def _png(rgb):
  buf = io.BytesIO()
  Image.fromarray(np.full((6, 6, 3), rgb, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def _write_tree(root: Path):
  for split, n in (("train", 3), ("test", 2)):
    for c, rgb in (("cat", 10), ("dog", 200)):
      d = root / split / c
      d.mkdir(parents=True)
      for i in range(n):
        (d / f"{i}.png").write_bytes(_png(rgb))


def test_digits_split_is_fixed_and_disjoint():
  a = data.load_dataset("digits")
  b = data.load_dataset("digits")
  assert a.x_train.shape == (1347, 8, 8, 1) and a.x_test.shape == (450, 8, 8, 1)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
  assert a.num_classes == 10
  resized = data.load_dataset("digits", image_size=16)
  assert resized.x_train.shape == (1347, 16, 16, 1)


def test_image_folder_dir_and_zip(tmp_path):
  _write_tree(tmp_path / "tree")
  ds = data.load_dataset(f"image_folder:{tmp_path / 'tree'}")
  assert ds.class_names == ["cat", "dog"]
  assert ds.x_train.shape == (6, 6, 6, 3) and ds.x_test.shape == (4, 6, 6, 3)
  np.testing.assert_allclose(ds.x_train[ds.y_train == 1].mean(), 200 / 255, atol=1e-6)
  zpath = tmp_path / "t.zip"
  with zipfile.ZipFile(zpath, "w") as zf:
    for f in (tmp_path / "tree").rglob("*.png"):
      zf.write(f, "top/" + str(f.relative_to(tmp_path / "tree")))
  dz = data.load_dataset(f"image_folder:{zpath}", cache_dir=str(tmp_path / "cache"))
  np.testing.assert_array_equal(dz.x_train, ds.x_train)
  cached = data.load_dataset(f"image_folder:{zpath}", cache_dir=str(tmp_path / "cache"))
  np.testing.assert_allclose(cached.x_train, ds.x_train, atol=1 / 255)


def test_npz(tmp_path):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 255, (5, 4, 4, 3), dtype=np.uint8),
           y_train=np.arange(5) % 2, x_test=rng.integers(0, 255, (2, 4, 4, 3), dtype=np.uint8),
           y_test=np.array([0, 1]))
  ds = data.load_dataset(f"npz:{tmp_path / 'd.npz'}")
  assert ds.x_train.dtype == np.float32 and ds.num_classes == 2
  np.savez(tmp_path / "bad.npz", x_train=np.zeros(3))
  with pytest.raises(data.DataError, match="lacks arrays"):
    data.load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_bad_sources(tmp_path):
  with pytest.raises(data.DataError, match="unknown dataset source"):
    data.load_dataset("mnistt")
  with pytest.raises(data.DataError, match="does not exist"):
    data.load_dataset(f"image_folder:{tmp_path / 'missing'}")
  with pytest.raises(data.DataError, match="does not exist"):
    data.load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_tfds_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load_dataset("tfds:cifar10")
  assert ds.x_train.shape == (12, 32, 32, 3) and ds.x_train.dtype == np.float32
  assert ds.num_classes == 10 and set(ds.y_train) <= set(range(10))


def test_zca_whitens_and_inverts(tmp_path):
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(12, 12))
  x = (rng.normal(size=(4000, 2, 2, 3)).reshape(4000, 12) @ mix).reshape(4000, 2, 2, 3)
  z = data.fit_zca(x, eps=1e-6)
  w = z.apply(x).reshape(4000, 12)
  np.testing.assert_allclose(np.cov(w, rowvar=False), np.eye(12), atol=1e-2)
  np.testing.assert_allclose(z.invert(z.apply(x)), x, atol=1e-3)
  # Whitening is symmetric (ZCA, not PCA): W = W^T.
  np.testing.assert_allclose(z.whiten, z.whiten.T, atol=1e-8)
  cached = data.fit_zca_cached(x, 0.1, str(tmp_path))
  again = data.fit_zca_cached(x, 0.1, str(tmp_path))
  assert len(list(tmp_path.glob("zca_*.npz"))) == 1
  np.testing.assert_array_equal(cached.whiten, again.whiten)


CIFAR_ZIP = SHARED / "data" / "cifar10-jpeg.zip"


@pytest.mark.skipif(not CIFAR_ZIP.exists(), reason="../shared/data/cifar10-jpeg.zip not present")
def test_shared_cifar10_zip_loads(tmp_path):
  ds = data.load_image_folder(str(CIFAR_ZIP))
  assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
  assert ds.class_names[:3] == ["airplane", "automobile", "bird"]
  assert np.all(np.bincount(ds.y_train) == 5000)
  np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2), dtype=np.float64),
                             [0.4913, 0.4821, 0.4465],
                             atol=2e-3)


def test_tiny_imagenet_folder(tmp_path):
  root = tmp_path / "tiny-imagenet-200"
  wnids = ["n02", "n01"]
  for k, w in enumerate(wnids):
    d = root / "train" / w / "images"
    d.mkdir(parents=True)
    for i in range(2):
      (d / f"{w}_{i}.JPEG").write_bytes(_png(40 * (k + 1)))
  (root / "val" / "images").mkdir(parents=True)
  lines = []
  for i, w in enumerate(["n01", "n02", "n01"]):
    (root / "val" / "images" / f"val_{i}.JPEG").write_bytes(_png(40 * (wnids.index(w) + 1)))
    lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t5\t5")
  (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
  (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\ttabby, cat\n")
  ds = data.load_dataset(f"tiny_imagenet:{tmp_path}")
  assert ds.class_names == ["goldfish", "tabby"]  # sorted wnids: n01, n02
  assert ds.x_train.shape == (4, 6, 6, 3) and ds.x_test.shape == (3, 6, 6, 3)
  np.testing.assert_array_equal(ds.y_test, [0, 1, 0])
  # Labels follow the annotation file, not file order: val_1 is n02 (pixel value 40).
  np.testing.assert_allclose(ds.x_test[1].mean(), 40 / 255, atol=1e-6)
  with pytest.raises(data.DataError, match="not a tiny-imagenet-200 folder"):
    data.load_dataset(f"tiny_imagenet:{tmp_path / 'nope'}")
