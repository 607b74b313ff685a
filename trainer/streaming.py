"""A dataset too large for memory, streamed by Grain (``config.input = "stream"``): each process
reads only its own rows of every global batch, by index, from the tfds copy the user has (any
format: `datasets.open_split`), decodes and augments them on the host in worker processes,
batches them and keeps a few batches ahead.

The order is a function of ``(seed, step)`` only, as on the device-resident path: the global
batch of step ``s`` is examples ``perm[b * B : (b + 1) * B]`` of epoch ``e = s // S``,
``b = s % S`` (``S`` steps per epoch, the last partial batch dropped), ``perm`` the permutation
of the split by ``(seed, e)`` (`input_pipeline.epoch_permutation`); process ``p`` of ``P``
takes rows ``[p * B / P, (p + 1) * B / P)`` of it, and each example's augmentation draws from
``(seed, s, its row in the global batch)``. So the stream's position is the step that the
checkpoint holds: a resumed run starts its stream there and sees exactly the batches of the
uninterrupted run, and 1 or ``P`` processes see the same global batches.

Training images get the flax ImageNet example's preprocessing: a random crop of 8-100% of the
area with an aspect ratio in [3/4, 4/3] (10 tries, else the central crop), resized to
``image_size``, and a horizontal flip with probability 1/2 (``augment=False``: the evaluation
preprocessing). Evaluation images are resized so that the shorter side is ``image_size *
256 / 224`` and centre-cropped to ``image_size``. Images already ``image_size`` square are left
as they are (CIFAR streamed at 32).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import grain
import numpy as np
from absl import flags
from PIL import Image

from trainer import input_pipeline as ip
from trainer.datasets import SplitSource

CROP_PADDING = 32  # evaluation: resize to image_size + 32 (at 224), then the central crop


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  if image.shape[:2] == (height, width):
    return image
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((width, height), Image.BICUBIC))
  return out[..., None] if squeeze else out


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The evaluation preprocessing: the shorter side resized to ``size * (1 + 32 / 224)``, then
  the central ``size x size`` crop (as is, if already that shape)."""
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  short = round(size * (1 + CROP_PADDING / 224))
  scale = short / min(h, w)
  image = _resize(image, max(short, round(h * scale)), max(short, round(w * scale)))
  h, w = image.shape[:2]
  top, left = (h - size) // 2, (w - size) // 2
  return image[top : top + size, left : left + size]


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """The training preprocessing: a random crop of 8-100% of the area, aspect ratio in
  [3/4, 4/3] (log-uniform), resized to ``size x size`` (10 tries, else `center_crop`), then a
  horizontal flip with probability 1/2."""
  h, w = image.shape[:2]
  out = None
  for _ in range(10):
    area = h * w * rng.uniform(0.08, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    ch, cw = round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))
    if 0 < ch <= h and 0 < cw <= w:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      out = _resize(image[top : top + ch, left : left + cw], size, size)
      break
  if out is None:
    out = center_crop(image, size)
  return out[:, ::-1] if rng.random() < 0.5 else out


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ProcessRows:
  """A split read as this process's rows of each global batch (picklable: Grain's workers get
  a copy)."""

  source: SplitSource
  global_batch: int
  image_size: int
  process_index: int = 0
  process_count: int = 1
  workers: int = 0

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  def global_row(self, row: int) -> int:
    """The row of the global batch that is this process's ``row``."""
    return self.process_index * self.local_batch + row


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainStream(_ProcessRows):
  """The training stream of one process.

  ``batches(start_step, end_step)`` yields ``(images uint8[local_batch, size, size, C],
  labels int32[local_batch])`` for each step from ``start_step``, this process's rows of each
  global batch (see the module docstring).
  """

  seed: int
  augment: bool

  @property
  def steps_per_epoch(self) -> int:
    return len(self.source) // self.global_batch

  def example_index(self, step: int, row: int) -> int:
    """The split index of this process's row ``row`` of the global batch of ``step``."""
    batch = ip.train_batch_indices(self.seed, step, len(self.source), self.global_batch)
    return int(batch[self.global_row(row)])

  def example(self, position: int) -> tuple[np.ndarray, int]:
    """The preprocessed example at ``position`` = step * local_batch + row of this process."""
    step, row = divmod(int(position), self.local_batch)
    image, label = self.source[self.example_index(step, row)]
    if self.augment:
      rng = np.random.default_rng([self.seed, step, self.global_row(row)])
      image = random_resized_crop(image, self.image_size, rng)
    else:
      image = center_crop(image, self.image_size)
    return np.ascontiguousarray(image, np.uint8), label

  def batches(self, start_step: int, end_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    positions = grain.MapDataset.range(start_step * self.local_batch, end_step * self.local_batch)
    dataset = positions.map(self.example).batch(self.local_batch)
    for images, labels in _iterate(dataset, self.workers):
      yield images, labels.astype(np.int32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalStream(_ProcessRows):
  """An evaluated split, streamed: this process's rows of each global batch, padded to whole
  batches; ``batches()`` yields ``(images, labels, mask)`` (mask 0 on the padding)."""

  def __len__(self) -> int:
    return len(self.source)

  def example(self, position: int):
    batch, row = divmod(int(position), self.local_batch)
    index = batch * self.global_batch + self.global_row(row)
    if index >= len(self.source):  # padding
      return np.zeros((self.image_size, self.image_size, 3), np.uint8), 0, 0.0
    image, label = self.source[index]
    return np.ascontiguousarray(center_crop(image, self.image_size), np.uint8), label, 1.0

  def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    num_batches = -(-len(self.source) // self.global_batch)
    positions = grain.MapDataset.range(num_batches * self.local_batch)
    dataset = positions.map(self.example).batch(self.local_batch)
    for images, labels, mask in _iterate(dataset, self.workers):
      yield images, labels.astype(np.int32), mask.astype(np.float32)


def _iterate(dataset: grain.MapDataset, workers: int):
  """The batches of ``dataset`` in order, decoded by ``workers`` processes (0: threads of this
  one), a few batches ahead."""
  stream = dataset.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=8))
  if workers > 0:
    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (outside train.py)
      flags.FLAGS.mark_as_parsed()
    stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(stream)
