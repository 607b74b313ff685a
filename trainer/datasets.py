"""CIFAR from TensorFlow Datasets as whole uint8 arrays in host memory.

`load_split` reads a tfds split (``train``, ``test[:1000]``, ``train[:10%]+test``...) into
``uint8[N, 32, 32, 3]`` images and ``int32[N]`` labels from the tfds copy the user has, in any
format tfds writes: ArrayRecord and Parquet through `tfds.data_source`, TFRecord (tfds's default)
through `TFRecordSplit`; the same arrays in the same order whatever the format, and no
TensorFlow is needed. It applies the split slice itself (`tfds.data_source` ignores it). When
the dataset is absent it downloads and prepares it (`trainer.cifar_archive`, no TensorFlow),
and fails fast with a clear `DatasetNotFoundError` when there is no network to download it.
`DATASETS` holds what the trainer needs to know of each dataset (classes, pixel statistics).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import struct
import threading
import urllib.parse

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core.file_adapters import FileFormat

from trainer import cifar_archive
from trainer.errors import DataError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the trainer needs to know about a dataset."""

  num_classes: int
  mean: tuple[float, float, float]  # per-channel, of pixels scaled to [0, 1]
  std: tuple[float, float, float]


DATASETS = {
  "cifar10": DatasetSpec(10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
  "cifar100": DatasetSpec(100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


_PREPARE_AGAIN = "delete that copy to have it downloaded and prepared again"


class DatasetNotFoundError(DataError, FileNotFoundError):
  """The dataset is not prepared in the data dir and cannot be downloaded."""


class SplitError(ValueError):
  """A split spec that the dataset cannot serve: malformed, an unknown split name, a slice out
  of range, or empty (a config error, unlike a `DataError`)."""


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def network_available(url: str, timeout: float = 3.0) -> bool:
  """Whether a TCP connection to the host (and port) of ``url`` opens within about ``timeout``
  seconds.

  The probe runs in a daemon thread so that a hanging DNS lookup (which ignores socket
  timeouts) cannot stall the caller for longer than ``2 * timeout``.
  """
  parts = urllib.parse.urlsplit(url)
  address = (parts.hostname, parts.port or (80 if parts.scheme == "http" else 443))
  result = []

  def probe():
    try:
      with socket.create_connection(address, timeout=timeout):
        result.append(True)
    except OSError:
      result.append(False)

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(2 * timeout)
  return bool(result and result[0])


def split_ranges(split: str, split_lengths) -> list[tuple[str, int, int]]:
  """Resolves a tfds split string into ``[(split_name, start, stop), ...]`` index ranges.

  Args:
    split: a tfds split spec, e.g. ``"train"``, ``"train[:4096]"``, ``"test[10%:]"``,
      ``"train[:1%]+test"``.
    split_lengths: ``{split_name: num_examples}`` of the whole splits.

  Raises:
    SplitError: a malformed spec, an unknown split name or an out-of-range slice.
  """

  class _Info:
    def __init__(self, n):
      self.num_examples = n
      self.shard_lengths = [n]  # "shard" slicing: one shard per split

  infos = {name: _Info(int(n)) for name, n in split_lengths.items()}
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
  except (ValueError, AssertionError) as e:
    msg = " ".join(str(e).split())
    raise SplitError(f"bad split {split!r}: {msg}") from None
  ranges = []
  for ins in instructions:
    n = infos[ins.splitname].num_examples
    start, stop, _ = slice(ins.from_, ins.to).indices(n)
    ranges.append((ins.splitname, start, stop))
  return ranges


def _split_names(split: str) -> list[str]:
  """The split names a spec refers to (``"train[:10]+test"`` -> ``["train", "test"]``)."""
  names = []
  for part in split.split("+"):
    name = part.strip().split("[")[0].strip()
    if name and name not in names:
      names.append(name)
  return names


def _not_found_message(name: str, data_dir: str | None, detail: str) -> str:
  return (
    f"dataset {name!r} is not prepared in {_where(data_dir)} and {detail}; "
    f"point --config.data_dir at a tfds data dir holding {name}, or pre-download it on a "
    f'machine with internet (python -c "import tensorflow_datasets as tfds; '
    f"tfds.data_source('{name}', data_dir=DIR)\")"
  )


@contextlib.contextmanager
def _quiet_absl():
  """Silences tfds's absl warnings (e.g. "Variant folder ... has no dataset_info.json") while
  probing for a dataset that may legitimately be absent."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def tfrecord_index(path) -> np.ndarray:
  """Where the records of a TFRecord file are: ``int64[n, 2]`` (payload offset, length), found
  by reading only the record headers (each record is framed as: uint64 length, uint32 masked
  CRC of the length, the bytes, uint32 masked CRC of the bytes; little-endian), so that any
  record can then be read by one seek, without TensorFlow. The CRCs are not checked.

  Raises:
    DataError: the file ends inside a record.
  """
  size = os.path.getsize(path)
  entries, offset = [], 0
  with open(path, "rb") as f:
    while offset < size:
      header = f.read(12)
      if len(header) < 12:
        raise DataError(f"{path} is cut short (a record header at byte {offset}); {_PREPARE_AGAIN}")
      (length,) = struct.unpack_from("<Q", header)
      if offset + 12 + length + 4 > size:
        raise DataError(
          f"{path} is cut short (a record of {length} bytes at byte {offset}); {_PREPARE_AGAIN}"
        )
      entries.append((offset + 12, length))
      offset += 12 + length + 4
      f.seek(offset)
  return np.asarray(entries, np.int64).reshape(-1, 2)


class TFRecordSplit:
  """One split of a tfds copy prepared as TFRecord (tfds's default format), as a random-access
  sequence like `tfds.data_source`'s: the records of its files in shard order (the order every
  format of a tfds copy stores), decoded by tfds's NumPy example parser. The files are indexed
  once (`tfrecord_index`, headers only) and each record is read with one seek, so a split far
  larger than memory works; no TensorFlow needed. Picklable (for loader worker processes): the
  open files are not part of its state."""

  def __init__(self, builder, split: str):
    self._info = builder.info.splits[split]
    self._features = builder.info.features
    self._paths = [os.fspath(p) for p in self._info.filepaths]
    self._index: list[np.ndarray] | None = None
    self._ends: np.ndarray | None = None
    self._files: dict = {}

  def __getstate__(self):
    return {**self.__dict__, "_files": {}}

  def __len__(self) -> int:
    return self._info.num_examples

  def _locate(self, index: int) -> tuple[int, int, int]:
    if self._index is None:
      self._index = [tfrecord_index(path) for path in self._paths]
      self._ends = np.cumsum([len(i) for i in self._index])
      if self._ends[-1] != len(self):
        raise DataError(
          f"the TFRecord files of split {self._info.name} hold {self._ends[-1]} records, "
          f"not the {len(self)} of its dataset_info.json; {_PREPARE_AGAIN}"
        )
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} of a split of {len(self)}")
    shard = int(np.searchsorted(self._ends, index, side="right"))
    first = 0 if shard == 0 else int(self._ends[shard - 1])
    offset, length = self._index[shard][index - first]
    return shard, int(offset), int(length)

  def __getitem__(self, index: int) -> dict:
    shard, offset, length = self._locate(int(index))
    f = self._files.get(shard)
    if f is None:
      f = self._files[shard] = open(self._paths[shard], "rb")  # kept open: one seek per record
    f.seek(offset)
    return self._features.deserialize_example_np(f.read(length))


def _where(data_dir: str | None) -> str:
  """The data dir a message names: the one given, or the default that tfds looks in."""
  if data_dir:
    return data_dir
  default = tfds.core.constants.DATA_DIR  # read by tfds when its module was imported
  return f"{default} (tfds's default data dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets)"


def _builder(name: str, data_dir: str | None):
  """tfds's builder of ``name`` in ``data_dir`` (None: ``$TFDS_DATA_DIR`` or tfds's default),
  reading the copy's own ``dataset_info.json`` (its file format included) when it has one.

  Raises:
    DataError: the copy there cannot be read (a damaged ``dataset_info.json``, a folder that
      cannot be read), naming the data dir and tfds's reason.
  """
  try:
    with _quiet_absl():
      return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001  (tfds raises anything from OSError to a KeyError)
    reason = " ".join(str(e).split()) or type(e).__name__
    raise DataError(
      f"cannot read the tfds copy of {name!r} in {_where(data_dir)}: {reason}; {_PREPARE_AGAIN}"
    ) from None


def _open(builder, split_names) -> dict:
  """``{split_name: source}`` of a prepared copy in the format it has: TFRecord through
  `TFRecordSplit`, ArrayRecord and Parquet through the builder's own data source (which
  `tfds.testing.mock_data` replaces)."""
  if builder.is_prepared():
    unknown = [s for s in split_names if s not in builder.info.splits]
    if unknown:
      raise SplitError(
        f"unknown split {unknown[0]!r} of {builder.name}; it has {', '.join(builder.info.splits)}"
      )
    if builder.info.file_format == FileFormat.TFRECORD:
      return {s: TFRecordSplit(builder, s) for s in split_names}
  return {s: builder.as_data_source(s) for s in split_names}


def _data_sources(name: str, split_names, data_dir: str | None, download: bool):
  """``{split_name: source}`` (``len`` and ``[i]`` as `tfds.data_source`'s) of the copy in
  ``data_dir`` (None: ``$TFDS_DATA_DIR`` or tfds's default), in whatever format it has,
  downloading and preparing the dataset first if it is absent.

  Raises:
    DataError: the copy is damaged or unreadable (naming the data dir and tfds's reason).
    DatasetNotFoundError: it is absent and cannot be downloaded.
    SplitError: a split name the copy does not have.
  """
  builder = _builder(name, data_dir)
  with _quiet_absl():
    try:
      return _open(builder, split_names)
    except (SplitError, DataError):
      raise
    except Exception as e:  # noqa: BLE001  (absent under mock_data: decide below)
      if builder.is_prepared():
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(
          f"cannot read the tfds copy of {name!r} in {builder.data_dir}: {reason}; "
          + _PREPARE_AGAIN
        ) from None
  if not download:
    raise DatasetNotFoundError(_not_found_message(name, data_dir, "downloads are disabled"))
  archive = cifar_archive.ARCHIVES.get(name)
  url = archive.url if archive else "https://storage.googleapis.com"
  if not network_available(url):
    host = urllib.parse.urlsplit(url).hostname
    raise DatasetNotFoundError(
      _not_found_message(name, data_dir, f"there is no network to download it ({host})")
    )
  if archive:
    cifar_archive.prepare(name, data_dir)  # without TensorFlow
  else:  # tfds's own builder (most need TensorFlow to prepare)
    tfds.builder(name, data_dir=data_dir, file_format="array_record").download_and_prepare()
  with _quiet_absl():
    return _open(_builder(name, data_dir), split_names)


def read_example(source, index: int, where: str) -> dict:
  """``source[index]``; a record that cannot be read or decoded (a file cut short, a corrupt
  image) is a `DataError` naming ``where`` and the reader's reason."""
  try:
    return source[index]
  except DataError:
    raise
  except Exception as e:  # noqa: BLE001  (each reader and decoder raises its own)
    reason = " ".join(str(e).split()) or type(e).__name__
    raise DataError(f"cannot read example {index} of {where}: {reason}; {_PREPARE_AGAIN}") from None


def _resolve(name: str, split: str, data_dir: str | None, download: bool):
  """The data sources of the splits ``split`` names and its `split_ranges`."""
  if data_dir is not None:
    data_dir = os.path.expanduser(data_dir)
  sources = _data_sources(name, _split_names(split), data_dir, download)
  return sources, split_ranges(split, {s: len(src) for s, src in sources.items()})


class SplitSource:
  """A split spec (``train[:45000]``, ``train[:3]+test``, ...) of a tfds copy as one
  random-access sequence of ``(image uint8[H, W, C], label)``, in the spec's order; picklable
  (for loader worker processes). A record that cannot be read or decoded is a `DataError`
  naming the dataset, the split and the data dir."""

  def __init__(self, name: str, sources: dict, ranges, where: str):
    self.name, self._sources, self._ranges, self.where = name, sources, ranges, where
    self._ends = np.cumsum([stop - start for _, start, stop in ranges])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def record(self, index: int) -> dict:
    """The decoded tfds example at ``index`` of the spec (all its features)."""
    part = int(np.searchsorted(self._ends, index, side="right"))
    split_name, start, _ = self._ranges[part]
    offset = index - (int(self._ends[part - 1]) if part else 0)
    where = f"split {split_name} of {self.name!r} in {self.where}"
    return read_example(self._sources[split_name], start + offset, where)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    record = self.record(index)
    image = np.asarray(record["image"], np.uint8)
    return (image[..., None] if image.ndim == 2 else image), int(record["label"])

  def shared_with(self, other: SplitSource) -> int:
    """How many examples this spec and ``other`` (of the same copy) have in common (0:
    disjoint)."""
    return sum(
      max(0, min(stop_a, stop_b) - max(start_a, start_b))
      for name_a, start_a, stop_a in self._ranges
      for name_b, start_b, stop_b in other._ranges
      if name_a == name_b
    )


def open_split(
  name: str, split: str, data_dir: str | None = None, *, download: bool = True
) -> SplitSource:
  """The split spec ``split`` of dataset ``name`` as a `SplitSource`, from the copy in
  ``data_dir`` (None: ``$TFDS_DATA_DIR`` or tfds's default) in whatever format it has, downloaded
  and prepared first if absent and allowed.

  Raises:
    DatasetNotFoundError: the dataset is absent and cannot be downloaded (within seconds).
    DataError: the copy is damaged or unreadable, or its examples lack ``image`` or ``label``.
    SplitError: a malformed split spec, an unknown split, an out-of-range slice, or empty.
  """
  sources, ranges = _resolve(name, split, data_dir, download)
  source = SplitSource(name, sources, ranges, _where(data_dir))
  if not len(source):
    raise SplitError(f"split {split!r} of {name} is empty")
  with _quiet_absl():  # "OpenCV is not installed ... Defaulting to PIL"
    first = source.record(0)
  missing = [f for f in ("image", "label") if f not in first]
  if missing:
    raise DataError(
      f"dataset {name!r} has no {' or '.join(repr(f) for f in missing)} feature (its examples "
      f"have {', '.join(sorted(first))}); the trainer reads image classification datasets "
      "with 'image' and 'label'"
    )
  return source


def load_split(
  name: str, split: str, data_dir: str | None = None, *, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole (sliced) split into memory.

  Args:
    name: tfds dataset name (``cifar10`` or ``cifar100``; any image classification dataset with
      ``image`` and ``label`` features works).
    split: tfds split spec; slices such as ``train[:4096]`` are honoured.
    data_dir: tfds data dir; ``None`` for tfds's default.
    download: whether a missing dataset may be downloaded (only tried when the network is up).

  Returns:
    ``(images, labels)``: ``uint8[N, H, W, C]`` and ``int32[N]``, in the split's order.

  Raises:
    As `open_split`.
  """
  return load_source(open_split(name, split, data_dir, download=download))


def load_source(source: SplitSource) -> tuple[np.ndarray, np.ndarray]:
  """``(uint8[N, H, W, C] images, int32[N] labels)``: every example of ``source``, in order."""
  with _quiet_absl():  # "OpenCV is not installed ... Defaulting to PIL"
    examples = [source[i] for i in range(len(source))]  # as fast as __getitems__
  images = np.stack([image for image, _ in examples])
  return images, np.asarray([label for _, label in examples], np.int32)


def num_classes(name: str, data_dir: str | None = None) -> int:
  """The number of classes of the ``label`` feature of dataset ``name``."""
  return int(_builder(name, data_dir).info.features["label"].num_classes)
