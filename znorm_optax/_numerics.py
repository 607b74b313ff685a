"""Per-tensor statistics in float32 that stay exact and finite at any scale.

Every public transform reduces through these helpers, so they share one numerical
contract:

* Statistics are accumulated in float32 whatever the leaf's dtype. Under ``jit`` the
  ``astype`` below fuses into the reductions; no float32 copy of a bf16 tensor is
  materialized.
* Values are first divided by a power of two ``scale`` close to ``max|g|`` (an exact
  operation), so squares never overflow (leaves of 1e30 are fine) and tiny leaves
  (1e-30) keep their relative precision. Results are mapped back analytically.
* The variance is a two-pass estimate, mean first and then the mean squared deviation,
  which stays accurate when the mean dwarfs the spread (mean 1e-2, std 1e-4), where a
  one-pass ``E[g^2] - E[g]^2`` in float32 cancels to noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Axis = int | Sequence[int] | None


def normalize_axis(axis: Axis, ndim: int) -> tuple[int, ...]:
  """Returns ``axis`` as a sorted tuple of non-negative axes (``None`` means all)."""
  if axis is None:
    return tuple(range(ndim))
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(
        f"axis {a} is out of range for a leaf with {ndim} dimensions; "
        "restrict the transform to the leaves that have it with optax.masked"
      )
  return tuple(sorted({a % ndim for a in axes}))


def reduction_size(shape: Sequence[int], axes: tuple[int, ...]) -> int:
  """Number of elements each statistic is computed over."""
  return math.prod(shape[a] for a in axes)


def power_of_two_scale(max_abs: jax.Array) -> jax.Array:
  """A power of two ``s`` with ``max_abs / s`` in [1, 2); 1 where ``max_abs`` is 0.

  Dividing by a power of two is exact, so ``x / s`` loses nothing; rounding ``s`` down
  rather than up keeps it finite when ``max_abs`` is near the float32 maximum.
  """
  _, exponent = jnp.frexp(max_abs)
  scale = jnp.ldexp(jnp.ones_like(max_abs), exponent - 1)
  return jnp.where(max_abs > 0, scale, jnp.ones_like(scale))


class Moments(NamedTuple):
  """Statistics of a tensor over some axes, in float32 (see :func:`moments`)."""

  mean: jax.Array  # Mean of g.
  scale: jax.Array  # Power of two close to max|g| (see power_of_two_scale).
  centered: jax.Array  # (g - mean) / scale, elementwise.
  scaled_std: jax.Array  # Population standard deviation of g / scale.


def moments(g: jax.Array, axes: tuple[int, ...]) -> Moments:
  """Mean and population standard deviation of ``g`` over ``axes`` (kept as size 1)."""
  x = g.astype(jnp.float32)
  n = reduction_size(g.shape, axes)
  # The three first-pass reductions read only x, so XLA fuses them into one pass.
  # Scaling each term by 1/n before summing keeps the sum finite near float32's maximum.
  high = jnp.max(x, axis=axes, keepdims=True)
  low = jnp.min(x, axis=axes, keepdims=True)
  mean = jnp.sum(x * (1.0 / n), axis=axes, keepdims=True)
  # A rounded mean of a constant group is not exactly the constant; max == min is an
  # exact test, so zero spread gives exact zeros rather than amplified rounding noise.
  constant = high == low
  mean = jnp.where(constant, high, mean)
  scale = power_of_two_scale(jnp.maximum(high, -low))
  inverse_scale = 1.0 / scale  # Exact: a power of two (multiplying beats dividing).
  centered = jnp.where(constant, 0.0, x * inverse_scale - mean * inverse_scale)
  variance = jnp.mean(jnp.square(centered), axis=axes, keepdims=True)
  return Moments(mean, scale, centered, jnp.sqrt(variance))


def l2_norm(g: jax.Array) -> jax.Array:
  """The L2 norm of ``g`` as a float32 scalar: never NaN, inf only beyond float32's range."""
  x = g.astype(jnp.float32)
  scale = power_of_two_scale(jnp.max(jnp.abs(x), initial=0.0))
  return scale * jnp.sqrt(jnp.sum(jnp.square(x / scale)))


def is_concrete(value) -> bool:
  """True for a Python/NumPy number or a concrete array; False for a tracer."""
  return not isinstance(value, jax.core.Tracer)


def check_hyperparameter(name: str, value, *, minimum: float = 0.0, strict: bool) -> None:
  """Raises ``ValueError`` if a concrete hyperparameter is non-finite or below bound.

  Traced values (e.g. from ``optax.inject_hyperparams`` under ``jit``) are not checked:
  they can only be inspected at run time, and they were checked when first injected.
  """
  if not is_concrete(value):
    return
  array = np.asarray(value)
  if array.shape != () or not (isinstance(value, Real) or np.issubdtype(array.dtype, np.number)):
    raise ValueError(f"{name} must be a real scalar, got {value!r}")
  number = float(array)
  bound_ok = number > minimum if strict else number >= minimum
  if not math.isfinite(number) or not bound_ok:
    relation = ">" if strict else ">="
    raise ValueError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")
