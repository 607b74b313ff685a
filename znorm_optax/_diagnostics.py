"""Diagnostics: per-leaf statistics of the updates flowing through a chain."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from znorm_optax import _numerics


class GradientStatsState(NamedTuple):
  """The state of :func:`gradient_stats`: statistics of the last updates seen.

  Each field is a pytree with the structure of the updates, holding one scalar per
  leaf: float32, except ``mean`` of a complex leaf, which is complex64.

  Attributes:
    norm: The L2 norm :math:`\\lVert g \\rVert_2` of each leaf.
    mean: The mean :math:`\\mu(g)` of each leaf.
    std: The population standard deviation :math:`\\sigma(g)` (``ddof=0``) of each leaf.
  """

  norm: chex.ArrayTree
  mean: chex.ArrayTree
  std: chex.ArrayTree


def _mean(g: jax.Array) -> jax.Array:
  if g.size == 0:  # No elements: as znorm leaves them, a zero statistic rather than an error.
    return jnp.zeros((), _numerics.compute_dtype(g.dtype))
  return _numerics.moments(g, tuple(range(g.ndim))).mean.reshape(())


def _std(g: jax.Array) -> jax.Array:
  if g.size == 0:
    return jnp.zeros((), jnp.float32)
  m = _numerics.moments(g, tuple(range(g.ndim)))
  return (m.scaled_std * m.scale).reshape(())


def gradient_stats() -> optax.GradientTransformation:
  r"""Passes updates through unchanged and records per-leaf statistics in its state.

  .. math::

    \lVert g \rVert_2 = \sqrt{\textstyle\sum_i |g_i|^2}, \qquad
    \mu(g) = \frac{1}{n} \sum_i g_i, \qquad
    \sigma(g) = \sqrt{\frac{1}{n} \sum_i |g_i - \mu(g)|^2}

  For every leaf :math:`g` of the incoming updates the state holds its norm, mean and
  population standard deviation (``ddof=0``, as in :func:`znorm`), each a float32 scalar
  (the mean of a complex leaf is complex64) in a pytree with the updates' structure,
  computed with :func:`znorm`'s numerics (float32, finite at any scale). Place it
  anywhere in a chain, e.g. before and after :func:`znorm`, and read the statistics from
  the optimizer state (for instance with
  ``optax.tree_utils.tree_get_all_with_path(state, 'norm')`` or by indexing the chain's
  state tuple). The statistics cost one pass over the updates; use it for diagnostics.
  A zero-size leaf (which :func:`znorm` passes through) gets norm, mean and std 0;
  integer or boolean leaves raise ``TypeError``.

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

  def init_fn(params: optax.Params) -> GradientStatsState:
    norm = jax.tree.map(lambda p: jnp.zeros((), jnp.float32), params)
    mean = jax.tree.map(lambda p: jnp.zeros((), _numerics.compute_dtype(p.dtype)), params)
    return GradientStatsState(norm=norm, mean=mean, std=norm)

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, GradientStatsState]:
    del state, params
    name = "gradient_stats"
    # The three maps share their reductions once jitted (XLA eliminates the repeats).
    return updates, GradientStatsState(
      norm=_numerics.map_leaves(name, _numerics.l2_norm, updates),
      mean=_numerics.map_leaves(name, _mean, updates),
      std=_numerics.map_leaves(name, _std, updates),
    )

  return optax.GradientTransformation(init_fn, update_fn)
