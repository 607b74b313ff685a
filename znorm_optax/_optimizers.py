"""The paper's optimizers and a name-based factory for configs."""

from __future__ import annotations

import optax

from znorm_optax import _centralization, _clipping, _normalization

_FACTORIES = {
  "none": optax.identity,
  "znorm": _normalization.znorm,
  "centralize": _centralization.centralize,
  "clip": _clipping.clip_by_global_norm,
  "clip_layer": _clipping.clip_by_layer_norm,
}
_DEFAULTS = {"clip": {"max_norm": 1.0}, "clip_layer": {"max_norm": 1.0}}
GRADIENT_TRANSFORMS = tuple(_FACTORIES)


def znorm_adam(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  *,
  znorm_eps: float = 1e-8,
) -> optax.GradientTransformation:
  """Adam on Z-score-normalized gradients, as in the paper.

  Equal to ``optax.chain(znorm(znorm_eps), optax.adam(learning_rate, b1, b2, eps))``.

  Args:
    learning_rate: A scalar or a schedule (``optax.Schedule``).
    b1: Adam's decay rate for the first moment.
    b2: Adam's decay rate for the second moment.
    eps: Adam's denominator constant.
    znorm_eps: :func:`znorm`'s constant added to each leaf's standard deviation.

  Returns:
    A :class:`optax.GradientTransformation` whose state is Adam's.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import znorm_optax as zo
    >>> params = {'w': jnp.array([1.0, -1.0, 2.0])}
    >>> opt = zo.znorm_adam(learning_rate=0.1)
    >>> state = opt.init(params)
    >>> grads = {'w': jnp.array([0.5, -0.1, 0.3])}
    >>> updates, state = opt.update(grads, state, params)
    >>> print(optax.apply_updates(params, updates)['w'])
    [ 0.9 -0.9 1.9 ]
  """
  return optax.chain(
    _normalization.znorm(znorm_eps), optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  )


def znorm_sgd(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float | None = None,
  nesterov: bool = False,
  *,
  znorm_eps: float = 1e-8,
) -> optax.GradientTransformation:
  """SGD (optionally with momentum) on Z-score-normalized gradients.

  Equal to ``optax.chain(znorm(znorm_eps), optax.sgd(learning_rate, momentum, nesterov))``.

  Args:
    learning_rate: A scalar or a schedule (``optax.Schedule``).
    momentum: Momentum decay rate, or ``None`` for plain SGD.
    nesterov: Whether to use Nesterov momentum.
    znorm_eps: :func:`znorm`'s constant added to each leaf's standard deviation.

  Returns:
    A :class:`optax.GradientTransformation` whose state is SGD's.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import znorm_optax as zo
    >>> params = {'w': jnp.array([1.0, 2.0])}
    >>> opt = zo.znorm_sgd(learning_rate=0.5)
    >>> updates, _ = opt.update({'w': jnp.array([3.0, 1.0])}, opt.init(params))
    >>> print(optax.apply_updates(params, updates)['w'])
    [0.5 2.5]
  """
  return optax.chain(
    _normalization.znorm(znorm_eps),
    optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )


def gradient_transform(name: str, **kwargs) -> optax.GradientTransformation:
  """Builds a gradient transform from its config name.

  ============== ========================================= ==================
  name           transform                                 keyword arguments
  ============== ========================================= ==================
  ``none``       :func:`optax.identity`                    (none)
  ``znorm``      :func:`znorm`                             ``eps``, ``axis``
  ``centralize`` :func:`centralize`                        (none)
  ``clip``       :func:`clip_by_global_norm`               ``max_norm=1.0``
  ``clip_layer`` :func:`clip_by_layer_norm` (Keras clipnorm) ``max_norm=1.0``
  ============== ========================================= ==================

  Args:
    name: One of :data:`GRADIENT_TRANSFORMS`.
    **kwargs: The chosen transform's hyperparameters.

  Returns:
    A :class:`optax.GradientTransformation`.

  Raises:
    ValueError: For an unknown name or a bad hyperparameter.

  Example:
    >>> import optax
    >>> import znorm_optax as zo
    >>> opt = optax.chain(zo.gradient_transform('clip', max_norm=0.5), optax.adam(1e-3))
    >>> zo.gradient_transform('zscore')
    Traceback (most recent call last):
    ...
    ValueError: unknown gradient transform 'zscore'; valid names: none, znorm, ...
  """
  if name not in _FACTORIES:
    raise ValueError(
      f"unknown gradient transform {name!r}; valid names: {', '.join(GRADIENT_TRANSFORMS)}"
    )
  return _FACTORIES[name](**{**_DEFAULTS.get(name, {}), **kwargs})
