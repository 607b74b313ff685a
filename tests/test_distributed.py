"""The transforms under pmap and on sharded arrays over 4 fake CPU devices."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import znorm_optax as zo
from tests.trees import random_tree

TRANSFORMS = {
  "znorm": lambda: zo.znorm(),
  "znorm_per_channel": lambda: zo.znorm(axis=-1),
  "centralize": zo.centralize,
  "clip": lambda: zo.clip_by_global_norm(1.0),
  "clip_layer": lambda: zo.clip_by_layer_norm(1.0),
  "znorm_adam": lambda: zo.znorm_adam(1e-3),
}
DEVICES = 4
pytestmark = pytest.mark.skipif(
  jax.device_count() < DEVICES, reason=f"needs {DEVICES} devices (the CPU tests fake them)"
)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_pmean_then_transform_equals_single_device(name):
  tx = TRANSFORMS[name]()
  params = random_tree(0)
  per_device_grads = [random_tree(seed) for seed in range(1, DEVICES + 1)]
  stacked = jax.tree.map(lambda *g: jnp.stack(g), *per_device_grads)
  state = tx.init(params)

  @functools.partial(jax.pmap, axis_name="batch", in_axes=(0, None, None))
  def step(grads, state, params):
    grads = jax.lax.pmean(grads, "batch")
    return tx.update(grads, state, params)[0]

  mean_grads = jax.tree.map(lambda *g: sum(g) / DEVICES, *per_device_grads)
  expected, _ = jax.jit(tx.update)(mean_grads, state, params)
  out = step(stacked, state, params)
  for device in range(DEVICES):
    chex.assert_trees_all_close(
      jax.tree.map(lambda x, d=device: x[d], out), expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("sharded_axis", [0, -1])
def test_sharded_arrays_match_unsharded(name, sharded_axis):
  tx = TRANSFORMS[name]()
  mesh = jax.make_mesh((DEVICES,), ("data",))
  # Leaves whose sharded dimension divides across the 4 devices.
  grads = {
    "conv": jnp.asarray(np.random.default_rng(0).normal(0.2, 1.0, (4, 4, 8, 8)), jnp.float32),
    "dense": jnp.asarray(np.random.default_rng(1).normal(-0.1, 3.0, (8, 12)), jnp.float32),
    "bias": jnp.asarray(np.random.default_rng(2).normal(0.5, 0.1, (16,)), jnp.float32),
  }

  def spec(x):
    axes = [None] * x.ndim
    axes[sharded_axis] = "data"
    return NamedSharding(mesh, P(*axes))

  sharded = jax.tree.map(lambda x: jax.device_put(x, spec(x)), grads)
  assert all(len(x.sharding.device_set) == DEVICES for x in jax.tree.leaves(sharded))
  state = tx.init(grads)
  expected, _ = jax.jit(tx.update)(grads, state, grads)
  out, _ = jax.jit(tx.update)(sharded, tx.init(sharded), sharded)
  chex.assert_trees_all_close(out, expected, rtol=1e-5, atol=1e-6)
