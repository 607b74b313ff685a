"""Z-score gradient normalization (ZNorm)."""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import optax

from znorm_optax import _numerics


def _standardize(g: jax.Array, eps: chex.Numeric, axis: _numerics.Axis) -> jax.Array:
  axes = _numerics.normalize_axis(axis, g.ndim)
  if _numerics.reduction_size(g.shape, axes) <= 1:
    return g  # No spread to measure: a scalar step size is left to the optimizer.
  m = _numerics.moments(g, axes)
  # (g - mean) / (std + eps) with numerator and denominator divided by the exact
  # power-of-two scale. Zero spread means centered == 0: give zeros, whatever eps is.
  denominator = m.scaled_std + eps / m.scale
  inverse = jnp.where(m.scaled_std > 0, 1.0 / denominator, 0.0)
  return (m.centered * inverse).astype(g.dtype)


def znorm(
  eps: chex.Numeric = 1e-8, *, axis: int | Sequence[int] | None = None
) -> optax.GradientTransformation:
  r"""Standardizes each gradient leaf to zero mean and unit standard deviation.

  .. math::

    \hat g = \frac{g - \mu(g)}{\sigma(g) + \epsilon}

  where :math:`\mu` and :math:`\sigma` are the mean and the population standard
  deviation (``ddof=0``; for complex gradients :math:`\sigma = \sqrt{\mu(|g - \mu|^2)}`,
  as :func:`jax.numpy.std` defines it, and the result stays complex) over all elements
  of the leaf (``axis=None``, as in the paper) or over ``axis`` (e.g.
  ``axis=(0, 1, 2)`` standardizes each output channel of a Flax ``(kh, kw, in, out)``
  kernel). ``eps`` is added to the standard deviation, outside the square root, as in
  the paper.

  Numerics: statistics are computed in float32 for any gradient dtype with a two-pass
  variance on values pre-divided by an exact power of two, so they match a float64
  reference when the mean dwarfs the spread and stay finite from 1e-30 to 1e30; the
  result has the gradient's dtype. A leaf (or a reduction) of one element is returned
  unchanged, a leaf with zero spread becomes zeros (never NaN), and ``None`` or
  ``optax.MaskedNode`` leaves pass through. Integer or boolean leaves raise
  ``TypeError`` naming the leaf and its dtype.

  What it does to an update: each tensor's update has mean 0 and a fixed scale, so the
  gradient's magnitude is discarded (the learning rate alone sets the step; use a
  decaying schedule to converge) and updates stay in the tensor's zero-mean subspace,
  which a bias or a BatchNorm scale cannot afford: mask those out, e.g. with
  ``optax.masked(znorm(), masks.kernels_only)``.

  Args:
    eps: Non-negative constant added to the standard deviation.
    axis: Axes the statistics are computed over; ``None`` for all axes.

  Returns:
    A stateless :class:`optax.GradientTransformation`.

  Raises:
    ValueError: If a concrete ``eps`` is negative, NaN or infinite.

  Example:
    >>> import jax.numpy as jnp
    >>> import znorm_optax as zo
    >>> tx = zo.znorm()
    >>> grads = {'w': jnp.array([1.0, 2.0, 3.0, 4.0]), 'b': jnp.array([5.0])}
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> print(updates['w'])
    [-1.3416407 -0.4472136  0.4472136  1.3416407]
    >>> print(updates['b'])
    [5.]

  References:
    Yun, `ZNorm: Z-Score Gradient Normalization for Accelerating Skip-Connected Network
    Training without Architectural Modification <https://arxiv.org/abs/2408.01215>`_,
    2024.
    Yun, `Mitigating Gradient Overlap in Deep Residual Networks with Gradient
    Normalization for Improved Non-Convex Optimization
    <https://arxiv.org/abs/2410.21564>`_, 2024.
  """
  _numerics.check_hyperparameter("eps", eps, strict=False)

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    del params
    return _numerics.map_leaves("znorm", lambda g: _standardize(g, eps, axis), updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
