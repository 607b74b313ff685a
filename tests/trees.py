"""Parameter-like pytrees for the library's tests (jax and NumPy only, like the library)."""

import jax
import jax.numpy as jnp
import numpy as np


def random_tree(seed, dtype=jnp.float32):
  """A Flax-like parameter tree: conv and dense kernels, biases, a BN scale."""
  rng = np.random.default_rng(seed)
  shapes = {
    "conv": {"kernel": (3, 3, 4, 8)},
    "bn": {"scale": (8,), "bias": (8,)},
    "dense": {"kernel": (8, 10), "bias": (10,)},
  }

  def leaf(shape):
    values = rng.normal(0.3, 2.0, shape)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      values = values + 1j * rng.normal(-0.5, 1.0, shape)
    return jnp.asarray(values, dtype)

  return jax.tree.map(leaf, shapes, is_leaf=lambda s: isinstance(s, tuple))
