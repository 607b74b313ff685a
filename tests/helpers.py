"""Helpers shared by the test modules (no test module imports another): the real data dir, tiny
configs and runs, subprocess environments, fake CIFAR archives and tfds copies in each format."""

import contextlib
import functools
import http.server
import io
import json
import os
import shutil
import struct
import tarfile
import threading
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from array_record.python import array_record_module

import configs
from configs import default
from trainer import cifar_archive, optimizers
from trainer import state as state_lib

ROOT = configs.ROOT
# A tfds data dir holding the real CIFAR-10 (cifar10/3.0.2), for the real-data tests; they are
# skipped without it. .ci/run sets it.
REAL_DATA_DIR = os.environ.get("ZNORM_TEST_DATA_DIR")
HAS_REAL_DATA = bool(REAL_DATA_DIR) and os.path.isfile(
  os.path.join(REAL_DATA_DIR, "cifar10", "3.0.2", "dataset_info.json")
)
NO_REAL_DATA = "set ZNORM_TEST_DATA_DIR to a tfds data dir holding cifar10 to run it"
MOCK_EXAMPLES = 64  # per split under tfds.testing.mock_data: 4 steps per epoch at batch 16

# A small run: 12 steps = 3 epochs, evaluation every 4 steps over 64 examples padded to 72
# (eval batch 24), a checkpoint every 2 steps, 2 steps per dispatch.
TINY = dict(
  model_widths=(4, 8, 16),
  batch_size=16,
  eval_batch_size=24,
  num_train_steps=12,
  eval_every_steps=4,
  checkpoint_every_steps=2,
  log_every_steps=2,
  num_devices=4,
  steps_per_dispatch=2,
)
# Run by the subprocesses: argv = workdir, json overrides, npz path for the final state.
RUN_SCRIPT = f"""
import json, sys
import jax
import numpy as np
import tensorflow_datasets as tfds
from configs import default
from trainer.loop import train_and_evaluate

workdir, overrides, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
config = default.get_config()
config.update(overrides)
with tfds.testing.mock_data(num_examples={MOCK_EXAMPLES}):
    state = train_and_evaluate(config, workdir)
flat = jax.tree_util.tree_flatten_with_path(
    {{"params": state.params, "batch_stats": state.batch_stats, "step": state.step,
      "opt_state": state.opt_state}})[0]
np.savez(out, **{{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}})
"""


# train.py under mock data, run with the checkout as the working directory.
MOCK_CLI = f"""
import runpy, sys
import tensorflow_datasets as tfds
sys.argv = ["train.py"] + sys.argv[1:]
with tfds.testing.mock_data(num_examples={MOCK_EXAMPLES}):
  runpy.run_path("train.py", run_name="__main__")
"""

TINY_FLAGS = [f"--config.{k}={v}" for k, v in TINY.items()]
DETERMINISTIC_FIELDS = (
  "step",
  "epoch",
  "train_loss",
  "train_accuracy",
  "eval_loss",
  "eval_accuracy",
  "learning_rate",
)


def tiny_config(**overrides):
  config = default.get_config()
  config.update({**TINY, **overrides})
  return config


def initial_state(config, total_steps, num_classes=10, image_shape=(32, 32, 3)):
  """The step-0 state of ``config`` (by default CIFAR-shaped, 10 classes)."""
  model = state_lib.create_model(config, num_classes, image_shape[0])
  tx = optimizers.create_optimizer(config, total_steps).tx
  return state_lib.create_train_state(config, model, tx, image_shape)


def flat_state(state) -> dict:
  tree = {
    "params": state.params,
    "batch_stats": state.batch_stats,
    "step": state.step,
    "opt_state": state.opt_state,
  }
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def relative_difference(got: dict, want: dict) -> float:
  """``|got - want| / |want|`` over all float leaves of two flat states (L2 norms)."""
  keys = [k for k in want if want[k].dtype.kind == "f"]
  diff = sum(float(np.sum((got[k].astype(np.float64) - want[k]) ** 2)) for k in keys)
  return (diff / sum(float(np.sum(want[k].astype(np.float64) ** 2)) for k in keys)) ** 0.5


def subprocess_env(cache_dir) -> dict:
  """The environment of a subprocess run of the harness: 4 fake CPU devices, the shared
  compilation cache, the checkout on the path."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env["CUDA_VISIBLE_DEVICES"] = ""
  env["PYTHONPATH"] = str(ROOT)  # the harness runs from the checkout
  return env


def finalized_steps(workdir) -> list[int]:
  ckpt = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt):
    return []
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


# ---------------------------------------------------------------------------------------------
# Fake CIFAR-10: the official binary archive's layout, random pixels
# ---------------------------------------------------------------------------------------------

LABEL_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def fake_cifar10_rows(seed: int, n: int) -> np.ndarray:
  """``uint8[n, 1 + 3072]``: label byte, then the image as 3 planes of 32x32 (CHW)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
  return np.concatenate([labels, rng.integers(0, 256, (n, 3072), dtype=np.uint8)], axis=1)


def fake_cifar10_archive(folder, per_batch: int = 12, test: int = 20) -> tuple[Path, dict]:
  """Writes ``folder/cifar-10-binary.tar.gz`` (5 train batches, 1 test batch) and returns its
  path and ``{"train": rows, "test": rows}`` in archive order."""
  rows = {
    "train": np.concatenate([fake_cifar10_rows(i, per_batch) for i in range(1, 6)]),
    "test": fake_cifar10_rows(0, test),
  }
  files = {
    f"cifar-10-batches-bin/data_batch_{i}.bin": rows["train"][
      (i - 1) * per_batch : i * per_batch
    ].tobytes()
    for i in range(1, 6)
  }
  files["cifar-10-batches-bin/test_batch.bin"] = rows["test"].tobytes()
  files["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(LABEL_NAMES) + "\n\n").encode()
  path = Path(folder) / "cifar-10-binary.tar.gz"
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, "w:gz") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path, rows


@contextlib.contextmanager
def serve(folder):
  """An HTTP server on localhost serving ``folder``; yields its base URL."""
  handler = functools.partial(_QuietHandler, directory=str(folder))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


def local_archive(url: str, path: Path) -> cifar_archive.Archive:
  data = path.read_bytes()
  return cifar_archive.Archive(url, len(data), cifar_archive.sha256(path))


# ---------------------------------------------------------------------------------------------
# A tfds copy in another format, written from the records of an ArrayRecord copy
# ---------------------------------------------------------------------------------------------


@functools.cache
def _crc32c_table() -> tuple[int, ...]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return tuple(table)


def masked_crc32c(data: bytes) -> int:
  """The masked CRC-32C of TFRecord framing."""
  table, crc = _crc32c_table(), 0xFFFFFFFF
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_bytes(records) -> bytes:
  out = bytearray()
  for record in records:
    length = struct.pack("<Q", len(record))
    out += length + struct.pack("<I", masked_crc32c(length))
    out += record + struct.pack("<I", masked_crc32c(record))
  return bytes(out)


def array_record_records(path) -> list[bytes]:
  reader = array_record_module.ArrayRecordReader(str(path))
  try:
    return list(reader.read_all())
  finally:
    reader.close()


def convert_copy(source_dir: Path, target_dir: Path, file_format: str) -> Path:
  """A copy of the tfds copy in ``source_dir/cifar10/3.0.2`` (ArrayRecord) as ``parquet`` or
  ``tfrecord``: the same serialized records in the same order, as tfds lays them out."""
  src = Path(source_dir) / "cifar10" / "3.0.2"
  dst = Path(target_dir) / "cifar10" / "3.0.2"
  dst.mkdir(parents=True)
  for name in ("features.json", "label.labels.txt"):
    shutil.copy(src / name, dst / name)
  info = json.loads((src / "dataset_info.json").read_text())
  info["fileFormat"] = file_format
  (dst / "dataset_info.json").write_text(json.dumps(info))
  for path in src.glob("cifar10-*.array_record-*"):
    records = array_record_records(path)
    out = dst / path.name.replace("array_record", file_format)
    if file_format == "tfrecord":
      out.write_bytes(tfrecord_bytes(records))
    else:
      table = pa.table({"data": pa.array(records, pa.binary())})
      pq.write_table(table, out)
  return Path(target_dir)
