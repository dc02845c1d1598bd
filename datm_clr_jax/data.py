"""Datasets and ZCA whitening.

A source string names where the data comes from:
  'digits'                     scikit-learn's 8x8 handwritten digits (embedded, no download),
                               split 75/25 into train/test with a fixed seed.
  'tfds:<name>'                tensorflow-datasets (e.g. 'tfds:cifar10', 'tfds:cifar100'),
                               prepared on first use as array_record files (preparing needs
                               TensorFlow: the `data` extra), then read through
                               `tfds.data_source` without TensorFlow.
  'cifar:<path>'               the original CIFAR-10/100 python archives as torchvision leaves
                               them: cifar-10-batches-py/, cifar-100-python/, their .tar.gz,
                               or a folder holding one of them; which dataset is told by the
                               files. No TensorFlow.
  'image_folder:<dir or zip>'  train/<class>/*, test/<class>/* image files.
  'npz:<file>'                 arrays x_train, y_train, x_test, y_test (uint8 0..255 or float
                               0..1, NHWC or NHW), optional class_names.
  'tiny_imagenet:<dir>'        the standard tiny-imagenet-200/ folder (train/<wnid>/images/*,
                               the flat val/images/ labelled by val/val_annotations.txt, used
                               as the test split); <dir> may also be its parent.

Every loader returns a `Dataset` of float32 images in [0, 1], NHWC. ZCA whitening (eps 0.1) is
fitted once on the training images and cached as an .npz keyed by a fingerprint of the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
from absl import logging

from datm_clr_jax.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# Used when ZCA is off (the reference's CIFAR normalisation).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclasses.dataclass
class Dataset:
  """Images in [0, 1] before whitening.

  Attributes:
    name: the source string it came from.
    x_train: (N, H, W, C) float32.  y_train: (N,) int32.
    x_test: (M, H, W, C) float32.   y_test: (M,) int32.
    class_names: list of C names, index = label.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: list[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.x_train.shape[1:])


def _to_float(x: np.ndarray) -> np.ndarray:
  if x.ndim == 3:
    x = x[..., None]
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 255.0
  return x.astype(np.float32)


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Dataset:
  """scikit-learn digits: 1,797 8x8 grey images in [0, 1], a stratified seeded split."""
  from sklearn.datasets import load_digits as sk_digits
  from sklearn.model_selection import train_test_split
  d = sk_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(
      x, y, test_size=test_fraction, random_state=seed, stratify=y)
  return Dataset("digits", x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)])


def _tfds_prepare(builder, name: str) -> None:
  """Downloads and prepares a tfds dataset as array_record files, the format data_source reads.

  tfds' own builders decode the archives with TensorFlow, which this package does not need
  otherwise: without it the user is told which extra to install.
  """
  import tensorflow_datasets as tfds
  try:
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise DataError(
        f"tfds:{name} is not prepared in {builder.data_dir_root}, and tensorflow-datasets "
        "prepares it with TensorFlow: pip install -e '.[data]' (tensorflow-cpu), or use "
        "cifar:<path> with the CIFAR python archives, or image_folder:/npz: sources") from None
  logging.info("data: preparing tfds:%s in %s (array_record; downloads the archive once)",
               name, builder.data_dir_root)
  try:
    # The prepared copies on GCS are TFRecord files, which data_source cannot read.
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except Exception as e:
    raise DataError(f"could not prepare tfds:{name} ({type(e).__name__}: {e}). Without "
                    "internet, prepare it elsewhere and pass --config.data.data_dir, or use "
                    "cifar:/image_folder:/npz: sources") from e


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
  """A tensorflow-datasets image classification dataset via `tfds.data_source`.

  Prepared on first use (array_record files under data_dir, tfds' default when None).
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:  # pragma: no cover - it is a dependency
    raise DataError("tensorflow-datasets is not installed: pip install tensorflow-datasets") from e
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except Exception as e:
    raise DataError(f"tfds has no dataset {name!r} ({e}); use e.g. tfds:cifar10") from e
  if not builder.is_prepared():
    _tfds_prepare(builder, name)
  elif builder.info.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
    raise DataError(
        f"tfds:{name} in {builder.data_dir} was prepared as {builder.info.file_format.value} "
        "files, which tfds.data_source cannot read: delete that folder (it is prepared again "
        "as array_record) or point --config.data.data_dir elsewhere")
  splits = {}
  for split in ("train", "test"):
    try:
      src = builder.as_data_source(split=split)
    except Exception as e:
      raise DataError(
          f"could not read tfds:{name} split {split!r} ({type(e).__name__}: {e}). Without "
          "internet, prepare it elsewhere and pass --config.data.data_dir, or use "
          "cifar:/image_folder:/npz: sources") from e
    n = len(src)
    xs = np.stack([np.asarray(src[i]["image"]) for i in range(n)])
    ys = np.asarray([int(src[i]["label"]) for i in range(n)], np.int32)
    splits[split] = (_to_float(xs), ys)
  try:
    class_names = list(builder.info.features["label"].names)
  except Exception:  # mock data may lack full metadata
    class_names = [str(i) for i in range(int(max(splits["train"][1].max(),
                                                 splits["test"][1].max())) + 1)]
  return Dataset(f"tfds:{name}", *splits["train"], *splits["test"], class_names)


# The CIFAR python archives (what torchvision downloads): folder, batch files, label keys.
_CIFAR_LAYOUTS = {
    "cifar-10-batches-py": dict(train=[f"data_batch_{i}" for i in range(1, 6)],
                                test=["test_batch"], meta="batches.meta", labels=b"labels",
                                names=b"label_names"),
    "cifar-100-python": dict(train=["train"], test=["test"], meta="meta",
                             labels=b"fine_labels", names=b"fine_label_names"),
}


def _unpickle(data: bytes) -> dict:
  import pickle  # pylint: disable=import-outside-toplevel
  # The archives are pickles, as torchvision reads them: open only archives you trust.
  return pickle.loads(data, encoding="bytes")


def load_cifar(path: str) -> Dataset:
  """CIFAR-10 or CIFAR-100 from the original python archives (see the module docstring)."""
  import tarfile  # pylint: disable=import-outside-toplevel
  p = Path(path).expanduser()
  files: dict[str, bytes] = {}
  if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")):
    with tarfile.open(p) as tar:
      for m in tar.getmembers():
        if m.isfile() and len(Path(m.name).parts) >= 2:
          files["/".join(Path(m.name).parts[-2:])] = tar.extractfile(m).read()
  elif p.is_dir():
    folders = [p] if p.name in _CIFAR_LAYOUTS else [p / n for n in _CIFAR_LAYOUTS]
    for folder in folders:
      if folder.is_dir():
        for f in folder.iterdir():
          if f.is_file():
            files[f"{folder.name}/{f.name}"] = f.read_bytes()
  else:
    raise DataError(f"cifar:{path}: no such folder or .tar.gz archive")
  for folder, layout in _CIFAR_LAYOUTS.items():
    wanted = [f"{folder}/{n}" for n in layout["train"] + layout["test"] + [layout["meta"]]]
    if not any(w in files for w in wanted):
      continue
    missing = [w for w in wanted if w not in files]
    if missing:
      raise DataError(f"cifar:{path}: {folder} lacks {', '.join(missing)}")

    def read(names):
      batches = [_unpickle(files[f"{folder}/{n}"]) for n in names]
      x = np.concatenate([np.asarray(b[b"data"], np.uint8) for b in batches])
      y = np.concatenate([np.asarray(b[layout["labels"]], np.int32) for b in batches])
      return _to_float(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), y

    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in _unpickle(files[f"{folder}/{layout['meta']}"])[layout["names"]]]
    return Dataset(f"cifar:{path}", *read(layout["train"]), *read(layout["test"]), names)
  raise DataError(f"cifar:{path} holds neither cifar-10-batches-py/ nor cifar-100-python/ "
                  "(the python archives torchvision downloads)")


def _decode(data: bytes) -> np.ndarray:
  from PIL import Image
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def load_image_folder(path: str) -> Dataset:
  """Reads <root>/train/<class>/* and <root>/test/<class>/*, where <root> is the directory,
  or the top of the .zip (or the one folder a zip holds everything in). Nothing deeper in the
  tree is read as a split: a train/ folder further down is not this dataset's."""
  p = Path(path)
  if not p.exists():
    raise DataError(f"image folder {path!r} does not exist; give a directory or .zip with "
                    "train/<class>/ and test/<class>/")
  if p.is_file():
    if not zipfile.is_zipfile(p):
      raise DataError(f"{path!r} is a file but not a zip archive")
    zf = zipfile.ZipFile(p)
    names = [n for n in zf.namelist() if n.lower().endswith(IMAGE_EXTS)]
    tops = {Path(n).parts[0] for n in names}
    # A zip of the folder itself holds everything under one top folder: that is the root.
    strip = 1 if len(tops) == 1 and not tops & {"train", "test"} else 0
    files = [(Path(n).parts[strip:], n) for n in names]
    read = zf.read
  else:
    files = [(f.relative_to(p).parts, str(f.relative_to(p)))
             for split in ("train", "test") if (p / split).is_dir()
             for f in sorted((p / split).rglob("*")) if f.suffix.lower() in IMAGE_EXTS]
    read = lambda n: (p / n).read_bytes()
  # Files sit at split/class/..., split at the root.
  entries = [(parts[0], parts[1], n) for parts, n in files
             if len(parts) >= 3 and parts[0] in ("train", "test")]
  if not entries:
    raise DataError(f"no train/<class>/<image> files at the top of {path!r}; the folder or "
                    "zip must hold train/ and test/ themselves")
  class_names = sorted({c for s, c, _ in entries if s == "train"})
  index = {c: i for i, c in enumerate(class_names)}
  out = {}
  for split in ("train", "test"):
    items = sorted((c, n) for s, c, n in entries if s == split)
    if not items:
      raise DataError(f"{path!r} has no {split}/ images")
    missing = sorted({c for c, _ in items} - set(index))
    if missing:
      raise DataError(f"{split}/ of {path!r} has classes absent from train/: {missing}")
    xs = np.stack([_decode(read(n)) for _, n in items])
    ys = np.asarray([index[c] for c, _ in items], np.int32)
    out[split] = (_to_float(xs), ys)
  return Dataset(f"image_folder:{path}", *out["train"], *out["test"], class_names)


def load_npz(path: str) -> Dataset:
  """Arrays x_train, y_train, x_test, y_test (+ optional class_names) from one .npz."""
  if not os.path.exists(path):
    raise DataError(f"npz file {path!r} does not exist")
  try:
    with np.load(path, allow_pickle=False) as f:
      if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError("a single array, not an archive")
      missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
      if missing:
        raise DataError(f"{path!r} lacks arrays {missing}; it needs x_train, y_train, x_test, "
                        "y_test")
      arrays = {k: f[k] for k in f.files}
  except DataError:
    raise
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise DataError(f"{path!r} is not an .npz archive (of x_train, y_train, x_test, "
                    f"y_test): {type(e).__name__}") from None
  y_tr = arrays["y_train"].astype(np.int32)
  num_classes = int(max(y_tr.max(), arrays["y_test"].max())) + 1
  names = ([str(c) for c in arrays["class_names"]] if "class_names" in arrays
           else [str(i) for i in range(num_classes)])
  return Dataset(f"npz:{path}", _to_float(arrays["x_train"]), y_tr,
                 _to_float(arrays["x_test"]), arrays["y_test"].astype(np.int32), names)


def load_tiny_imagenet(path: str) -> Dataset:
  """Tiny-ImageNet-200 from its standard folder; val/ (flat, with annotations) is the test set."""
  root = Path(path)
  if (root / "tiny-imagenet-200").is_dir():
    root = root / "tiny-imagenet-200"
  ann = root / "val" / "val_annotations.txt"
  if not (root / "train").is_dir() or not ann.exists():
    raise DataError(f"{path!r} is not a tiny-imagenet-200 folder: it needs train/<wnid>/images/ "
                    "and val/images/ with val/val_annotations.txt")
  wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
  index = {w: i for i, w in enumerate(wnids)}
  words = {}
  if (root / "words.txt").exists():
    for line in (root / "words.txt").read_text().splitlines():
      wnid, _, name = line.partition("\t")
      words[wnid] = name.split(",")[0].strip()
  xs, ys = [], []
  for w in wnids:
    for f in sorted((root / "train" / w / "images").glob("*")):
      if f.suffix.lower() in IMAGE_EXTS:
        xs.append(_decode(f.read_bytes()))
        ys.append(index[w])
  if not xs:
    raise DataError(f"no training images under {root / 'train'}")
  vx, vy = [], []
  for line in ann.read_text().splitlines():
    parts = line.split("\t")
    if len(parts) < 2:
      continue
    if parts[1] not in index:
      raise DataError(f"{ann} labels {parts[0]} with {parts[1]!r}, a class absent from train/")
    vx.append(_decode((root / "val" / "images" / parts[0]).read_bytes()))
    vy.append(index[parts[1]])
  return Dataset(f"tiny_imagenet:{path}", _to_float(np.stack(xs)), np.asarray(ys, np.int32),
                 _to_float(np.stack(vx)), np.asarray(vy, np.int32),
                 [words.get(w, w) for w in wnids])


def resize(x: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of (N, H, W, C) images to (N, size, size, C)."""
  if x.shape[1] == size and x.shape[2] == size:
    return x
  import jax
  import jax.numpy as jnp
  out = jax.image.resize(jnp.asarray(x), (x.shape[0], size, size, x.shape[3]), "bilinear")
  return np.clip(np.asarray(out), 0.0, 1.0).astype(np.float32)


def _cached(cache_dir: str | None, source: str, loader):
  """Decoding 60k JPEGs takes a while: keep the decoded uint8 arrays as an npz."""
  if not cache_dir:
    return loader()
  key = hashlib.sha1(source.encode()).hexdigest()[:12]
  path = Path(cache_dir) / f"dataset_{key}.npz"
  if path.exists():
    try:
      with np.load(path) as f:
        return Dataset(source, f["x_train"].astype(np.float32) / 255.0, f["y_train"],
                       f["x_test"].astype(np.float32) / 255.0, f["y_test"],
                       [str(c) for c in f["class_names"]])
    except Exception as e:  # a corrupt cache is rebuilt, not fatal
      logging.warning("dataset cache %s unreadable (%s); rebuilding", path, e)
  ds = loader()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, x_train=np.round(ds.x_train * 255).astype(np.uint8), y_train=ds.y_train,
           x_test=np.round(ds.x_test * 255).astype(np.uint8), y_test=ds.y_test,
           class_names=np.asarray(ds.class_names))
  os.replace(tmp, path)
  return ds


PATH_SOURCES = ("image_folder", "npz", "cifar", "tiny_imagenet")


def check_dataset(ds: Dataset) -> Dataset:
  """Raises DataError for a dataset whose arrays do not fit together; returns it."""
  where = ds.name
  for split in ("train", "test"):
    x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
    if x.ndim != 4 or not 1 <= x.shape[-1] <= 4 or min(x.shape[1:3]) < 1:
      raise DataError(f"{where}: x_{split} has shape {x.shape}; expected images (N, H, W) or "
                      "(N, H, W, C) with 1-4 channels")
    if y.ndim != 1 or len(y) != len(x):
      raise DataError(f"{where}: y_{split} has shape {y.shape} for {len(x)} images in x_{split}; "
                      "expected one integer label per image")
    if len(y) and (y.min() < 0 or y.max() >= ds.num_classes):
      raise DataError(f"{where}: y_{split} holds labels outside 0..{ds.num_classes - 1}")
  if ds.x_test.shape[1:] != ds.x_train.shape[1:]:
    raise DataError(f"{where}: test images are {ds.x_test.shape[1:]}, train images "
                    f"{ds.x_train.shape[1:]}")
  return ds


def check_source(source: str) -> None:
  """Raises DataError for a source that cannot load, without loading it (paths must exist)."""
  kind, _, arg = source.partition(":")
  if kind == "digits" or (kind == "tfds" and arg):
    return
  if kind in PATH_SOURCES and arg:
    if not Path(arg).expanduser().exists():
      raise DataError(f"config.data.source={source!r}: {arg} does not exist; give the path of "
                      "the folder or file")
    return
  raise DataError(f"unknown dataset source {source!r}; use 'digits', 'tfds:<name>', "
                  "'cifar:<path>', 'image_folder:<dir or zip>', 'npz:<file>' or "
                  "'tiny_imagenet:<dir>'")


def load_dataset(source: str, *, image_size: int = 0, data_dir: str | None = None,
                 cache_dir: str | None = None, seed: int = 0) -> Dataset:
  """Loads a dataset by source string (see the module docstring).

  Args:
    source: 'digits', 'tfds:<name>', 'cifar:<path>', 'image_folder:<path>', 'npz:<path>' or
      'tiny_imagenet:<dir>'.
    image_size: if > 0, resize images to image_size x image_size.
    data_dir: tfds data directory.
    cache_dir: where decoded image folders are cached (None: no cache).
    seed: split seed for sources without a test split ('digits').
  """
  kind, _, arg = source.partition(":")
  if kind == "digits":
    ds = load_digits(seed)
  elif kind == "tfds" and arg:
    ds = load_tfds(arg, data_dir)
  elif kind == "image_folder" and arg:
    ds = _cached(cache_dir, source, lambda: load_image_folder(arg))
  elif kind == "npz" and arg:
    ds = load_npz(arg)
  elif kind == "cifar" and arg:
    ds = load_cifar(arg)
  elif kind == "tiny_imagenet" and arg:
    ds = _cached(cache_dir, source, lambda: load_tiny_imagenet(arg))
  else:
    raise DataError(f"unknown dataset source {source!r}; use 'digits', 'tfds:<name>', "
                    "'cifar:<path>', 'image_folder:<dir or zip>', 'npz:<file>' or "
                    "'tiny_imagenet:<dir>'")
  check_dataset(ds)
  if image_size:
    ds = dataclasses.replace(ds, x_train=resize(ds.x_train, image_size),
                             x_test=resize(ds.x_test, image_size))
  return ds


@dataclasses.dataclass
class ZCA:
  """A fitted ZCA transform on flattened images of dimension D.

  Attributes:
    mean: (D,).  whiten: (D, D) = U diag(1/sqrt(l+eps)) U^T.  unwhiten: its inverse.
  """

  mean: np.ndarray
  whiten: np.ndarray
  unwhiten: np.ndarray

  def apply(self, x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) in [0,1] -> whitened (N, H, W, C) float32."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64) - self.mean
    return (flat @ self.whiten).reshape(x.shape).astype(np.float32)

  def invert(self, x: np.ndarray) -> np.ndarray:
    """Whitened (N, H, W, C) -> pixel space (N, H, W, C) float32 (not clipped)."""
    flat = np.asarray(x).reshape(x.shape[0], -1).astype(np.float64) @ self.unwhiten
    return (flat + self.mean).reshape(x.shape).astype(np.float32)


def fit_zca(x: np.ndarray, eps: float = 0.1) -> ZCA:
  """Fits ZCA on (N, H, W, C) images as the reference does: flatten, centre, covariance with
  1/(N-1), eigh, whitening U diag(1/sqrt(l + eps)) U^T."""
  flat = x.reshape(x.shape[0], -1).astype(np.float64)
  mean = flat.mean(axis=0)
  centred = flat - mean
  cov = centred.T @ centred / (flat.shape[0] - 1)
  evals, evecs = np.linalg.eigh(cov)
  evals = np.maximum(evals, 0.0)  # round-off can make tiny eigenvalues negative
  whiten = (evecs * (1.0 / np.sqrt(evals + eps))) @ evecs.T
  unwhiten = (evecs * np.sqrt(evals + eps)) @ evecs.T
  return ZCA(mean, whiten, unwhiten)


def data_fingerprint(x: np.ndarray) -> str:
  """A short hash of an image array (shape and contents)."""
  h = hashlib.sha1(str(x.shape).encode())
  h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
  return h.hexdigest()[:16]


def fit_zca_cached(x: np.ndarray, eps: float, cache_dir: str | None) -> ZCA:
  """`fit_zca`, cached in cache_dir/zca_<fingerprint>.npz (the eigh runs once per dataset)."""
  if not cache_dir:
    return fit_zca(x, eps)
  path = Path(cache_dir) / f"zca_{data_fingerprint(x)}_{eps:g}.npz"
  if path.exists():
    try:
      with np.load(path) as f:
        return ZCA(f["mean"], f["whiten"], f["unwhiten"])
    except Exception as e:
      logging.warning("ZCA cache %s unreadable (%s); refitting", path, e)
  zca = fit_zca(x, eps)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, mean=zca.mean, whiten=zca.whiten, unwhiten=zca.unwhiten)
  os.replace(tmp, path)
  return zca


@dataclasses.dataclass
class Prepared:
  """What the pipeline trains on: normalised images plus the way back to pixels.

  Attributes:
    dataset: the raw Dataset.
    x_train, x_test: normalised (ZCA or mean/std) float32 (N, H, W, C).
    zca: the fitted ZCA, or None when normalisation is mean/std.
  """

  dataset: Dataset
  x_train: np.ndarray
  x_test: np.ndarray
  zca: ZCA | None
  mean: np.ndarray | None = None
  std: np.ndarray | None = None

  @property
  def y_train(self) -> np.ndarray:
    """(N,) int labels of x_train."""
    return self.dataset.y_train

  @property
  def y_test(self) -> np.ndarray:
    return self.dataset.y_test

  @property
  def num_classes(self) -> int:
    return self.dataset.num_classes

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.dataset.image_shape

  def to_pixels(self, x: np.ndarray) -> np.ndarray:
    """Normalised (N, H, W, C) -> [0, 1] pixels (clipped), for display."""
    if self.zca is not None:
      out = self.zca.invert(np.asarray(x))
    else:
      out = np.asarray(x) * self.std + self.mean
    return np.clip(out, 0.0, 1.0)


def prepare(ds: Dataset, *, zca: bool, zca_eps: float = 0.1,
            cache_dir: str | None = None) -> Prepared:
  """Normalises a Dataset: ZCA fit on train (cached), or per-channel mean/std."""
  if zca:
    t = fit_zca_cached(ds.x_train, zca_eps, cache_dir)
    return Prepared(ds, t.apply(ds.x_train), t.apply(ds.x_test), t)
  if "cifar" in ds.name.lower():
    mean, std = np.asarray(CIFAR_MEAN, np.float32), np.asarray(CIFAR_STD, np.float32)
  else:
    # float64 accumulation: float32 sums of ~10^7 pixels saturate.
    mean = ds.x_train.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = ds.x_train.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32) + 1e-6
  return Prepared(ds, (ds.x_train - mean) / std, (ds.x_test - mean) / std, None, mean, std)
