"""Masks selecting which parameters a transform applies to, for :func:`optax.masked`."""

from __future__ import annotations

from typing import Any

import chex
import jax


def kernels_only(params: chex.ArrayTree) -> Any:
  """Marks the leaves with two or more dimensions (Dense and Conv kernels).

  Biases, BatchNorm scales and offsets and other vectors or scalars are ``False``, so
  ``optax.masked(znorm(), kernels_only)`` normalizes weights only; a ZNorm'd bias could
  only move in its zero-mean subspace, and a one-element one not at all.

  Args:
    params: A pytree of arrays (or of ``jax.ShapeDtypeStruct``).

  Returns:
    A pytree of Python bools with the structure of ``params``, for the ``mask``
    argument of :func:`optax.masked`.

  Example:
    >>> import jax.numpy as jnp
    >>> import znorm_optax as zo
    >>> params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
    >>> zo.masks.kernels_only(params)
    {'dense': {'bias': False, 'kernel': True}}
  """
  return jax.tree.map(lambda p: p.ndim >= 2, params)
