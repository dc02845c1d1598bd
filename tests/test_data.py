"""Data sources and ZCA whitening."""

import io
import re
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


def _cifar_records(rng, n, classes, fine_and_coarse=False):
  """n random CIFAR images, their labels and the raw binary records of the -bin archives."""
  x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, classes, size=n).astype(np.int32)
  planes = x.transpose(0, 3, 1, 2).reshape(n, -1)  # the archives store channel planes
  label_bytes = np.stack([y // 5, y] if fine_and_coarse else [y], 1).astype(np.uint8)
  return x, y, np.concatenate([label_bytes, planes], 1).tobytes()


def test_tfds_cifar10_prepares_through_its_own_builder(tmp_path, monkeypatch):
  """tfds:cifar10 on a fresh data_dir: tfds' builder reads a (tiny) cifar-10-batches-bin
  archive, writes array_record files, and data_source reads them back as written."""
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("tensorflow", reason="preparing needs the data extra (tensorflow-cpu)")
  rng = np.random.default_rng(0)
  archive = tmp_path / "extracted"
  bins = archive / "cifar-10-batches-bin"
  bins.mkdir(parents=True)
  names = [f"class{i}" for i in range(10)]
  (bins / "batches.meta.txt").write_text("\n".join(names) + "\n")
  train, test = [], None
  for f in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    x, y, raw = _cifar_records(rng, 3, 10)
    (bins / f).write_bytes(raw)
    if f == "test_batch.bin":
      test = (x, y)
    else:
      train.append((x, y))
  asked = []

  def download_and_extract(self, url_or_urls):  # no internet: hand over the local archive
    asked.append(url_or_urls)
    return str(archive)

  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      download_and_extract)
  ds = data.load_dataset("tfds:cifar10", data_dir=str(tmp_path / "tfds"))
  assert asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
  assert list((tmp_path / "tfds").rglob("*.array_record*")), "no array_record files written"
  assert ds.class_names == names
  # tfds keeps no order promise across shards: compare as sets of (image, label).
  as_set = lambda xs, ys: sorted((int(l), im.tobytes()) for im, l in zip(xs, ys))
  x_train = np.concatenate([t[0] for t in train]); y_train = np.concatenate([t[1] for t in train])
  assert as_set(np.round(ds.x_train * 255).astype(np.uint8), ds.y_train) == as_set(
      x_train, y_train)
  assert as_set(np.round(ds.x_test * 255).astype(np.uint8), ds.y_test) == as_set(*test)
  again = data.load_dataset("tfds:cifar10", data_dir=str(tmp_path / "tfds"))
  assert len(asked) == 1 and len(again.y_train) == 15  # prepared once


def test_tfds_without_tensorflow_names_the_extra(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  import builtins
  real_import = builtins.__import__

  def no_tensorflow(name, *args, **kwargs):
    if name == "tensorflow" or name.startswith("tensorflow."):
      raise ImportError("No module named 'tensorflow'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_tensorflow)
  with pytest.raises(data.DataError, match=r"pip install -e '\.\[data\]'"):
    data.load_dataset("tfds:cifar10", data_dir=str(tmp_path / "tfds"))


def _write_cifar_python(root, layout, rng):
  """A tiny CIFAR python archive folder as torchvision leaves it; returns the arrays."""
  import pickle
  folder = root / layout
  folder.mkdir(parents=True)
  cifar100 = layout == "cifar-100-python"
  classes = 100 if cifar100 else 10
  out = {}
  for split, files in (("train", ["train"] if cifar100 else [f"data_batch_{i}" for i in
                                                            range(1, 6)]),
                       ("test", ["test"] if cifar100 else ["test_batch"])):
    xs, ys = [], []
    for f in files:
      x, y, _ = _cifar_records(rng, 4, classes)
      batch = {b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),
               (b"fine_labels" if cifar100 else b"labels"): y.tolist()}
      if cifar100:
        batch[b"coarse_labels"] = (y // 5).tolist()
      (folder / f).write_bytes(pickle.dumps(batch))
      xs.append(x), ys.append(y)
    out[split] = (np.concatenate(xs), np.concatenate(ys))
  meta = ({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
           b"coarse_label_names": [b"s"] * 20} if cifar100 else
          {b"label_names": [f"c{i}".encode() for i in range(10)]})
  (folder / ("meta" if cifar100 else "batches.meta")).write_bytes(pickle.dumps(meta))
  return out


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "cifar-100-python"])
@pytest.mark.parametrize("form", ["parent", "folder", "tar.gz"])
def test_cifar_python_archives_load_as_written(tmp_path, layout, form):
  import tarfile
  arrays = _write_cifar_python(tmp_path / "root", layout, np.random.default_rng(1))
  path = {"parent": tmp_path / "root", "folder": tmp_path / "root" / layout,
          "tar.gz": tmp_path / f"{layout}.tar.gz"}[form]
  if form == "tar.gz":
    with tarfile.open(path, "w:gz") as tar:
      tar.add(tmp_path / "root" / layout, arcname=layout)
  ds = data.load_dataset(f"cifar:{path}")
  assert ds.num_classes == (100 if "100" in layout else 10)
  for split in ("train", "test"):
    x, y = arrays[split]
    np.testing.assert_array_equal(np.round(getattr(ds, f"x_{split}") * 255).astype(np.uint8), x)
    np.testing.assert_array_equal(getattr(ds, f"y_{split}"), y)


def test_cifar_source_errors_say_what_is_wrong(tmp_path):
  with pytest.raises(data.DataError, match="no such folder"):
    data.load_dataset(f"cifar:{tmp_path / 'nope'}")
  with pytest.raises(data.DataError, match="neither cifar-10-batches-py"):
    data.load_dataset(f"cifar:{tmp_path}")
  _write_cifar_python(tmp_path, "cifar-10-batches-py", np.random.default_rng(0))
  (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
  with pytest.raises(data.DataError, match="lacks cifar-10-batches-py/data_batch_3"):
    data.load_dataset(f"cifar:{tmp_path}")


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


def test_arrays_that_do_not_fit_together_are_refused(tmp_path):
  """Lengths, shapes and a file that is no archive, each named in one line."""
  good = dict(x_train=np.zeros((4, 4, 4, 3), np.uint8), y_train=np.arange(4) % 2,
              x_test=np.zeros((2, 4, 4, 3), np.uint8), y_test=np.array([0, 1]))
  for name, change, message in [
      ("lengths", {"y_train": np.zeros(3)}, "y_train has shape (3,) for 4 images"),
      ("shape", {"x_train": np.zeros((4, 5)), "x_test": np.zeros((2, 5))},
       "x_train has shape (4, 5)"),
      ("sizes", {"x_test": np.zeros((2, 6, 6, 3), np.uint8)}, "test images are (6, 6, 3)"),
      ("labels", {"y_test": np.array([0, -1])}, "labels outside"),
  ]:
    np.savez(tmp_path / f"{name}.npz", **{**good, **change})
    with pytest.raises(data.DataError, match=re.escape(message)):
      data.load_dataset(f"npz:{tmp_path / name}.npz")
  (tmp_path / "text.npz").write_text("not an archive")
  with pytest.raises(data.DataError, match="is not an .npz archive"):
    data.load_dataset(f"npz:{tmp_path / 'text.npz'}")


def test_image_folder_reads_only_its_own_top_level_splits(tmp_path):
  _write_tree(tmp_path / "outer" / "deep" / "down")  # a train/ somewhere below is not ours
  with pytest.raises(data.DataError, match="at the top of"):
    data.load_dataset(f"image_folder:{tmp_path / 'outer'}")
  _write_tree(tmp_path / "tree")
  (tmp_path / "tree" / "extra" / "train" / "cat").mkdir(parents=True)
  (tmp_path / "tree" / "extra" / "train" / "cat" / "x.png").write_bytes(_png(30))
  assert data.load_dataset(f"image_folder:{tmp_path / 'tree'}").x_train.shape[0] == 6
