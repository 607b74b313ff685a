"""Gradient diagnostics of the trainer (``--config.diagnostics_every_steps=N``).

Before step 1 and before every N-th step the loop runs `diagnostic_step` on that step's batch
and state; its outputs (nothing is kept in the optimizer state, so the optimizer chain, its state
and the checkpoints are the same with diagnostics on or off) become one
``{"kind": "diagnostics", ...}`` line of metrics.jsonl (`diagnostics_row`) and TensorBoard
scalars:

  * per layer, the norm, mean and std of the pmean'ed gradient and of the gradient transform's
    output (`znorm_optax.gradient_stats` of both);
  * per residual block, the skip/branch split of the gradient at its input.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict
from jax import lax

import models
import znorm_optax as zo
from trainer import input_pipeline as ip
from trainer.datasets import DatasetSpec
from trainer.state import TrainState
from trainer.steps import train_loss

SPLIT_STATS = ("skip_norm", "branch_norm", "total_norm", "cosine")
_LAYER_STATS = ("norm", "mean", "std")


def _layer_stats(tree) -> zo.GradientStatsState:
  stats = zo.gradient_stats()
  return stats.update(tree, stats.init(tree))[1]


def diagnostic_step(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  indices: jax.Array,
  *,
  model,
  grad_transform: optax.GradientTransformation,
  seed: int,
  mean,
  std,
  dtype=jnp.float32,
  augment: bool = True,
  axis_name: str = ip.AXIS_NAME,
) -> dict:
  """The gradient of the step that `state` is about to take, measured, over the global batch.

  Takes the train step's inputs for the same step (same batch and augmentation) and
  differentiates the step's own `train_loss`: ``indices`` ``[1, per_device]`` into the
  resident split. Exact: the parameter gradient is pmean'ed as in the train step and passed
  through the run's gradient transform (its state is ``state.opt_state[0]``); each device gets
  its slice of dL/dx for the global mean
  loss L (under pmap the gradient of the per-device loss through the synchronized BatchNorm is
  that of the sum of the per-device losses: hence the division by the device count), and the
  norms and dot products are summed over the devices.

  Returns:
    ``{"grad": GradientStatsState, "update": GradientStatsState, "blocks": {block path:
    {"skip_norm", "branch_norm", "total_norm", "cosine"}}}``, identical on every device.
  """
  idx = indices[0]
  x = ip.train_inputs(
    state.step,
    images[idx],
    seed=seed,
    mean=mean,
    std=std,
    dtype=dtype,
    augment_images=augment,
    axis_name=axis_name,
  )
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  grads, block_grads = models.param_and_block_input_grads(
    model, variables, x, lambda v: train_loss(model.apply, v, x, labels[idx])[0]
  )
  grads = lax.pmean(grads, axis_name)
  updates, _ = grad_transform.update(grads, state.opt_state[0], state.params)
  n = lax.psum(1, axis_name)
  blocks = {}
  for path, g in block_grads.items():
    skip = g[models.overlap.SKIP].astype(jnp.float32) / n
    branch = g[models.overlap.BRANCH].astype(jnp.float32) / n
    total = skip + branch
    ss, bb, sb, tt = lax.psum(
      (
        jnp.vdot(skip, skip),
        jnp.vdot(branch, branch),
        jnp.vdot(skip, branch),
        jnp.vdot(total, total),
      ),
      axis_name,
    )
    denom = jnp.sqrt(ss * bb)
    cosine = jnp.where(denom > 0, sb / jnp.where(denom > 0, denom, 1.0), 0.0)
    blocks[path] = {
      "skip_norm": jnp.sqrt(ss),
      "branch_norm": jnp.sqrt(bb),
      "total_norm": jnp.sqrt(tt),
      "cosine": jnp.clip(cosine, -1.0, 1.0),
    }
  return {"grad": _layer_stats(grads), "update": _layer_stats(updates), "blocks": blocks}


def param_paths(model, image_shape) -> tuple[str, ...]:
  """'/'-joined paths of the model's parameters in forward (creation) order (no FLOPs)."""
  paths = []

  def init(x):
    variables = model.init(jax.random.key(0), x, train=False)
    paths.extend("/".join(p) for p in flatten_dict(variables["params"]))  # creation order
    return variables

  jax.eval_shape(init, jnp.zeros((1, *image_shape), jnp.float32))
  return tuple(paths)


def forward_order(model, variables, image_shape) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """The ``layer_order`` and ``block_order`` of `diagnostics_row`: `param_paths` and the
  residual blocks' paths (`models.block_names`), in forward order."""
  layer_order = param_paths(model, image_shape)
  block_order = models.block_names(model, variables, np.zeros((1, *image_shape), np.float32))
  return layer_order, block_order


def diagnostics_row(step: int, epoch: float, layer_order, block_order, measured) -> dict:
  """The metrics.jsonl line of a diagnostic step (plain floats, layers and blocks in forward
  order).

  Args:
    step: the number of updates done once the measured step is taken; the statistics are those
      of its gradient (computed at the parameters after ``step - 1`` updates, on its batch).
    epoch: ``step / steps_per_epoch``.
    layer_order, block_order: '/'-joined parameter and block paths in forward order.
    measured: the (unreplicated) output of `diagnostic_step` for that step.

  Returns:
    ``{"kind": "diagnostics", "step", "epoch", "layers": {param path: {"grad_norm",
    "grad_mean", "grad_std", "update_norm", "update_mean", "update_std"}}, "blocks":
    {block path: {"skip_norm", "branch_norm", "total_norm", "cosine"}}}`` where ``grad_*``
    describe the pmean'ed gradient and ``update_*`` the output of the gradient transform
    (the input of the base optimizer).  The loop adds ``"seconds"``: the host time the
    diagnostics of that step took (the first includes compiling).
  """
  layers = {path: {} for path in layer_order}
  for prefix in ("grad", "update"):
    for stat in _LAYER_STATS:
      for key, value in flatten_dict(getattr(measured[prefix], stat)).items():
        layers["/".join(key)][f"{prefix}_{stat}"] = float(value)
  split = measured["blocks"]
  blocks = {name: {k: float(split[name][k]) for k in SPLIT_STATS} for name in block_order}
  return {"kind": "diagnostics", "step": step, "epoch": epoch, "layers": layers, "blocks": blocks}


def scalars(row: dict) -> dict[str, float]:
  """A `diagnostics_row` as TensorBoard scalars: ``{stat}/{param path}`` for the layers and
  ``overlap/{block}/{stat}`` for the blocks."""
  out = {}
  for path, stats in row["layers"].items():
    for name, value in stats.items():
      out[f"{name}/{path}"] = value
  for block, stats in row["blocks"].items():
    for name, value in stats.items():
      out[f"overlap/{block}/{name}"] = value
  return out


class Measure:
  """The pmapped `diagnostic_step` of a run and the forward order of its layers and blocks."""

  def __init__(
    self,
    config,
    model,
    grad_transform: optax.GradientTransformation,
    spec: DatasetSpec,
    dtype,
    devices,
    state: TrainState,
    image_shape,
  ):
    self._step = jax.pmap(
      functools.partial(
        diagnostic_step,
        model=model,
        grad_transform=grad_transform,
        seed=config.seed,
        mean=spec.mean,
        std=spec.std,
        dtype=dtype,
        augment=config.augment,
      ),
      axis_name=ip.AXIS_NAME,
      devices=ip.pmap_devices(devices),
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    self._order = forward_order(model, variables, image_shape)
    self._seed, self._batch_size, self._devices = config.seed, config.batch_size, devices

  def __call__(self, r_state, train_data, step: int, steps_per_epoch: int) -> dict:
    """The `diagnostics_row` of the update from ``step`` to ``step + 1`` (with ``"seconds"``,
    compiling included the first time)."""
    start = time.perf_counter()
    images, labels = train_data
    idx = ip.dispatch_indices(
      self._seed, step, 1, images.shape[1], self._batch_size, len(self._devices)
    )
    measured = ip.unreplicate(self._step(r_state, images, labels, ip.shard(idx, self._devices)))
    row = diagnostics_row(step + 1, (step + 1) / steps_per_epoch, *self._order, measured)
    row["seconds"] = time.perf_counter() - start
    return row
