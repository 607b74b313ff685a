"""CIFAR input pipeline for `train.py`: whole splits as uint8 NumPy arrays, augmented on device.

Host side (NumPy):
  * `load_split` reads a tfds split (``train``, ``test[:1000]``, ``train[:10%]+test``...) into
    ``uint8[N, 32, 32, 3]`` images and ``int32[N]`` labels through `tfds.data_source`, applying the
    split slice itself (`tfds.data_source` ignores it), and fails fast with a clear
    `DatasetNotFoundError` when the dataset is absent and there is no network to download it.
  * `epoch_permutation` / `train_batch_indices`: the data order of epoch ``e`` depends only on
    ``(seed, e)``, so any step's batch can be recomputed after a restart.
  * `host_slice` / `shard_batch` cut a global batch into this host's part, then into
    ``[local_devices, per_device, ...]``.
  * `pad_eval_split` pads an eval split to whole global batches and returns a mask, so every example
    is evaluated exactly once.

Device side (jax.numpy, called inside the pmapped step):
  * `augmentation_params` draws crop offsets and flips for a whole *global* batch from one key, and
    `device_slice` takes the part of the calling device (``lax.axis_index``): the augmentation of an
    example depends on ``(seed, step, its position in the global batch)`` only, so 1 and 4 devices
    see the same augmented batch.
  * `augment` (pad-4 random crop + horizontal flip) and `normalize` (per-channel mean/std).
  * `train_inputs`: the model input of a train step, all of the above keyed by ``(seed, step)``
    (shared by `train.train_step` and `diagnostics.diagnostic_step`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import threading

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AXIS_NAME",
    "DATASETS",
    "DatasetNotFoundError",
    "DatasetSpec",
    "augment",
    "augmentation_params",
    "device_slice",
    "epoch_permutation",
    "host_slice",
    "load_split",
    "network_available",
    "normalize",
    "pad_eval_split",
    "shard_batch",
    "split_ranges",
    "train_batch_indices",
    "train_inputs",
]

AXIS_NAME = "batch"  # the mapped axis (pmap / shard_map) over which the global batch is split


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the trainer needs to know about a dataset."""

    num_classes: int
    mean: tuple[float, float, float]  # per-channel, of pixels scaled to [0, 1]
    std: tuple[float, float, float]
    download_host: str = "www.cs.toronto.edu"


DATASETS = {
    "cifar10": DatasetSpec(10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetSpec(100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not prepared in the data dir and cannot be downloaded."""


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def network_available(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within about ``timeout`` seconds.

    The probe runs in a daemon thread so that a hanging DNS lookup (which ignores socket
    timeouts) cannot stall the caller for longer than ``2 * timeout``.
    """
    result = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
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
      ValueError: a malformed spec, an unknown split name or an out-of-range slice.
    """
    import tensorflow_datasets as tfds

    class _Info:
        def __init__(self, n):
            self.num_examples = n
            self.shard_lengths = [n]  # "shard" slicing: one shard per split

    infos = {name: _Info(int(n)) for name, n in split_lengths.items()}
    try:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    except (ValueError, AssertionError) as e:
        msg = " ".join(str(e).split())
        raise ValueError(f"bad split {split!r}: {msg}") from None
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
    where = data_dir or "the default tfds data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    return (
        f"dataset {name!r} is not prepared in {where} and {detail}; "
        f"point --config.data_dir at a tfds data dir holding {name}, or pre-download it on a "
        f"machine with internet (python -c \"import tensorflow_datasets as tfds; "
        f"tfds.data_source('{name}', data_dir=DIR)\")"
    )


@contextlib.contextmanager
def _quiet_absl():
    """Silences tfds's absl warnings (e.g. "Variant folder ... has no dataset_info.json") while
    probing for a dataset that may legitimately be absent."""
    from absl import logging

    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _data_sources(name: str, split_names, data_dir: str | None, download: bool):
    """``{split_name: random-access source}``, downloading the dataset first if needed."""
    import tensorflow_datasets as tfds

    def open_all(**kwargs):
        return {
            s: tfds.data_source(name, split=s, data_dir=data_dir, **kwargs) for s in split_names
        }

    with _quiet_absl():
        try:
            # Works for a copy prepared in any random-access format (Parquet, ArrayRecord) and
            # under `tfds.testing.mock_data`. For an absent dataset tfds raises anything from a
            # NotImplementedError to a KeyError, depending on data_dir: decide below.
            return open_all(download=False)
        except Exception as e:  # noqa: BLE001
            error = e
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    if prepared:
        file_format = builder.info.file_format
        if file_format not in tfds.core.file_adapters.FileFormat.with_random_access():
            raise DatasetNotFoundError(
                f"dataset {name!r} is prepared in {builder.data_dir} as {file_format.value}, "
                f"which has no random access; delete it or point --config.data_dir at a copy "
                f"prepared as Parquet or ArrayRecord"
            )
        if isinstance(error, ValueError):  # e.g. an unknown split name
            raise ValueError(" ".join(str(error).split())) from None
        raise error
    if not download:
        raise DatasetNotFoundError(_not_found_message(name, data_dir, "downloads are disabled"))
    host = DATASETS[name].download_host if name in DATASETS else "storage.googleapis.com"
    if not network_available(host):
        raise DatasetNotFoundError(
            _not_found_message(name, data_dir, f"there is no network to download it ({host})")
        )
    # Without an explicit format tfds would prepare TFRecord, which has no random access.
    return open_all(download=True, builder_kwargs={"file_format": "array_record"})


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
      DatasetNotFoundError: the dataset is absent and cannot be downloaded (within seconds).
      ValueError: a malformed split spec or an out-of-range slice.
    """
    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
    sources = _data_sources(name, _split_names(split), data_dir, download)
    ranges = split_ranges(split, {s: len(src) for s, src in sources.items()})
    images, labels = [], []
    with _quiet_absl():  # "OpenCV is not installed ... Defaulting to PIL"
        for split_name, start, stop in ranges:
            src = sources[split_name]
            for i in range(start, stop):  # as fast as __getitems__, which mock_data breaks
                record = src[i]
                images.append(np.asarray(record["image"], np.uint8))
                labels.append(int(record["label"]))
    if not images:
        raise ValueError(f"split {split!r} of {name} is empty")
    return np.stack(images), np.asarray(labels, np.int32)


# ----------------------------------------------------------------------------------------------
# Host-side batching
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of ``epoch``: a function of ``(seed, epoch)`` only."""
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    perm.setflags(write=False)
    return perm


def train_batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
    """Indices of the global training batch of ``step`` (0-based); the epoch's last partial batch
    is dropped, so an epoch is ``num_examples // batch_size`` steps."""
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {num_examples} training examples"
        )
    epoch, i = divmod(step, steps_per_epoch)
    return epoch_permutation(seed, epoch, num_examples)[i * batch_size : (i + 1) * batch_size]


def host_slice(x: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This host's contiguous part of a global batch (hosts in `jax.process_index` order)."""
    n = x.shape[0] // process_count
    return x[process_index * n : (process_index + 1) * n]


def shard_batch(x: np.ndarray, num_devices: int) -> np.ndarray:
    """``[B, ...] -> [num_devices, B // num_devices, ...]``; device ``d`` gets rows ``d * B / n``
    onwards."""
    if x.shape[0] % num_devices:
        raise ValueError(f"batch of {x.shape[0]} does not split over {num_devices} devices")
    return x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])


def pad_eval_split(
    images: np.ndarray, labels: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads a split to a whole number of global batches.

    Returns:
      ``(images, labels, mask)`` whose length is a multiple of ``batch_size``; ``mask`` is 1.0 for
      real examples and 0.0 for the padding (zero images, label 0).
    """
    n = images.shape[0]
    pad = -n % batch_size
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return images, labels, mask


# ----------------------------------------------------------------------------------------------
# Device-side augmentation (inside pmap / shard_map)
# ----------------------------------------------------------------------------------------------


def augmentation_params(key: jax.Array, global_batch: int, padding: int = 4):
    """Random crop offsets ``int32[B, 2]`` in ``[0, 2 * padding]`` and flips ``bool[B]`` for a
    whole global batch."""
    k_crop, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_crop, (global_batch, 2), 0, 2 * padding + 1, dtype=jnp.int32)
    flips = jax.random.bernoulli(k_flip, 0.5, (global_batch,))
    return offsets, flips


def device_slice(x: jax.Array, per_device: int, axis_name: str = AXIS_NAME) -> jax.Array:
    """The rows of a global-batch array that belong to the calling device of ``axis_name``."""
    start = jax.lax.axis_index(axis_name) * per_device
    return jax.lax.dynamic_slice_in_dim(x, start, per_device, axis=0)


def augment(images: jax.Array, offsets: jax.Array, flips: jax.Array, padding: int = 4):
    """Pad-``padding`` (zeros) random crop and horizontal flip of ``[B, H, W, C]`` images."""
    _, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def crop_one(img, offset, flip):
        out = jax.lax.dynamic_slice(img, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, out[:, ::-1, :], out)

    return jax.vmap(crop_one)(padded, offsets, flips)


def normalize(images: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
    """uint8 ``[..., C]`` pixels -> ``(x / 255 - mean) / std`` per channel, in ``dtype``."""
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def train_inputs(step, images, *, seed, mean, std, dtype, augment_images, axis_name):
    """The model input of the train step at `step`: augmented (if ``augment_images``, as keyed by
    (seed, step)) and normalized."""
    per_device = images.shape[0]
    if augment_images:
        global_batch = per_device * jax.lax.psum(1, axis_name)
        key = jax.random.fold_in(jax.random.key(seed), step)
        offsets, flips = augmentation_params(key, global_batch)
        images = augment(
            images,
            device_slice(offsets, per_device, axis_name),
            device_slice(flips, per_device, axis_name),
        )
    return normalize(images, mean, std, dtype)
