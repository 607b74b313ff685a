"""What the loop feeds the steps, from either input path (``config.input``); the train and eval
steps are the same for both.

* ``resident`` (the default, fastest for CIFAR-scale data): the whole splits in host memory,
  then on the devices; each dispatch sends only batch indices (`input_pipeline`).
* ``stream`` (a dataset too large for memory, ImageNet): Grain streams from the tfds copy
  (`streaming`); each dispatch's batches go to the devices as a small split of their own, which
  the same train step gathers from with the indices ``0 .. K * per_device - 1``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from trainer import datasets, streaming
from trainer import input_pipeline as ip
from trainer.datasets import DATASETS, DatasetSpec
from trainer.errors import ConfigError
from trainer.plan import RunPlan

EVAL_SPLITS = {"eval": "eval_split", "validation": "validation_split"}  # row prefix: config field
SPEC_SAMPLE = 256  # training images whose pixels give a streamed dataset's mean and std


def _split(config, field: str) -> datasets.SplitSource:
  try:
    return datasets.open_split(config.dataset, config[field], config.data_dir)
  except datasets.SplitError as e:  # a bad or empty split spec; a data problem is a DataError
    raise ConfigError(f"--config.{field}={config[field]}: {e}") from None


def _check_validation_split(config, train: datasets.SplitSource, evals: dict) -> None:
  """A validation split that shares examples with the train split is refused."""
  if "validation" in evals:
    shared = train.shared_with(evals["validation"])
    if shared:
      raise ConfigError(
        f"--config.validation_split={config.validation_split} shares {shared} examples with "
        f"--config.train_split={config.train_split}; choose a validation slice outside it, "
        "e.g. train[:4096] with train[-2000:]"
      )


@dataclasses.dataclass
class ResidentInputs:
  """The whole splits as uint8 host arrays, placed on the devices by `place`."""

  train: tuple[np.ndarray, np.ndarray]
  evals: dict[str, tuple[np.ndarray, np.ndarray]]
  spec: DatasetSpec
  seed: int
  batch_size: int
  _devices: list | None = None
  _train_on_devices: tuple | None = None
  _evals_on_devices: dict | None = None

  @property
  def num_train(self) -> int:
    return len(self.train[1])

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.train[0].shape[1:]

  def eval_sizes(self) -> dict[str, int]:
    return {name: len(labels) for name, (_, labels) in self.evals.items()}

  def place(self, plan: RunPlan, devices, first_step: int) -> None:
    del first_step  # any step's batch is gathered on the devices
    self._devices = devices
    self._train_on_devices = ip.replicate(self.train, devices)
    self._evals_on_devices = {
      name: ip.eval_batches(*split, plan.eval_batch_size, devices)
      for name, split in self.evals.items()
    }

  def resident_train(self) -> tuple:
    """The training split on the devices (for the gradient diagnostics)."""
    return self._train_on_devices

  def train_args(self, step: int, n: int) -> tuple:
    """The arguments of `Steps.train` after the state, for steps ``step .. step + n - 1``."""
    idx = ip.dispatch_indices(
      self.seed, step, n, self.num_train, self.batch_size, len(self._devices)
    )
    return (*self._train_on_devices, ip.shard(idx, self._devices))

  def eval_batches(self, name: str) -> Iterator[tuple]:
    """The arguments of `Steps.eval_step` after the state, batch by batch."""
    return ip.resident_batches(self._evals_on_devices[name])


@dataclasses.dataclass
class StreamedInputs:
  """The splits streamed by Grain (`streaming`), this process's rows only."""

  train_stream: streaming.TrainStream
  eval_streams: dict[str, streaming.EvalStream]
  spec: DatasetSpec
  _devices: list | None = None
  _batches: Iterator | None = None
  _next_step: int = 0

  @property
  def num_train(self) -> int:
    return len(self.train_stream.source)

  @property
  def image_shape(self) -> tuple[int, ...]:
    size = self.train_stream.image_size
    return (size, size, 3)

  def eval_sizes(self) -> dict[str, int]:
    return {name: len(stream) for name, stream in self.eval_streams.items()}

  def place(self, plan: RunPlan, devices, first_step: int) -> None:
    """Starts the train stream at ``first_step`` (the checkpoint's step: a resumed run sees
    the uninterrupted run's batches from there on)."""
    self._devices = devices
    self.eval_streams = {
      name: dataclasses.replace(stream, global_batch=plan.eval_batch_size)
      for name, stream in self.eval_streams.items()
    }
    self._batches = self.train_stream.batches(first_step, plan.total_steps)
    self._next_step = first_step

  def train_args(self, step: int, n: int) -> tuple:
    if step != self._next_step:
      raise RuntimeError(f"the stream is at step {self._next_step}, not {step}")
    self._next_step += n
    per_step = [next(self._batches) for _ in range(n)]
    devices = len(self._devices)

    def place(arrays):  # [n][local_batch, ...] -> [devices, n * per_device, ...]
      sharded = np.stack([ip.shard_batch(a, devices) for a in arrays], axis=1)
      return ip.shard(sharded.reshape(devices, -1, *sharded.shape[3:]), self._devices)

    images, labels = (place([batch[i] for batch in per_step]) for i in (0, 1))
    per_device = self.train_stream.local_batch // devices
    idx = np.broadcast_to(
      np.arange(n * per_device, dtype=np.int32).reshape(n, per_device), (devices, n, per_device)
    )
    return images, labels, ip.shard(np.ascontiguousarray(idx), self._devices)

  def eval_batches(self, name: str) -> Iterator[tuple]:
    devices = len(self._devices)
    for arrays in self.eval_streams[name].batches():
      yield (*(ip.shard(ip.shard_batch(a, devices)[:, None], self._devices) for a in arrays), 0)


def _workers(config) -> int:
  if config.loader_workers is not None:
    return config.loader_workers
  return min(8, max(1, (os.cpu_count() or 2) // max(1, jax.local_device_count())))


def load(config: ml_collections.ConfigDict) -> ResidentInputs | StreamedInputs:
  """The inputs of a run as configured; `place` puts them on the devices."""
  train = _split(config, "train_split")
  evals = {name: _split(config, field) for name, field in EVAL_SPLITS.items() if config[field]}
  _check_validation_split(config, train, evals)
  if config.input in (None, "resident"):
    return ResidentInputs(
      datasets.load_source(train),
      {name: datasets.load_source(s) for name, s in evals.items()},
      DATASETS[config.dataset],
      config.seed,
      config.batch_size,
    )
  size = config.image_size or train[0][0].shape[0]
  common = dict(
    image_size=size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    workers=_workers(config),
  )
  return StreamedInputs(
    streaming.TrainStream(
      source=train,
      seed=config.seed,
      global_batch=config.batch_size,
      augment=config.augment,
      **common,
    ),
    {
      name: streaming.EvalStream(source=s, global_batch=config.batch_size, **common)
      for name, s in evals.items()
    },
    dataset_spec(config, train, size),
  )


def dataset_spec(config, train: datasets.SplitSource, image_size: int) -> DatasetSpec:
  """CIFAR's from the table; any other dataset's from the data: the number of classes from its
  ``label`` feature, the per-channel pixel mean and std from the first `SPEC_SAMPLE` training
  images (centre-cropped as evaluated)."""
  if config.dataset in DATASETS:
    return DATASETS[config.dataset]
  num_classes = datasets.num_classes(config.dataset, config.data_dir)
  sample = (
    np.stack(
      [streaming.center_crop(train[i][0], image_size) for i in range(min(SPEC_SAMPLE, len(train)))]
    ).astype(np.float64)
    / 255.0
  )
  mean = tuple(float(m) for m in sample.mean(axis=(0, 1, 2)))
  std = tuple(float(s) for s in sample.std(axis=(0, 1, 2)))
  return DatasetSpec(num_classes, mean, std)
