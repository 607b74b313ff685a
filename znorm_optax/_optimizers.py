"""The paper's optimizers and a name-based factory for configs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import chex
import optax

from znorm_optax import _centralization, _clipping, _normalization

_FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
  "none": optax.identity,
  "znorm": _normalization.znorm,
  "centralize": _centralization.centralize,
  "clip_by_global_norm": _clipping.clip_by_global_norm,
  "clip_by_layer_norm": _clipping.clip_by_layer_norm,
}
_DEFAULTS: dict[str, dict[str, Any]] = {
  "clip_by_global_norm": {"max_norm": 1.0},
  "clip_by_layer_norm": {"max_norm": 1.0},
}

# Documented in __init__.py, where the public names are.
GRADIENT_TRANSFORMS: tuple[str, ...] = tuple(_FACTORIES)


def _masked_znorm(eps: chex.Numeric, mask: optax.MaskOrFn | None) -> optax.GradientTransformation:
  transform = _normalization.znorm(eps)
  return transform if mask is None else optax.masked(transform, mask)


def _keyword_arguments(factory: Callable[..., Any]) -> list[str]:
  return [
    p.name
    for p in inspect.signature(factory).parameters.values()
    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
  ]


def znorm_adam(
  learning_rate: optax.ScalarOrSchedule,
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  *,
  znorm_eps: chex.Numeric = 1e-8,
  mask: optax.MaskOrFn | None = None,
) -> optax.GradientTransformation:
  r"""Adam on Z-score-normalized gradients, as in the paper.

  .. math::

    \hat g_t = \frac{g_t - \mu(g_t)}{\sigma(g_t) + \epsilon_z}, \quad
    m_t = \beta_1 m_{t-1} + (1 - \beta_1) \hat g_t, \quad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) \hat g_t^2, \quad
    u_t = -\eta_t \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

  per leaf (:func:`znorm`, then :func:`optax.adam`). Equal to
  ``optax.chain(znorm(znorm_eps), optax.adam(learning_rate, b1, b2, eps))``, or with
  ``mask`` to ``optax.chain(optax.masked(znorm(znorm_eps), mask), optax.adam(...))``:
  leaves outside the mask reach Adam as they are.

  By default (``mask=None``) every leaf is normalized, biases and normalization
  parameters included, as the paper's formula reads and as ``optax.adamw``'s
  ``mask=None`` applies weight decay everywhere: a bias or BatchNorm vector is then
  rescaled to unit spread and recentred, whatever its gradient's size (a one-element leaf
  has no spread and passes unchanged). For networks with biases and BatchNorm,
  ``mask=masks.kernels_only`` (leaves with ``ndim >= 2``) is what the harness uses and
  what we recommend.

  Args:
    learning_rate: A scalar or a schedule (``optax.Schedule``).
    b1: Adam's decay rate for the first moment.
    b2: Adam's decay rate for the second moment.
    eps: Adam's denominator constant.
    znorm_eps: :func:`znorm`'s constant added to each leaf's standard deviation.
    mask: Which leaves :func:`znorm` normalizes, as ``optax.adamw`` takes it: a pytree
      of booleans with the structure of the params (or a prefix of it), or a callable
      from the params to such a pytree; ``None`` normalizes every leaf.

  Returns:
    A :class:`optax.GradientTransformation` whose state is ``(znorm's, Adam's)``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import znorm_optax as zo
    >>> params = {'w': jnp.array([1.0, -1.0, 2.0])}
    >>> opt = zo.znorm_adam(learning_rate=0.1)
    >>> state = opt.init(params)
    >>> grads = {'w': jnp.array([0.5, -0.1, 0.3])}
    >>> updates, state = opt.update(grads, state, params)
    >>> print(optax.apply_updates(params, updates)['w'].round(4))
    [ 0.9 -0.9  1.9]
    >>> params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.zeros(2)}
    >>> grads = {'kernel': jnp.array([[1.0, 2.0], [3.0, 6.0]]), 'bias': jnp.array([0.5, 0.2])}
    >>> for mask in (None, zo.masks.kernels_only):  # Adam's first step is sign-like
    ...   opt = zo.znorm_adam(learning_rate=0.1, mask=mask)
    ...   print(opt.update(grads, opt.init(params), params)[0]['bias'])
    [-0.1  0.1]
    [-0.1 -0.1]

  References:
    Yun, `ZNorm: Z-Score Gradient Normalization for Accelerating Skip-Connected Network
    Training without Architectural Modification <https://arxiv.org/abs/2408.01215>`_,
    2024.
    Kingma and Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2015.
  """
  return optax.chain(
    _masked_znorm(znorm_eps, mask), optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  )


def znorm_sgd(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float | None = None,
  nesterov: bool = False,
  *,
  znorm_eps: chex.Numeric = 1e-8,
  mask: optax.MaskOrFn | None = None,
) -> optax.GradientTransformation:
  r"""SGD (optionally with momentum) on Z-score-normalized gradients.

  .. math::

    \hat g_t = \frac{g_t - \mu(g_t)}{\sigma(g_t) + \epsilon_z}, \quad
    m_t = \beta m_{t-1} + \hat g_t, \quad
    u_t = -\eta_t m_t

  per leaf (:math:`\beta = 0` without momentum). Equal to
  ``optax.chain(znorm(znorm_eps), optax.sgd(learning_rate, momentum, nesterov))``, with
  ``znorm`` wrapped in ``optax.masked(..., mask)`` when a ``mask`` is given (as in
  :func:`znorm_adam`: ``None`` normalizes every leaf, as in the paper;
  ``masks.kernels_only`` is the recommended mask). ZNorm fixes the update's scale, so use
  a decaying ``learning_rate`` to converge.

  Args:
    learning_rate: A scalar or a schedule (``optax.Schedule``).
    momentum: Momentum decay rate, or ``None`` for plain SGD.
    nesterov: Whether to use Nesterov momentum.
    znorm_eps: :func:`znorm`'s constant added to each leaf's standard deviation.
    mask: Which leaves :func:`znorm` normalizes: a pytree of booleans or a callable
      returning one, as ``optax.adamw`` takes it; ``None`` normalizes every leaf.

  Returns:
    A :class:`optax.GradientTransformation` whose state is ``(znorm's, SGD's)``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import znorm_optax as zo
    >>> params = {'w': jnp.array([1.0, 2.0])}
    >>> opt = zo.znorm_sgd(learning_rate=0.5)
    >>> updates, _ = opt.update({'w': jnp.array([3.0, 1.0])}, opt.init(params))
    >>> print(optax.apply_updates(params, updates)['w'])
    [0.5 2.5]

  References:
    Yun, `ZNorm: Z-Score Gradient Normalization for Accelerating Skip-Connected Network
    Training without Architectural Modification <https://arxiv.org/abs/2408.01215>`_,
    2024.
  """
  return optax.chain(
    _masked_znorm(znorm_eps, mask),
    optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )


def gradient_transform(name: str, **kwargs: Any) -> optax.GradientTransformation:
  """Builds a gradient transform from its name, as a config names it.

  ======================= ============================================ ==================
  name                    transform                                    keyword arguments
  ======================= ============================================ ==================
  ``none``                :func:`optax.identity`                       (none)
  ``znorm``               :func:`znorm`                                ``eps``, ``axis``
  ``centralize``          :func:`centralize`                           (none)
  ``clip_by_global_norm`` :func:`clip_by_global_norm`                  ``max_norm=1.0``
  ``clip_by_layer_norm``  :func:`clip_by_layer_norm` (Keras clipnorm)  ``max_norm=1.0``
  ======================= ============================================ ==================

  The names are the library's function names (:data:`GRADIENT_TRANSFORMS`) and nothing
  else, and ``kwargs`` go straight to the function, with the defaults above. By-value
  clipping (:func:`clip`) has no name here: ``clip`` is not a valid name, so it cannot be
  mistaken for clipping by global norm.

  Args:
    name: One of :data:`GRADIENT_TRANSFORMS`.
    **kwargs: The chosen transform's keyword arguments.

  Returns:
    A :class:`optax.GradientTransformation`.

  Raises:
    ValueError: For an unknown name or a bad hyperparameter value.
    TypeError: For a keyword argument the chosen transform does not take.

  Example:
    >>> import optax
    >>> import znorm_optax as zo
    >>> zo.GRADIENT_TRANSFORMS
    ('none', 'znorm', 'centralize', 'clip_by_global_norm', 'clip_by_layer_norm')
    >>> opt = optax.chain(zo.gradient_transform('znorm', axis=(0, 1, 2)), optax.adam(1e-3))
    >>> opt = optax.chain(zo.gradient_transform('clip_by_global_norm'), optax.adam(1e-3))
    >>> zo.gradient_transform('clip')
    Traceback (most recent call last):
    ...
    ValueError: unknown gradient transform 'clip'; valid names: none, znorm, ...
    >>> zo.gradient_transform('znorm', epsilon=1e-6)
    Traceback (most recent call last):
    ...
    TypeError: gradient transform 'znorm' got unknown keyword argument(s) epsilon; ...
  """
  if name not in _FACTORIES:
    raise ValueError(
      f"unknown gradient transform {name!r}; valid names: {', '.join(GRADIENT_TRANSFORMS)}"
    )
  factory = _FACTORIES[name]
  valid = _keyword_arguments(factory)
  unknown = [k for k in kwargs if k not in valid]
  if unknown:
    raise TypeError(
      f"gradient transform {name!r} got unknown keyword argument(s) {', '.join(unknown)}; "
      f"valid keyword arguments: {', '.join(valid) or '(none)'}"
    )
  return factory(**{**_DEFAULTS.get(name, {}), **kwargs})
