"""The data path of the trainer: whole splits resident on the devices, batches gathered there.

Host side (NumPy, once per dispatch):
  * `epoch_permutation` / `train_batch_indices`: the data order of epoch ``e`` depends only on
    ``(seed, e)``, so any step's batch can be recomputed after a restart.
  * `dispatch_indices`: the indices of the next K steps' global batches, cut into this host's
    part and then into ``[local devices, K, per_device]``: a few hundred bytes per step are
    all that crosses to the devices.
  * `replicate` / `shard` place arrays on the local devices in pmap's layout; `eval_batches`
    pads an eval split to whole global batches with a mask, so every example counts once.

Device side (jax.numpy, inside the pmapped steps):
  * `augmentation_params` draws crop offsets and flips for a whole *global* batch from one key
    and `device_slice` takes the calling device's part (``lax.axis_index``): the augmentation of
    an example depends on ``(seed, step, its position in the global batch)`` only, so 1 and N
    devices see the same augmented batch.
  * `augment` (pad-4 random crop + horizontal flip) and `normalize` (per-channel mean/std).
  * `train_inputs`: the model input of a train step, all of the above keyed by ``(seed, step)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

AXIS_NAME = "batch"  # the mapped axis (pmap / shard_map) over which the global batch is split


# ----------------------------------------------------------------------------------------------
# Host side: the data order and the placement on the devices
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
    raise ValueError(f"batch_size={batch_size} exceeds the {num_examples} training examples")
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


def dispatch_indices(
  seed: int,
  first_step: int,
  num_steps: int,
  num_examples: int,
  batch_size: int,
  num_local_devices: int,
) -> np.ndarray:
  """``int32[local devices, num_steps, per_device]``: this host's devices' rows of the global
  batches of steps ``first_step .. first_step + num_steps - 1``."""
  process_index, process_count = jax.process_index(), jax.process_count()
  per_step = [
    shard_batch(
      host_slice(
        train_batch_indices(seed, step, num_examples, batch_size), process_index, process_count
      ),
      num_local_devices,
    )
    for step in range(first_step, first_step + num_steps)
  ]
  return np.stack(per_step, axis=1).astype(np.int32)


def pmap_devices(local_devices) -> list:
  """The devices a pmap over ``local_devices`` maps over: those, or with several processes every
  process's devices (pmap then runs one program across hosts; each process feeds and reads its
  own local devices' slices)."""
  return list(local_devices) if jax.process_count() == 1 else jax.devices()


def _sharding(devices) -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS_NAME,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS_NAME))


def shard(x: np.ndarray, devices) -> jax.Array:
  """``[len(devices), ...]`` host array -> one slice per device, in pmap's layout."""
  return jax.device_put(x, _sharding(devices))


def replicate(tree, devices):
  """Every leaf copied to each device: ``[len(devices), *shape]`` in pmap's layout."""
  return jax.tree.map(
    lambda x: shard(np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x))), devices), tree
  )


def unreplicate(tree):
  """The first local device's slice of each leaf of a pmapped tree (its copy of a replicated
  value), on the host. Nothing runs on the devices: with several processes the leaves span all
  hosts' devices, and indexing them would be a collective."""

  def first_local(x):
    return x.addressable_shards[0].data if isinstance(x, jax.Array) else np.asarray(x)[0]

  values = jax.device_get(jax.tree.map(first_local, tree))
  return jax.tree.map(lambda v, x: np.reshape(v, np.shape(x)[1:]), values, tree)


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


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, devices):
  """The eval split on the devices: ``(images, labels, mask)``, each ``[local devices,
  batches, per_device, ...]``: device ``d`` holds its rows of every global batch."""
  process_index, process_count = jax.process_index(), jax.process_count()
  arrays = pad_eval_split(images, labels, batch_size)
  num_batches = arrays[0].shape[0] // batch_size

  def place(x):
    batches = x.reshape(num_batches, batch_size, *x.shape[1:])
    local = np.stack(
      [shard_batch(host_slice(b, process_index, process_count), len(devices)) for b in batches],
      axis=1,
    )
    return shard(local, devices)

  return tuple(place(x) for x in arrays)


def resident_batches(split):
  """The arguments of the eval step after the state, batch by batch, for an eval split on the
  devices (`eval_batches`): ``(images, labels, mask, b)``."""
  images, labels, mask = split
  for b in range(images.shape[1]):
    yield images, labels, mask, b


# ----------------------------------------------------------------------------------------------
# Device side: augmentation (inside pmap / shard_map)
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


def train_inputs(step, images, *, seed, mean, std, dtype, augment_images, axis_name=AXIS_NAME):
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
