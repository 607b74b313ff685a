"""Gradient centralization for Flax's parameter layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from znorm_optax import _numerics


def _centralize_leaf(g: jax.Array) -> jax.Array:
  if g.ndim < 2:
    return g
  axes = tuple(range(g.ndim - 1))
  x = g.astype(_numerics.compute_dtype(g.dtype))
  return (x - jnp.mean(x, axis=axes, keepdims=True)).astype(g.dtype)


def centralize() -> optax.GradientTransformation:
  r"""Subtracts from each kernel gradient its mean over all axes but the last.

  .. math::

    \hat g_{\ldots, j} = g_{\ldots, j} - \frac{1}{N} \sum_{\ldots} g_{\ldots, j}

  Gradient centralization (Yong et al. 2020) for Flax's layout: Dense kernels are
  ``(in, out)`` and Conv kernels ``(kh, kw, in, out)``, so the output feature is the
  *last* axis and each output unit's weight vector is centred. Leaves with fewer than
  two dimensions (biases, BatchNorm parameters) are returned unchanged. The mean is
  computed in float32 (complex64 for complex gradients) and the result has the
  gradient's dtype; integer or boolean leaves raise ``TypeError``.

  ``optax.centralize`` keeps axis 0 instead, the output axis of PyTorch's
  ``(out, in, kh, kw)`` layout; on Flax kernels it centres across output units, a
  different operation.

  Args:
    (none)

  Returns:
    A stateless :class:`optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> import znorm_optax as zo
    >>> kernel_grad = jnp.array([[1.0, 2.0], [3.0, 6.0]])  # (in=2, out=2)
    >>> tx = zo.centralize()
    >>> updates, _ = tx.update(kernel_grad, tx.init(kernel_grad))
    >>> print(updates)
    [[-1. -2.]
     [ 1.  2.]]

  References:
    Yong et al., `Gradient Centralization: A New Optimization Technique for Deep
    Neural Networks <https://arxiv.org/abs/2004.01461>`_, 2020.
  """

  def update_fn(
    updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, optax.OptState]:
    del params
    return _numerics.map_leaves("centralize", _centralize_leaf, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
