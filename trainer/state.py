"""The train state and the model it trains.

`TrainState` holds what training needs and nothing else: step, params, batch_stats, opt_state.
Everything random derives from the seed and the step, so resuming needs only this state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

import models
from trainer.errors import ConfigError
from trainer.input_pipeline import AXIS_NAME

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TrainState(struct.PyTreeNode):
  """Everything a run needs to continue (plus its config)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def create_model(config: ml_collections.ConfigDict, num_classes: int, image_size: int = 32):
  """The flax module named by `config.model`, with BatchNorm synchronized over AXIS_NAME.

  Images of at most 64 pixels (CIFAR's 32x32) get the CIFAR stem (3x3/1 convolution, no
  max-pool), also in the ImageNet-style models (resnet18..152), whose 7x7/2 convolution and
  pool would leave an 8x8 map for the first stage; larger images (ImageNet's 224) get that
  ImageNet stem.
  """
  if config.model not in models.MODEL_NAMES:
    raise ConfigError(
      f"unknown model {config.model!r}; valid values: {', '.join(models.MODEL_NAMES)}"
    )
  kwargs = {"widths": tuple(config.model_widths)} if config.model_widths else {}
  try:
    return models.create_model(
      config.model,
      num_classes=num_classes,
      axis_name=AXIS_NAME,
      bn_momentum=config.bn_momentum,
      dtype=DTYPES[config.dtype],
      stem="cifar" if image_size <= 64 else "imagenet",
      **kwargs,
    )
  except ValueError as e:  # a bad width or momentum: the message names the field
    raise ConfigError(f"--config.model={config.model}: {e}") from None


def create_train_state(
  config: ml_collections.ConfigDict, model, tx: optax.GradientTransformation, image_shape
) -> TrainState:
  """The step-0 state on the host, from `config.seed`.

  The init key is an ``rbg`` key: XLA's RngBitGenerator compiles the initializers of a
  ResNet-20 in ~1.5 s on CPU where threefry takes ~10 s.
  """

  @jax.jit
  def init(key):
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = model.init({"params": key}, dummy, train=False)
    params = variables["params"]
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
    )

  return jax.device_get(init(jax.random.key(config.seed, impl="rbg")))
