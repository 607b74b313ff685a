"""Clipping: optax's global-norm and value clipping, plus per-leaf (layer) norm clipping."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from znorm_optax import _numerics


def _clip_leaf_norm(g: jax.Array, max_norm: chex.Numeric) -> jax.Array:
  # A zero norm gives min(1, inf) = 1 and an infinite one (beyond float32) gives 0:
  # never NaN, and the factor is at most 1, so the product cannot overflow.
  factor = jnp.minimum(1.0, max_norm / _numerics.l2_norm(g))
  return (g.astype(_numerics.compute_dtype(g.dtype)) * factor).astype(g.dtype)


def clip_by_layer_norm(max_norm: chex.Numeric) -> optax.GradientTransformation:
  r"""Rescales each leaf whose L2 norm exceeds ``max_norm`` down to ``max_norm``.

  .. math::

    \hat g = g \cdot \min\left(1, \frac{c}{\lVert g \rVert_2}\right)

  applied to every leaf separately: the direction of each tensor is kept and leaves
  below the bound are untouched. This is Keras's ``clipnorm`` (per variable), unlike
  :func:`optax.clip_by_global_norm`, which rescales all leaves by one shared factor, and
  :func:`optax.clip_by_block_rms`, which bounds the root-mean-square, not the norm.
  The norm is computed in float32 on power-of-two-rescaled values, so it neither
  overflows nor underflows for finite leaves. Complex leaves use
  :math:`\lVert g \rVert_2 = \sqrt{\sum |g|^2}` and stay complex; integer or boolean
  leaves raise ``TypeError``.

  Args:
    max_norm: The positive bound on each leaf's L2 norm.

  Returns:
    A stateless :class:`optax.GradientTransformation`.

  Raises:
    ValueError: If a concrete ``max_norm`` is not a finite positive number.

  Example:
    >>> import jax.numpy as jnp
    >>> import znorm_optax as zo
    >>> tx = zo.clip_by_layer_norm(1.0)
    >>> grads = {'w': jnp.array([3.0, 4.0]), 'b': jnp.array([0.3, 0.4])}
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> print(updates['w'], updates['b'])
    [0.6 0.8] [0.3 0.4]

  References:
    Pascanu et al., `On the difficulty of training Recurrent Neural Networks
    <https://arxiv.org/abs/1211.5063>`_, 2012.
  """
  _numerics.check_hyperparameter("max_norm", max_norm, strict=True)

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    del params
    clipped = _numerics.map_leaves(
      "clip_by_layer_norm", lambda g: _clip_leaf_norm(g, max_norm), updates
    )
    return clipped, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def clip_by_global_norm(max_norm: chex.Numeric) -> optax.GradientTransformation:
  r""":func:`optax.clip_by_global_norm`, with ``max_norm`` validated.

  .. math::

    \hat g_\ell = g_\ell \cdot \min\left(1, \frac{c}{\sqrt{\sum_k \lVert g_k \rVert_2^2}}\right)
    \quad \text{for every leaf } \ell

  Rescales all leaves by one factor so that their global L2 norm is at most
  ``max_norm`` (:math:`c`). The clipping is optax's own; only the hyperparameter check is added.
  optax squares in the gradient's dtype, so float32 leaves beyond about 1e19 make the
  norm overflow and the update zero (finite, but not the clipped direction).

  Args:
    max_norm: The positive bound on the global norm.

  Returns:
    A stateless :class:`optax.GradientTransformation`.

  Raises:
    ValueError: If a concrete ``max_norm`` is not a finite positive number.

  Example:
    >>> import jax.numpy as jnp
    >>> import znorm_optax as zo
    >>> tx = zo.clip_by_global_norm(1.0)
    >>> grads = {'w': jnp.array([3.0, 4.0]), 'b': jnp.array([0.0])}
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> print(updates['w'], updates['b'])
    [0.6 0.8] [0.]

  References:
    Pascanu et al., `On the difficulty of training Recurrent Neural Networks
    <https://arxiv.org/abs/1211.5063>`_, 2012.
  """
  _numerics.check_hyperparameter("max_norm", max_norm, strict=True)
  return optax.clip_by_global_norm(max_norm)


def clip(max_delta: chex.Numeric) -> optax.GradientTransformation:
  r""":func:`optax.clip`, with ``max_delta`` validated: clips each element to ``±max_delta``.

  .. math::

    \hat g_i = \max(-\delta, \min(\delta, g_i))

  Clipping by value: each element separately, so the direction of the update changes
  when some elements are clipped. (In :func:`gradient_transform`, the deprecated name
  ``clip`` means :func:`clip_by_global_norm`, not this.)

  Args:
    max_delta: The positive bound :math:`\delta` on each element's magnitude.

  Returns:
    A stateless :class:`optax.GradientTransformation`.

  Raises:
    ValueError: If a concrete ``max_delta`` is not a finite positive number.

  Example:
    >>> import jax.numpy as jnp
    >>> import znorm_optax as zo
    >>> tx = zo.clip(1.0)
    >>> updates, _ = tx.update(jnp.array([-3.0, 0.5, 2.0]), tx.init(jnp.zeros(3)))
    >>> print(updates)
    [-1.   0.5  1. ]
  """
  _numerics.check_hyperparameter("max_delta", max_delta, strict=True)
  return optax.clip(max_delta)
