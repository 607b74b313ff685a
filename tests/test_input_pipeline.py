"""Tests of trainer/input_pipeline.py: the data order, batching, placement on the devices and
augmentation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import datasets
from trainer import input_pipeline as ip

# ---------------------------------------------------------------------------------------------
# Host-side batching
# ---------------------------------------------------------------------------------------------


def test_epoch_order_depends_on_seed_and_epoch_only():
  a = ip.epoch_permutation(3, 0, 50)
  np.testing.assert_array_equal(a, np.random.default_rng([3, 0]).permutation(50))
  np.testing.assert_array_equal(a, ip.epoch_permutation(3, 0, 50))
  assert not np.array_equal(a, ip.epoch_permutation(3, 1, 50))
  assert not np.array_equal(a, ip.epoch_permutation(4, 0, 50))


def test_train_batches_cover_each_epoch_once():
  n, bs = 50, 8  # 6 steps per epoch, 2 examples left out per epoch
  for epoch in range(2):
    steps = range(epoch * 6, (epoch + 1) * 6)
    seen = np.concatenate([ip.train_batch_indices(0, s, n, bs) for s in steps])
    assert len(seen) == len(set(seen.tolist())) == 48
    np.testing.assert_array_equal(seen, ip.epoch_permutation(0, epoch, n)[:48])
  with pytest.raises(ValueError, match="exceeds"):
    ip.train_batch_indices(0, 0, 5, 8)


def test_host_slice_and_shard_batch():
  x = np.arange(16)
  parts = [ip.host_slice(x, p, 2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), x)
  sharded = ip.shard_batch(np.arange(24).reshape(8, 3), 4)
  assert sharded.shape == (4, 2, 3)
  np.testing.assert_array_equal(sharded[1], [[6, 7, 8], [9, 10, 11]])
  with pytest.raises(ValueError):
    ip.shard_batch(np.zeros(6), 4)


def test_pad_eval_split_masks_the_padding():
  images = np.ones((10, 2, 2, 3), np.uint8)
  labels = np.arange(10, dtype=np.int32)
  pi, pl, mask = ip.pad_eval_split(images, labels, 4)
  assert pi.shape == (12, 2, 2, 3) and pl.shape == (12,) and mask.shape == (12,)
  np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
  np.testing.assert_array_equal(pl[:10], labels)
  assert pi[10:].sum() == 0
  _, _, mask = ip.pad_eval_split(images, labels, 5)
  assert mask.shape == (10,) and mask.all()


# ---------------------------------------------------------------------------------------------
# Device-side augmentation
# ---------------------------------------------------------------------------------------------


def _images(n=6, size=8, seed=0):
  return np.random.default_rng(seed).integers(1, 256, (n, size, size, 3), dtype=np.uint8)


def test_augment_centre_crop_is_identity_and_flip_mirrors():
  x = jnp.asarray(_images())
  centre = jnp.full((6, 2), 4, jnp.int32)
  np.testing.assert_array_equal(ip.augment(x, centre, jnp.zeros(6, bool)), x)
  np.testing.assert_array_equal(ip.augment(x, centre, jnp.ones(6, bool)), x[:, :, ::-1])


def test_augment_corner_crop_shifts_in_zeros():
  x = jnp.asarray(_images())
  out = np.asarray(ip.augment(x, jnp.zeros((6, 2), jnp.int32), jnp.zeros(6, bool)))
  assert (out[:, :4] == 0).all() and (out[:, :, :4] == 0).all()
  np.testing.assert_array_equal(out[:, 4:, 4:], np.asarray(x)[:, :4, :4])


def test_augmentation_params_ranges_and_determinism():
  key = jax.random.key(0)
  offsets, flips = ip.augmentation_params(key, 512)
  assert offsets.shape == (512, 2) and flips.shape == (512,)
  assert int(offsets.min()) == 0 and int(offsets.max()) == 8
  assert 0.3 < float(flips.mean()) < 0.7
  again = ip.augmentation_params(key, 512)
  np.testing.assert_array_equal(offsets, again[0])


@pytest.mark.parametrize("num_devices", [1, 2, 4])
def test_device_augmentation_does_not_depend_on_the_device_count(num_devices):
  global_batch = 8
  x = _images(global_batch, 32)
  key = jax.random.key(7)
  offsets, flips = ip.augmentation_params(key, global_batch)
  expected = ip.augment(jnp.asarray(x), offsets, flips)

  def per_device(images):
    o, f = ip.augmentation_params(key, global_batch)
    n = images.shape[0]
    return ip.augment(images, ip.device_slice(o, n), ip.device_slice(f, n))

  fn = jax.pmap(per_device, axis_name="batch", devices=jax.local_devices()[:num_devices])
  out = fn(ip.shard_batch(x, num_devices)).reshape(x.shape)
  np.testing.assert_array_equal(out, expected)


def test_normalize_per_channel():
  mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
  x = np.full((1, 2, 2, 3), 255, np.uint8)
  out = np.asarray(ip.normalize(x, mean, std))
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 3.0, 1.0], rtol=1e-6)
  assert ip.normalize(x, mean, std, jnp.bfloat16).dtype == jnp.bfloat16
  norm = functools.partial(
    ip.normalize, mean=datasets.DATASETS["cifar10"].mean, std=datasets.DATASETS["cifar10"].std
  )
  assert abs(float(norm(np.full((1, 1, 1, 3), 125, np.uint8)).mean())) < 0.1


# ---------------------------------------------------------------------------------------------
# Placement on the devices
# ---------------------------------------------------------------------------------------------


def test_dispatch_indices_are_the_steps_batches_cut_over_the_devices():
  idx = ip.dispatch_indices(
    seed=3, first_step=5, num_steps=4, num_examples=40, batch_size=8, num_local_devices=4
  )
  assert idx.shape == (4, 4, 2) and idx.dtype == np.int32
  for k in range(4):
    expected = ip.train_batch_indices(3, 5 + k, 40, 8)
    np.testing.assert_array_equal(idx[:, k].reshape(-1), expected)


def test_eval_batches_hold_every_example_once_in_batch_order():
  images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3) % 251 + 1
  labels = np.arange(10, dtype=np.int32)
  devices = jax.local_devices()[:2]
  d_images, d_labels, d_mask = (np.asarray(a) for a in ip.eval_batches(images, labels, 4, devices))
  assert d_images.shape == (2, 3, 2, 2, 2, 3)  # devices, batches, per device, H, W, C
  # Batch b of the global split is device 0's rows then device 1's rows.
  global_order = np.concatenate([d_labels[:, b].reshape(-1) for b in range(3)])
  mask = np.concatenate([d_mask[:, b].reshape(-1) for b in range(3)])
  np.testing.assert_array_equal(global_order[:10], labels)
  np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
  restored = np.concatenate([d_images[:, b].reshape(-1, 2, 2, 3) for b in range(3)])
  np.testing.assert_array_equal(restored[:10], images)
  assert restored[10:].sum() == 0


def test_replicate_puts_one_copy_on_each_device():
  devices = jax.local_devices()[:4]
  x = np.arange(6, dtype=np.float32).reshape(2, 3)
  r = ip.replicate({"x": x}, devices)["x"]
  assert r.shape == (4, 2, 3) and len(r.sharding.device_set) == 4
  np.testing.assert_array_equal(ip.unreplicate({"x": r})["x"], x)
