"""Diagnostics: per-leaf statistics of the updates flowing through a chain."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from znorm_optax import _numerics


class GradientStatsState(NamedTuple):
  """Per-leaf statistics of the last updates seen, as float32 scalars."""

  norm: Any  # L2 norm of each leaf.
  mean: Any  # Mean of each leaf.
  std: Any  # Population standard deviation of each leaf.


def _mean(g: jax.Array) -> jax.Array:
  return _numerics.moments(g, tuple(range(g.ndim))).mean.reshape(())


def _std(g: jax.Array) -> jax.Array:
  m = _numerics.moments(g, tuple(range(g.ndim)))
  return (m.scaled_std * m.scale).reshape(())


def gradient_stats() -> optax.GradientTransformation:
  r"""Passes updates through unchanged and records per-leaf statistics in its state.

  For every leaf :math:`g` of the incoming updates the state holds
  :math:`\lVert g \rVert_2`, :math:`\mu(g)` and the population standard deviation
  :math:`\sigma(g)` (``ddof=0``, as in :func:`znorm`), each a float32 scalar in a pytree
  with the updates' structure. Place it anywhere in a chain, e.g. before and after
  :func:`znorm`, and read the statistics from the optimizer state (for instance with
  ``optax.tree_utils.tree_get_all_with_path(state, 'norm')`` or by indexing the chain's
  state tuple). The statistics cost one pass over the updates; use it for diagnostics.

  Returns:
    A :class:`optax.GradientTransformation` with state :class:`GradientStatsState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import znorm_optax as zo
    >>> tx = zo.gradient_stats()
    >>> grads = {'w': jnp.array([3.0, 4.0])}
    >>> updates, state = tx.update(grads, tx.init(grads))
    >>> print(state.norm['w'], state.mean['w'], state.std['w'])
    5.0 3.5 0.5
  """

  def init_fn(params):
    zeros = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), params)
    return GradientStatsState(norm=zeros, mean=zeros, std=zeros)

  def update_fn(updates, state, params=None):
    del state, params
    # The three maps share their reductions once jitted (XLA eliminates the repeats).
    return updates, GradientStatsState(
      norm=jax.tree.map(_numerics.l2_norm, updates),
      mean=jax.tree.map(_mean, updates),
      std=jax.tree.map(_std, updates),
    )

  return optax.GradientTransformation(init_fn, update_fn)
