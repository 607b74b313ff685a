"""Config -> the optimizer: a `znorm_optax` gradient transform chained into adam, adamw or sgd.

`create_optimizer` returns the chain ``optax.chain(gradient transform, base optimizer)`` and its
parts: the state of the chain is ``(transform state, base state)``, so the diagnostics can run the
transform alone (`Optimizer.grad_transform` on ``opt_state[0]``) without touching the chain.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import optax

import znorm_optax as zo
from trainer.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
GRAD_TRANSFORM_PARAMS = ("kernels", "all")


def one_of(field: str, value, valid) -> None:
  """Raises a one-line `ConfigError` unless ``value`` is one of ``valid``."""
  if value not in valid:
    raise ConfigError(f"unknown {field} {value!r}; valid values: {', '.join(map(str, valid))}")


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """``tx = optax.chain(grad_transform, base)`` and the learning-rate schedule of ``base``."""

  tx: optax.GradientTransformation
  grad_transform: optax.GradientTransformation
  schedule: optax.Schedule


def create_learning_rate_schedule(
  config: ml_collections.ConfigDict, total_steps: int
) -> optax.Schedule:
  """Linear warmup over `warmup_fraction` of the steps, then constant, cosine or step decay."""
  one_of("schedule", config.schedule, SCHEDULES)
  if not 0.0 <= config.warmup_fraction < 1.0:
    raise ConfigError(f"warmup_fraction={config.warmup_fraction} must be in [0, 1)")
  lr = float(config.learning_rate)
  warmup = int(round(config.warmup_fraction * total_steps))
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1), end_value=0.0
    )
  if config.schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    bounds = tuple(config.step_boundaries)
    if any(not 0.0 < b < 1.0 for b in bounds):
      raise ConfigError(f"step_boundaries={bounds} must be fractions in (0, 1)")
    main = optax.piecewise_constant_schedule(
      lr, {max(1, int(round(b * total_steps)) - warmup): config.step_decay for b in bounds}
    )
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def grad_transform_kwargs(config: ml_collections.ConfigDict) -> dict:
  """The keyword arguments for `zo.gradient_transform`: the fields of
  ``config.grad_transform_kwargs`` that are set (None = the library's default)."""
  return {
    name: tuple(value) if isinstance(value, list) else value
    for name, value in config.grad_transform_kwargs.items()
    if value is not None
  }


def create_grad_transform(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """``zo.gradient_transform(config.grad_transform, **kwargs)``, masked to kernels when
  ``grad_transform_params == 'kernels'``."""
  one_of("grad_transform_params", config.grad_transform_params, GRAD_TRANSFORM_PARAMS)
  kwargs = grad_transform_kwargs(config)
  try:
    transform = zo.gradient_transform(config.grad_transform, **kwargs)
  except (TypeError, ValueError) as e:  # unknown name, keyword or bad value: name the fields
    fields = " ".join(f"--config.grad_transform_kwargs.{k}={v}" for k, v in kwargs.items())
    raise ConfigError(
      f"--config.grad_transform={config.grad_transform} {fields}: {' '.join(str(e).split())}"
    ) from None
  if config.grad_transform_params == "kernels" and config.grad_transform != "none":
    transform = optax.masked(transform, zo.masks.kernels_only)
  return transform


def create_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> Optimizer:
  """The gradient transform chained into the base optimizer, with its schedule.

  Weight decay always applies to kernels only (decoupled for adamw, an L2 term on the gradient
  for adam and sgd, added after the gradient transform).
  """
  one_of("optimizer", config.optimizer, OPTIMIZERS)
  if config.weight_decay < 0:
    raise ConfigError(f"weight_decay={config.weight_decay} must be >= 0")
  if config.learning_rate <= 0:
    raise ConfigError(f"learning_rate={config.learning_rate} must be > 0")
  schedule = create_learning_rate_schedule(config, total_steps)
  transform = create_grad_transform(config)
  wd = float(config.weight_decay)
  if config.optimizer == "adamw":
    base = optax.adamw(schedule, weight_decay=wd, mask=zo.masks.kernels_only)
  else:
    if config.optimizer == "adam":
      base = optax.adam(schedule)
    else:
      base = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    if wd:
      base = optax.chain(optax.add_decayed_weights(wd, mask=zo.masks.kernels_only), base)
  return Optimizer(tx=optax.chain(transform, base), grad_transform=transform, schedule=schedule)
