"""Each transform chained into Adam fits a small regression problem (jax and optax only)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import znorm_optax as zo


def make_problem():
  rng = np.random.default_rng(0)
  x = rng.uniform(-2, 2, (256, 4)).astype(np.float32)
  y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3] - 0.3 * x[:, 3:]).astype(np.float32)
  keys = jax.random.split(jax.random.key(0), 2)
  params = {
    "hidden": {
      "kernel": jax.random.normal(keys[0], (4, 32)) / 2.0,
      "bias": jnp.zeros(32),
    },
    "out": {"kernel": jax.random.normal(keys[1], (32, 1)) / np.sqrt(32), "bias": jnp.zeros(1)},
  }
  return jnp.asarray(x), jnp.asarray(y), params


def mse(params, x, y):
  hidden = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return jnp.mean(jnp.square(hidden @ params["out"]["kernel"] + params["out"]["bias"] - y))


@pytest.mark.parametrize("name", zo.GRADIENT_TRANSFORMS)
def test_two_layer_mlp_fit(name):
  x, y, params = make_problem()
  steps = 600
  schedule = optax.cosine_decay_schedule(1e-2, steps)  # ZNorm needs a decaying step size.
  transform = optax.masked(zo.gradient_transform(name), zo.masks.kernels_only)
  tx = optax.chain(transform, optax.adam(schedule))
  initial_loss = float(mse(params, x, y))

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(mse)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state = tx.init(params)
  initial_params = params
  for _ in range(steps):
    params, state, _ = step(params, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(params, initial_params)
  chex.assert_tree_all_finite(params)
  final_loss = float(mse(params, x, y))
  assert final_loss < 0.02 < initial_loss / 10, (name, initial_loss, final_loss)
