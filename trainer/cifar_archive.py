"""The official CIFAR archives -> a tfds copy, without TensorFlow.

tfds's own CIFAR builders read the archives with TensorFlow (``tf.io.gfile``) and encode the
images with ``tf.image``. `prepare` does the same work with NumPy and Pillow: it downloads the
binary archive that tfds downloads (checked against the size and SHA-256 that tfds registers),
reads it with NumPy, stores each image as a PNG (lossless: the pixels of the archive) and lets
tfds's builder write the copy (same name, version, features, ids, example order and
splits as ``tfds.builder('cifar10').download_and_prepare()``), in ArrayRecord (Parquet where
the ArrayRecord package is not installed), which `tfds.data_source` and `tfds.load` read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import os
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Archive:
  """An official binary CIFAR archive, as tfds's checksum registry lists it."""

  url: str
  size: int
  sha256: str


ARCHIVES = {
  "cifar10": Archive(
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    170052171,
    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
  ),
  "cifar100": Archive(
    "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    168513733,
    "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
  ),
}


# ArrayRecord where its package installs (tfds depends on it on Linux only), else Parquet: both
# have random access and are read by `tfds.data_source` and `tfds.load`.
FILE_FORMAT = "array_record" if importlib.util.find_spec("array_record") else "parquet"


class ArchiveError(OSError):
  """The downloaded archive is not the official one (size or checksum)."""


def png(image: np.ndarray) -> bytes:
  """``uint8[H, W, 3]`` -> PNG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="png")
  return buffer.getvalue()


class _FromExtractedArchive:
  """tfds's CIFAR builder, reading an extracted archive with NumPy (mixed in before it)."""

  def __init__(self, *, archive_dir: str, **kwargs):
    self._archive_dir = archive_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # the archive is already downloaded and extracted
    info = self._cifar_info
    root = Path(self._archive_dir, info.prefix)
    for key, names_file in zip(info.label_keys, info.label_files, strict=True):
      names = [n for n in (root / names_file).read_text().split("\n") if n]
      self.info.features[key].names = names
    return {
      tfds.Split.TRAIN: self._examples("train_", [root / f for f in info.train_files]),
      tfds.Split.TEST: self._examples("test_", [root / f for f in info.test_files]),
    }

  def _examples(self, id_prefix: str, paths):
    """As tfds's ``_generate_examples``: key = index, ``id`` = prefix + index."""
    label_keys = self._cifar_info.label_keys
    n = len(label_keys)
    index = 0
    for path in paths:
      rows = np.fromfile(path, np.uint8).reshape(-1, n + 3 * 32 * 32)
      for row in rows:
        record = {key: int(label) for key, label in zip(label_keys, row[:n], strict=True)}
        record["id"] = f"{id_prefix}{index:05d}"
        record["image"] = png(row[n:].reshape(3, 32, 32).transpose(1, 2, 0))
        yield index, record
        index += 1


class _Cifar10(_FromExtractedArchive, tfds.image_classification.Cifar10, skip_registration=True):
  name = "cifar10"


class _Cifar100(_FromExtractedArchive, tfds.image_classification.Cifar100, skip_registration=True):
  name = "cifar100"


BUILDERS = {"cifar10": _Cifar10, "cifar100": _Cifar100}


def sha256(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def download(archive: Archive, folder: str | os.PathLike) -> Path:
  """Downloads ``archive`` into ``folder`` (kept there: a second call reuses a good copy).

  Raises:
    ArchiveError: the file's size or SHA-256 is not the official archive's.
  """
  path = Path(folder) / archive.url.rsplit("/", 1)[-1]
  if not path.exists() or path.stat().st_size != archive.size:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    urllib.request.urlretrieve(archive.url, partial)
    os.replace(partial, path)
  if path.stat().st_size != archive.size or sha256(path) != archive.sha256:
    path.unlink()
    raise ArchiveError(
      f"{archive.url} downloaded to {path} is not the official archive (size or SHA-256 "
      "differs); it was deleted: try again"
    )
  return path


def prepare(name: str, data_dir: str | None, archive: Archive | None = None) -> None:
  """Downloads the official archive of ``name`` and writes the tfds copy into ``data_dir``
  (tfds's default data dir if None), in `FILE_FORMAT`; the archive is kept in
  ``DATA_DIR/downloads``."""
  archive = archive or ARCHIVES[name]
  data_dir = data_dir or tfds.core.constants.DATA_DIR
  path = download(archive, Path(data_dir) / "downloads")
  with tempfile.TemporaryDirectory(dir=Path(data_dir) / "downloads") as extracted:
    with tarfile.open(path) as tar:
      tar.extractall(extracted, filter="data")
    builder = BUILDERS[name](archive_dir=extracted, data_dir=data_dir, file_format=FILE_FORMAT)
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP
      )
    )
