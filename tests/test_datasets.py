"""Tests of trainer/datasets.py and trainer/cifar_archive.py: split slicing, the copy a user
has in any format tfds writes (TFRecord, ArrayRecord, Parquet: the same arrays, no TensorFlow),
preparing CIFAR from the official archive without TensorFlow, and failing fast offline."""

import json
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import (
  DETERMINISTIC_FIELDS,
  HAS_REAL_DATA,
  LABEL_NAMES,
  NO_REAL_DATA,
  REAL_DATA_DIR,
  ROOT,
  TINY,
  convert_copy,
  fake_cifar10_archive,
  local_archive,
  serve,
  subprocess_env,
  tfrecord_bytes,
  tiny_config,
)
from trainer import cifar_archive, datasets
from trainer.errors import DataError
from trainer.loop import train_and_evaluate
from trainer.metrics import read_metrics

# ---------------------------------------------------------------------------------------------
# Split slicing (tfds.data_source ignores it: datasets.load_split applies it)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "spec, expected",
  [
    ("train", [("train", 0, 100)]),
    ("train[:40]", [("train", 0, 40)]),
    ("train[10:]", [("train", 10, 100)]),
    ("train[-5:]", [("train", 95, 100)]),
    ("train[:10%]", [("train", 0, 10)]),
    ("train[90%:]", [("train", 90, 100)]),
    ("train[:3]+test[5:7]", [("train", 0, 3), ("test", 5, 7)]),
  ],
)
def test_split_ranges(spec, expected):
  assert datasets.split_ranges(spec, {"train": 100, "test": 20}) == expected


@pytest.mark.parametrize("spec", ["train[:200]", "validation", "train[", "train[a:b]"])
def test_split_ranges_rejects_bad_specs(spec):
  with pytest.raises(ValueError):
    datasets.split_ranges(spec, {"train": 100, "test": 20})


def test_load_split_applies_the_slice_under_mock_data():
  with tfds.testing.mock_data(num_examples=20):
    images, labels = datasets.load_split("cifar10", "train", data_dir="/nonexistent")
    head, head_labels = datasets.load_split("cifar10", "train[:7]", data_dir="/nonexistent")
    tail, _ = datasets.load_split("cifar10", "train[15:]")
    both, both_labels = datasets.load_split("cifar10", "train[:3]+test[:2]")
    test_images, _ = datasets.load_split("cifar10", "test")
  assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
  assert labels.shape == (20,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < 10
  np.testing.assert_array_equal(head, images[:7])
  np.testing.assert_array_equal(head_labels, labels[:7])
  np.testing.assert_array_equal(tail, images[15:])
  np.testing.assert_array_equal(both, np.concatenate([images[:3], test_images[:2]]))
  assert both_labels.shape == (5,)


def test_load_split_cifar100_under_mock_data():
  with tfds.testing.mock_data(num_examples=8):
    images, labels = datasets.load_split("cifar100", "test[:50%]")
  assert images.shape == (4, 32, 32, 3)
  assert labels.max() < 100


@pytest.mark.slow
@pytest.mark.skipif(not HAS_REAL_DATA, reason=NO_REAL_DATA)
def test_load_split_real_cifar10_slice_holds():
  images, labels = datasets.load_split("cifar10", "test[:1000]", REAL_DATA_DIR)
  assert images.shape == (1000, 32, 32, 3) and images.dtype == np.uint8
  assert labels.shape == (1000,) and set(np.unique(labels)) <= set(range(10))
  tail, _ = datasets.load_split("cifar10", "test[-10:]", REAL_DATA_DIR)
  assert tail.shape == (10, 32, 32, 3)
  assert not np.array_equal(tail, images[-10:])  # really the end of the split, not its start
  assert 100 < images.mean() < 160  # real photos, not zeros


def test_absent_dataset_offline_fails_fast_and_names_data_dir(tmp_path, monkeypatch):
  monkeypatch.setattr(datasets, "network_available", lambda *a, **k: False)
  start = time.monotonic()
  with pytest.raises(datasets.DatasetNotFoundError, match="--config.data_dir") as info:
    datasets.load_split("cifar100", "train", data_dir=str(tmp_path))
  assert time.monotonic() - start < 60
  assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_absent_dataset_without_download_fails(tmp_path):
  with pytest.raises(datasets.DatasetNotFoundError, match="--config.data_dir"):
    datasets.load_split("cifar10", "test", data_dir=str(tmp_path), download=False)


def test_network_probe_gives_up_quickly_on_a_hanging_connection(monkeypatch):
  def hang(*args, **kwargs):
    time.sleep(5)
    raise OSError("timed out")

  monkeypatch.setattr(datasets.socket, "create_connection", hang)
  start = time.monotonic()
  assert not datasets.network_available("https://example.org/file", timeout=0.5)
  assert time.monotonic() - start < 2.0


def test_network_probe_uses_the_port_of_the_url():
  with socket.socket() as listening:
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    assert datasets.network_available(f"http://127.0.0.1:{port}/x")
  assert not datasets.network_available(f"http://127.0.0.1:{port}/x")  # closed now


# ---------------------------------------------------------------------------------------------
# Preparing CIFAR from the official archive, and reading the copy in every format
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A fake official archive, downloaded over HTTP from localhost and prepared by `prepare`
  (ArrayRecord), and Parquet and TFRecord copies written from its records."""
  base = tmp_path_factory.mktemp("cifar")
  path, rows = fake_cifar10_archive(base / "www")
  with serve(base / "www") as url:
    archive = local_archive(f"{url}/{path.name}", path)
    cifar_archive.prepare("cifar10", str(base / "array_record"), archive)
  copies = {"array_record": base / "array_record"}
  for file_format in ("parquet", "tfrecord"):
    copies[file_format] = convert_copy(base / "array_record", base / file_format, file_format)
  return {"rows": rows, "copies": copies, "archive": archive, "base": base}


def test_prepare_writes_the_archive_pixels_labels_and_ids_as_tfds_does(prepared):
  data_dir = prepared["copies"]["array_record"]
  builder = tfds.builder("cifar10", data_dir=str(data_dir))
  assert builder.info.file_format.value == "array_record"
  assert builder.info.features["label"].names == LABEL_NAMES
  assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {
    "train": 60,
    "test": 20,
  }
  for split, prefix in (("train", "train_"), ("test", "test_")):
    source = tfds.data_source("cifar10", split=split, data_dir=str(data_dir))
    ids = []
    for example in source:
      index = int(example["id"].decode().removeprefix(prefix))
      row = prepared["rows"][split][index]
      assert example["label"] == row[0]
      np.testing.assert_array_equal(example["image"], row[1:].reshape(3, 32, 32).transpose(1, 2, 0))
      ids.append(index)
    assert sorted(ids) == list(range(len(ids))) and ids != sorted(ids)  # shuffled, as tfds does


def test_a_download_that_is_not_the_official_archive_is_refused_and_deleted(prepared, tmp_path):
  path = prepared["base"] / "www" / "cifar-10-binary.tar.gz"
  with serve(path.parent) as url:
    wrong = cifar_archive.Archive(f"{url}/{path.name}", path.stat().st_size, "0" * 64)
    with pytest.raises(cifar_archive.ArchiveError, match="not the official archive"):
      cifar_archive.download(wrong, tmp_path)
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("split", ["train", "test", "train[:7]+test[-5:]", "train[50%:]"])
def test_every_format_gives_the_same_arrays_in_the_same_order(prepared, split):
  copies = prepared["copies"]
  formats = {
    f: json.loads((d / "cifar10" / "3.0.2" / "dataset_info.json").read_text())["fileFormat"]
    for f, d in copies.items()
  }
  assert formats == {"array_record": "array_record", "parquet": "parquet", "tfrecord": "tfrecord"}
  want = datasets.load_split("cifar10", split, str(copies["array_record"]), download=False)
  for file_format in ("parquet", "tfrecord"):
    got = datasets.load_split("cifar10", split, str(copies[file_format]), download=False)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("file_format", ["parquet", "tfrecord", "array_record"])
def test_a_copy_in_the_default_place_is_read_in_the_format_it_has(
  prepared, monkeypatch, file_format
):
  """No data dir given: tfds's default place (here patched where tfds reads it) holds the copy;
  the arrays are those of the explicit-dir run. A Parquet copy there used to be refused."""
  copies = prepared["copies"]
  monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(copies[file_format]))
  split = "train[:7]+test"
  want = datasets.load_split("cifar10", split, str(copies["array_record"]), download=False)
  got = datasets.load_split("cifar10", split, None, download=False)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  with pytest.raises(datasets.SplitError, match="unknown split 'validation' of cifar10"):
    datasets.load_split("cifar10", "validation", None, download=False)


def _damaged_copy(prepared, tmp_path, file_format, damage):
  source = prepared["copies"][file_format] / "cifar10"
  copy = tmp_path / file_format
  shutil.copytree(source, copy / "cifar10")
  folder = copy / "cifar10" / "3.0.2"
  if damage == "dataset_info.json":
    (folder / "dataset_info.json").write_text("{not json")
  else:  # every file of the test split cut to 100 bytes
    for path in folder.glob("cifar10-test.*"):
      path.write_bytes(path.read_bytes()[:100])
  return copy


@pytest.mark.parametrize(
  "file_format, damage",
  [
    ("parquet", "dataset_info.json"),
    ("parquet", "records"),
    ("array_record", "records"),
    ("tfrecord", "records"),
  ],
)
def test_a_damaged_copy_is_a_data_error_naming_its_dir_and_reason(
  prepared, tmp_path, monkeypatch, file_format, damage
):
  copy = _damaged_copy(prepared, tmp_path, file_format, damage)
  monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(copy))
  for data_dir in (str(copy), None):
    with pytest.raises(DataError) as info:
      datasets.load_split("cifar10", "test", data_dir, download=False)
    message = str(info.value)
    assert str(copy) in message and "\n" not in message
    assert "delete that copy" in message
    assert not isinstance(info.value, ValueError)  # never read as a bad split spec


def test_train_py_says_a_damaged_copy_is_a_data_problem(prepared, tmp_path, monkeypatch):
  copy = _damaged_copy(prepared, tmp_path, "parquet", "records")
  with pytest.raises(DataError, match="cannot read the tfds copy of 'cifar10'") as info:
    train_and_evaluate(tiny_config(data_dir=str(copy), train_split="test"), str(tmp_path / "w"))
  assert "--config.train_split" not in str(info.value)


@pytest.mark.slow  # four runs, each compiling its steps
def test_every_copy_trains_the_same_given_or_found_in_the_default_place(prepared, tmp_path):
  """The Parquet and TFRecord copies, given by --config.data_dir, found through $TFDS_DATA_DIR
  and found in ~/tensorflow_datasets (a new HOME), each train to the same first metrics."""
  config = dict(num_train_steps=1, eval_every_steps=1, num_devices=1, steps_per_dispatch=1)
  rows = {}
  for file_format in ("parquet", "tfrecord"):
    data_dir = str(prepared["copies"][file_format])
    train_and_evaluate(tiny_config(data_dir=data_dir, **config), str(tmp_path / file_format))
    rows[file_format] = {
      k: read_metrics(tmp_path / file_format)[0][k] for k in DETERMINISTIC_FIELDS
    }
  assert rows["tfrecord"] == rows["parquet"]
  home = tmp_path / "home"
  shutil.copytree(prepared["copies"]["tfrecord"], home / "tensorflow_datasets")
  for how, file_format in (("TFDS_DATA_DIR", "parquet"), ("HOME", "tfrecord")):
    env = subprocess_env(tmp_path / "cache")
    env.pop("TFDS_DATA_DIR", None)
    env.update(
      {"TFDS_DATA_DIR": str(prepared["copies"]["parquet"])}
      if how == "TFDS_DATA_DIR"
      else {"HOME": str(home)}
    )
    workdir = tmp_path / f"default_{how}"
    flags = [f"--config.{k}={v}" for k, v in {**TINY, **config}.items()]
    proc = subprocess.run(
      [sys.executable, "train.py", f"--workdir={workdir}", *flags],
      env=env,
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = {k: read_metrics(workdir)[0][k] for k in DETERMINISTIC_FIELDS}
    assert got == rows[file_format], how


def test_a_tfrecord_file_is_indexed_by_its_headers_and_a_cut_one_is_an_error(tmp_path):
  records = [b"first", b"second record", b""]
  data = tfrecord_bytes(records)
  index = datasets.tfrecord_index(_write(tmp_path / "ok", data))
  assert [data[o : o + n] for o, n in index] == records
  assert index[0].tolist() == [12, 5]  # 8-byte length + 4-byte CRC, then the payload
  for cut in (len(data) - 3, len(data) - 20, 5):
    with pytest.raises(DataError, match="cut short"):
      datasets.tfrecord_index(_write(tmp_path / f"cut{cut}", data[:cut]))


def _write(path, data):
  path.write_bytes(data)
  return path


def test_an_absent_dataset_is_downloaded_and_prepared_without_tensorflow(
  prepared, tmp_path, monkeypatch
):
  path = prepared["base"] / "www" / "cifar-10-binary.tar.gz"
  with serve(path.parent) as url:
    monkeypatch.setitem(
      cifar_archive.ARCHIVES, "cifar10", local_archive(f"{url}/{path.name}", path)
    )
    images, labels = datasets.load_split("cifar10", "test", str(tmp_path))
  want = datasets.load_split("cifar10", "test", str(prepared["copies"]["array_record"]))
  np.testing.assert_array_equal(images, want[0])
  np.testing.assert_array_equal(labels, want[1])
  assert (tmp_path / "downloads" / path.name).is_file()  # kept: a second preparation reuses it


def test_a_corrupt_image_is_a_data_error_naming_the_example(prepared, tmp_path):
  """The PNG bytes inside a TFRecord record overwritten: the record's framing and proto still
  parse, the image does not decode."""
  copy = tmp_path / "tfrecord"
  shutil.copytree(prepared["copies"]["tfrecord"], copy)
  path = next((copy / "cifar10" / "3.0.2").glob("cifar10-test.tfrecord-*"))
  data = bytearray(path.read_bytes())
  (offset, length), *_ = datasets.tfrecord_index(path)
  start = data.index(b"IDAT", offset, offset + length) + 4  # the PNG's pixel data
  data[start : start + 40] = b"\xff" * 40
  path.write_bytes(bytes(data))
  with pytest.raises(DataError) as info:
    datasets.load_split("cifar10", "test", str(copy), download=False)
  message = str(info.value)
  assert message.startswith("cannot read example 0 of split test of 'cifar10' in ")
  assert str(copy) in message and "\n" not in message
